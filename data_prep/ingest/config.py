"""Configuration of one ingest run, passed explicitly to every stage.

Every field that changes what is written goes into :meth:`IngestConfig.fingerprint`;
a resumed run reprocesses any input whose stored result was made under a
different fingerprint, so outputs never mix settings.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from pydicom import uid as _uid

from ultradino_monai.data.dicom import DEFAULT_DECODER_PLUGINS

__all__ = ["BannerPolicy", "IngestConfig", "ConfigError"]


class ConfigError(ValueError):
    """An ingest option has an unusable value; the message says which and why."""


@dataclass(frozen=True)
class BannerPolicy:
    """What to do with a frame that has no usable 2D tissue region.

    ``quarantine`` (default, fail closed) rejects the file.  ``mask-top-N`` keeps
    the whole frame with its top ``N`` rows set to black, where ultrasound
    systems burn the patient banner (docs/deidentification.md §3.1: 25-80 px).
    """

    kind: str = "quarantine"
    rows: int = 0

    @classmethod
    def parse(cls, text: str) -> BannerPolicy:
        text = text.strip().lower()
        if text == "quarantine":
            return cls()
        match = re.fullmatch(r"mask-top-(\d+)", text)
        if match and int(match.group(1)) > 0:
            return cls(kind="mask-top", rows=int(match.group(1)))
        raise ConfigError(
            f"--banner-policy must be 'quarantine' or 'mask-top-N' with N > 0 rows (e.g. mask-top-80), got {text!r}"
        )

    def __str__(self) -> str:
        return "quarantine" if self.kind == "quarantine" else f"mask-top-{self.rows}"


@dataclass(frozen=True)
class IngestConfig:
    """Options of one ingest run.

    Args:
        frame_stride: keep every K-th frame of a cine (``>= 1``).
        keep_dicom: also write de-identified DICOM under ``OUTPUT/dicom``.
        ocr_check: run offline OCR on every frame that would be written and
            quarantine frames with header tokens, dates or long digit runs.
        banner_policy: see :class:`BannerPolicy`.
        max_pixels: reject frames with ``Rows * Columns`` above this before decoding.
        max_frames: reject files that declare more frames than this before decoding.
        max_member_bytes: largest zip member that is read (zip-bomb guard).
        dedup_threshold: a frame whose 64x64 grey thumbnail differs from the last
            kept frame by at most this mean absolute difference (0-255 scale) is
            dropped as a near duplicate; negative disables deduplication. Must be
            finite and at most 255 (NaN would silently disable the filter).
        doppler_fraction: a colour frame counts as Doppler when at least this
            fraction of its (cropped) pixels has channel spread above
            ``doppler_chroma`` (docs/deidentification.md §3.3 suggests spread > ~25).
        doppler_chroma: channel spread (max - min, 0-255) that counts as colour.
        region_tolerance_px: a region may overshoot the image by this many pixels
            and is then clamped (docs/deidentification.md §3.2); more means stale.
        min_region_px: smallest accepted crop side in pixels.
        date_policy: ``shift`` (keyed per-patient offset, option 113107) or ``drop``.
        date_shift_min_days / date_shift_span_days: offsets are
            ``-(min + h mod span)`` days (docs/deidentification.md §1.5, span >= 1 year).
        png_compress_level: zlib level for PNG output (0-9); only speed/size.
        decoder_plugins: transfer syntax UID -> pydicom decoding plugin name (default:
            :data:`ultradino_monai.data.dicom.DEFAULT_DECODER_PLUGINS`).
    """

    frame_stride: int = 1
    keep_dicom: bool = False
    ocr_check: bool = False
    banner_policy: BannerPolicy = field(default_factory=BannerPolicy)
    max_pixels: int = 4096 * 4096
    max_frames: int = 10_000
    max_member_bytes: int = 4 * 1024**3
    dedup_threshold: float = 1.0
    doppler_fraction: float = 0.02
    doppler_chroma: int = 25
    region_tolerance_px: int = 1
    min_region_px: int = 32
    date_policy: str = "shift"
    date_shift_min_days: int = 365
    date_shift_span_days: int = 3653
    png_compress_level: int = 6
    decoder_plugins: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_DECODER_PLUGINS))

    def __post_init__(self) -> None:
        if self.frame_stride < 1:
            raise ConfigError(f"--frame-stride must be >= 1, got {self.frame_stride}")
        if self.max_pixels < 1:
            raise ConfigError(f"--max-pixels must be >= 1, got {self.max_pixels}")
        if self.max_frames < 1:
            raise ConfigError(f"--max-frames must be >= 1, got {self.max_frames}")
        if self.max_member_bytes < 1:
            raise ConfigError(f"max_member_bytes must be >= 1, got {self.max_member_bytes}")
        # Every comparison with NaN is false, so a NaN threshold would silently turn a check off: refuse it.
        if not (math.isfinite(self.dedup_threshold) and self.dedup_threshold <= 255.0):
            raise ConfigError(
                "--dedup-threshold must be a finite number <= 255 (mean absolute difference in grey levels; "
                f"negative turns deduplication off), got {self.dedup_threshold}"
            )
        if not (math.isfinite(self.doppler_fraction) and 0.0 < self.doppler_fraction <= 1.0):
            raise ConfigError(f"--doppler-fraction must be in (0, 1], got {self.doppler_fraction}")
        if not 0 <= self.doppler_chroma <= 255:
            raise ConfigError(f"doppler_chroma must be in [0, 255], got {self.doppler_chroma}")
        if self.region_tolerance_px < 0 or self.min_region_px < 1:
            raise ConfigError("region_tolerance_px must be >= 0 and min_region_px >= 1")
        if self.date_policy not in ("shift", "drop"):
            raise ConfigError(f"--date-policy must be 'shift' or 'drop', got {self.date_policy!r}")
        if self.date_shift_min_days < 0 or self.date_shift_span_days < 365:
            raise ConfigError("date shift needs min_days >= 0 and span_days >= 365 (docs/deidentification.md §1.5)")
        if not 0 <= self.png_compress_level <= 9:
            raise ConfigError(f"png_compress_level must be 0-9, got {self.png_compress_level}")
        if not isinstance(self.banner_policy, BannerPolicy):
            raise ConfigError("banner_policy must be a BannerPolicy (use BannerPolicy.parse)")

    def plugin_for(self, transfer_syntax: str) -> str:
        """The pinned decoding plugin for a transfer syntax ('' for native encodings)."""
        return self.decoder_plugins.get(str(transfer_syntax), "")

    def fingerprint(self) -> str:
        """Stable hash of every option that changes the written outputs."""
        document = dataclasses.asdict(self)
        document["banner_policy"] = str(self.banner_policy)
        document["decoder_plugins"] = dict(sorted(self.decoder_plugins.items()))
        document["format_version"] = 1
        blob = json.dumps(document, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:32]

    def summary(self) -> dict:
        """Options recorded in report.json (nothing identifying, nothing machine-specific)."""
        return {
            "frame_stride": self.frame_stride,
            "keep_dicom": self.keep_dicom,
            "ocr_check": self.ocr_check,
            "banner_policy": str(self.banner_policy),
            "max_pixels": self.max_pixels,
            "max_frames": self.max_frames,
            "dedup_threshold": self.dedup_threshold,
            "doppler_fraction": self.doppler_fraction,
            "date_policy": self.date_policy,
            "decoder_plugins": {(_uid.UID(k).keyword or k): v for k, v in sorted(self.decoder_plugins.items())},
        }
