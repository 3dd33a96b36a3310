"""Convert one input into de-identified frames: the unit of work of a worker process.

``process_item`` never raises for bad data: every input ends as a result
record with an outcome (``converted``, ``quarantined`` or ``skipped``) and a
reason code, written atomically to ``OUTPUT/.ingest_state/records`` *after*
the frames it lists.  A run killed at any point therefore either has a
complete record (the work is done) or none (the work is redone and produces
the same bytes).  Nothing read from the file (names, IDs, exception messages
that may quote values) is logged; logs carry positions and reason codes only.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import warnings
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import dcmwrite
from pydicom.pixels import get_decoder
from pydicom.uid import UID, AllTransferSyntaxes, ExplicitVRLittleEndian

from ultradino_monai.data.dicom import (
    CropDecision,
    FrameDecoder,
    PixelError,
    PixelSpec,
    apply_crop,
    decide_crop,
    parse_regions,
)
from ultradino_monai.utils.files import write_bytes_atomic

from . import annex_e
from .atomic import TEMP_PREFIX, encode_png
from .config import IngestConfig
from .deid import (
    MULTIFRAME_SOP_CLASSES,
    PERMITTED_REPLACEMENTS,
    US_IMAGE_SOP_CLASSES,
    HeaderDeidentifier,
    Identity,
    add_markers,
    classify_sop_class,
)
from .discovery import InputItem
from .frames import NearDuplicateFilter, is_doppler, to_output_mode
from .keys import Pseudonymizer
from .ocr import OcrEngine, PhiTextDetector, header_tokens
from .regions import clean_regions

logger = logging.getLogger(__name__)

__all__ = ["WorkContext", "process_item", "record_path", "RECORD_FORMAT", "STATE_DIR"]

RECORD_FORMAT = 1
STATE_DIR = ".ingest_state"
# Fixed, key-independent identity of this writer in the file meta.
IMPLEMENTATION_CLASS_UID = "2.25." + str(
    int.from_bytes(hashlib.sha256(b"ultradino-monai data_prep.ingest").digest()[:16], "big")
)
IMPLEMENTATION_VERSION_NAME = "ULTRADINO_ING1"


class _Reject(Exception):
    """Stop processing an input with an outcome and a reason code (no values)."""

    def __init__(self, outcome: str, reason: str) -> None:
        super().__init__(reason)
        self.outcome = outcome
        self.reason = reason


@dataclass
class WorkContext:
    """Everything a worker needs besides the input item; built once per process.

    Args:
        input_root / output_root: the run's folders.
        config: run options.
        key: the secret key bytes (kept in worker memory only).
    """

    input_root: str
    output_root: str
    config: IngestConfig
    key: bytes
    config_hash: str = ""
    pseudonymizer: Pseudonymizer = field(init=False)
    deidentifier: HeaderDeidentifier = field(init=False)
    ocr: OcrEngine | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.pseudonymizer = Pseudonymizer(self.key)
        self.deidentifier = HeaderDeidentifier(self.pseudonymizer, self.config)
        self.config_hash = self.config.fingerprint()
        if self.config.ocr_check:
            self.ocr = OcrEngine(threads=1)

    def __getstate__(self) -> dict:
        # Only the plain inputs travel to worker processes; helpers are rebuilt there.
        return {"input_root": self.input_root, "output_root": self.output_root, "config": self.config, "key": self.key}

    def __setstate__(self, state: dict) -> None:
        self.__init__(**state)


def record_path(output_root: str | os.PathLike, item_id: str) -> Path:
    return Path(output_root) / STATE_DIR / "records" / f"{item_id}.json"


@contextlib.contextmanager
def quiet_pydicom() -> Iterator[None]:
    """Silence pydicom warnings and log records while reading: they can quote header values."""
    pydicom_logger = logging.getLogger("pydicom")
    previous = pydicom_logger.level
    pydicom_logger.setLevel(logging.CRITICAL + 1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        pydicom_logger.setLevel(previous)


@contextlib.contextmanager
def _open_source(context: WorkContext, item: InputItem) -> Iterator[BinaryIO]:
    path = Path(context.input_root) / item.relpath
    if item.member is None:
        with open(path, "rb") as stream:
            yield stream
        return
    with zipfile.ZipFile(path) as archive:
        info = archive.infolist()[item.member_index]
        with archive.open(info) as member:
            data = member.read(context.config.max_member_bytes + 1)
    if len(data) > context.config.max_member_bytes:
        raise _Reject("quarantined", "zip_member_too_large")
    yield io.BytesIO(data)


def _read_header(stream: BinaryIO, is_member: bool) -> Dataset:
    head = stream.read(132)
    stream.seek(0)
    if is_member and head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        raise _Reject("quarantined", "nested_archive")
    if len(head) >= 132 and head[128:132] == b"DICM":
        try:
            return dcmread(stream, stop_before_pixels=True)
        except Exception:
            raise _Reject("quarantined", "unreadable_header") from None
    # No preamble: legacy/raw DICOM or not DICOM at all.  Only a parse that
    # yields a SOP Class counts as DICOM.
    try:
        dataset = dcmread(stream, stop_before_pixels=True, force=True)
        sop_class = str(dataset.get("SOPClassUID", "") or "")
    except Exception:
        raise _Reject("skipped", "not_dicom") from None
    if not sop_class or not UID(sop_class).is_valid:
        raise _Reject("skipped", "not_dicom")
    return dataset


def _text(dataset: Dataset, keyword: str) -> str:
    value = dataset.get(keyword)
    if value is None or isinstance(value, (bytes, bytearray)):
        return ""
    return str(value).strip()


def _frame_times_ms(header: Dataset, frames: int) -> list[float] | None:
    """Acquisition time of each source frame in ms, from FrameTime or FrameTimeVector."""
    try:
        vector = header.get("FrameTimeVector")
        if vector is not None and len(vector) == frames:
            times, total = [], 0.0
            for value in vector:
                total += float(value)
                times.append(total)
            return times
        frame_time = header.get("FrameTime")
        if frame_time not in (None, ""):
            return [index * float(frame_time) for index in range(frames)]
    except (TypeError, ValueError):
        return None
    return None


def _build_dicom(
    clean: Dataset,
    header: Dataset,
    kept: list[tuple[int, np.ndarray]],
    spec: PixelSpec,
    decision: CropDecision,
    identity: Identity,
    pixels_verified: bool,
) -> bytes:
    """The de-identified DICOM file (Explicit VR LE) holding exactly the written frames."""
    dataset = clean
    rgb = any(frame.ndim == 3 for _, frame in kept)
    arrays = [np.repeat(f[..., None], 3, axis=2) if rgb and f.ndim == 2 else f for _, f in kept]
    multiframe = str(dataset.SOPClassUID) in MULTIFRAME_SOP_CLASSES or len(arrays) > 1
    pixels = np.stack(arrays) if multiframe else arrays[0]
    dataset.set_pixel_data(pixels, "RGB" if rgb else "MONOCHROME2", 8, generate_instance_uid=False)
    for keyword in ("FrameTime", "FrameTimeVector", "FrameIncrementPointer"):
        if keyword in dataset:
            delattr(dataset, keyword)
    if multiframe:
        times = _frame_times_ms(header, spec.frames)
        if times is not None:
            indices = [index for index, _ in kept]
            dataset.FrameTimeVector = [0.0] + [round(times[b] - times[a], 3) for a, b in zip(indices, indices[1:])]
            dataset.FrameIncrementPointer = 0x00181065
    else:
        for keyword in ("CineRate", "RecommendedDisplayFrameRate"):
            if keyword in dataset:
                delattr(dataset, keyword)
    regions = clean_regions(header, decision)
    if regions is not None:
        dataset.SequenceOfUltrasoundRegions = regions
    add_markers(dataset, pixels_verified=pixels_verified, dates_kept=identity.date_offset_days is not None)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = dataset.SOPClassUID
    meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = UID(IMPLEMENTATION_CLASS_UID)
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    dataset.file_meta = meta
    if annex_e.blocklist_violations(dataset, PERMITTED_REPLACEMENTS):
        raise _Reject("quarantined", "deid_check_failed")
    buffer = io.BytesIO()
    dcmwrite(buffer, dataset, enforce_file_format=True)
    return buffer.getvalue()


def _convert(context: WorkContext, item: InputItem, stream: BinaryIO, record: dict, written: list[Path]) -> None:
    config = context.config
    header = _read_header(stream, item.member is not None)
    # Private groups are never used; drop them before touching values (odd
    # private VRs crash readers, dicognito #157), then convert every remaining
    # value once so that a malformed header fails here with a reason code.
    try:
        header.remove_private_tags()
        for _ in header.iterall():
            pass
        for _ in getattr(header, "file_meta", Dataset()).iterall():
            pass
    except Exception:
        raise _Reject("quarantined", "malformed_header") from None
    verdict = classify_sop_class(header)
    if verdict is not None:
        raise _Reject(*verdict)
    for keyword in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
        if not _text(header, keyword):
            raise _Reject("quarantined", "missing_uid")
    spec = PixelSpec.from_header(header)
    spec.check_budget(config.max_pixels, config.max_frames)
    transfer_syntax = UID(spec.transfer_syntax)
    if transfer_syntax not in AllTransferSyntaxes:
        raise _Reject("quarantined", "unsupported_transfer_syntax")
    plugin = config.plugin_for(transfer_syntax)
    if transfer_syntax.is_compressed:
        try:
            decoder = get_decoder(transfer_syntax)
        except NotImplementedError:
            raise _Reject("quarantined", "unsupported_transfer_syntax") from None
        if plugin and plugin not in decoder.available_plugins:
            raise _Reject("quarantined", "decoder_unavailable")

    identity = context.deidentifier.identity(header)
    clean = context.deidentifier.clean_header(header, identity)
    if annex_e.blocklist_violations(clean, PERMITTED_REPLACEMENTS):
        raise _Reject("quarantined", "deid_check_failed")
    record["instance"] = identity.instance

    decision = decide_crop(
        parse_regions(header),
        spec.rows,
        spec.columns,
        mask_top_rows=config.banner_policy.rows,
        tolerance=config.region_tolerance_px,
        min_size=config.min_region_px,
    )
    if decision.method is None:
        raise _Reject("quarantined", decision.reason or "no_tissue_region")
    pixels_verified = decision.method == "region" or (decision.method == "mask-top" and config.ocr_check)

    detector = PhiTextDetector(header_tokens(header)) if config.ocr_check else None
    burned_in = _text(header, "BurnedInAnnotation").upper()
    base_row = {
        "patient": identity.patient,
        "study": identity.study,
        "series": identity.series,
        "instance": identity.instance,
        "sop_class": US_IMAGE_SOP_CLASSES[str(header.SOPClassUID).strip()],
        "manufacturer": context_text(header, "Manufacturer"),
        "model": context_text(header, "ManufacturerModelName"),
        "device": identity.device,
        "transfer_syntax": transfer_syntax.keyword or "unknown",
        "photometric_source": spec.photometric,
        "frames_in_source": spec.frames,
        "pixel_policy": decision.method,
        "region_type": decision.region_type,
        "crop_x0": decision.box.x0,
        "crop_y0": decision.box.y0,
        "crop_x1": decision.box.x1,
        "crop_y1": decision.box.y1,
        "spacing_row_mm": round(decision.spacing_mm[0], 6) if decision.spacing_mm else None,
        "spacing_col_mm": round(decision.spacing_mm[1], 6) if decision.spacing_mm else None,
        "study_date": identity.study_date,
        "gestational_age_days": identity.gestational_age_days,
        # docs/deidentification.md §3.1: for ultrasound a missing BurnedInAnnotation means YES.
        "burned_in_source": "NO" if burned_in == "NO" else "YES",
        "pixels_verified": int(pixels_verified),
        "ocr": "clean" if config.ocr_check else "not_run",
    }

    indices = list(range(0, spec.frames, config.frame_stride))
    record["counts"]["strided_out"] = spec.frames - len(indices)
    dedup = NearDuplicateFilter(config.dedup_threshold)
    frame_decoder = FrameDecoder(stream, header, spec, plugin)
    kept: list[tuple[int, np.ndarray]] = []
    folder = f"images/{identity.patient}/{identity.study}"
    try:
        for index, frame in frame_decoder.frames(indices):
            frame = apply_crop(frame, decision)
            if dedup.is_duplicate(frame):
                record["counts"]["duplicates"] += 1
                continue
            doppler = is_doppler(frame, config.doppler_fraction, config.doppler_chroma)
            output = to_output_mode(frame, doppler)
            if detector is not None:
                finding = detector.finding(context.ocr.read(output))
                if finding:
                    record["frame_issues"].append({"frame": index, "reason": finding})
                    continue
            relative = f"{folder}/{identity.instance}_{index:04d}.png"
            data = encode_png(output, config.png_compress_level)
            target = Path(context.output_root) / relative
            write_bytes_atomic(target, data, prefix=TEMP_PREFIX)
            written.append(target)
            record["outputs"][relative] = hashlib.sha256(data).hexdigest()
            row = {"image": relative, "frame": index, "width": int(output.shape[1]), "height": int(output.shape[0])}
            row.update(base_row)
            row.update({"channels": 1 if output.ndim == 2 else 3, "doppler": int(doppler)})
            record["frames"].append(row)
            if config.keep_dicom:
                kept.append((index, output))
    except PixelError:
        raise
    except AttributeError:
        # iter_pixels raises AttributeError when the file has no pixel data element.
        raise _Reject("quarantined", "no_pixel_data") from None
    except (ValueError, RuntimeError, OSError, EOFError, KeyError, IndexError, TypeError, NotImplementedError):
        raise _Reject("quarantined", "decode_error") from None

    if not record["frames"]:
        reason = record["frame_issues"][0]["reason"] if record["frame_issues"] else "no_frames"
        raise _Reject("quarantined", reason)
    if config.keep_dicom:
        data = _build_dicom(clean, header, kept, spec, decision, identity, pixels_verified)
        relative = f"dicom/{identity.patient}/{identity.study}/{identity.instance}.dcm"
        target = Path(context.output_root) / relative
        write_bytes_atomic(target, data, prefix=TEMP_PREFIX)
        written.append(target)
        record["outputs"][relative] = hashlib.sha256(data).hexdigest()
        record["dicom"] = relative


def context_text(header: Dataset, keyword: str) -> str:
    """Printable, length-limited manufacturer/model text for the manifest."""
    text = _text(header, keyword)
    # Printable only, and no leading formula characters (CSV injection in spreadsheets).
    return "".join(ch for ch in text if ch.isprintable())[:64].lstrip("=+-@")


def new_record(context: WorkContext, item: InputItem, item_id: str) -> dict[str, Any]:
    return {
        "format": RECORD_FORMAT,
        "item": item_id,
        "config": context.config_hash,
        "fingerprint": context.pseudonymizer.fingerprint(item.stamp),
        "outcome": "converted",
        "reason": None,
        "instance": None,
        "frames": [],
        "frame_issues": [],
        "counts": {"strided_out": 0, "duplicates": 0},
        "outputs": {},
        "dicom": None,
    }


def process_item(context: WorkContext, item: InputItem, position: int) -> dict[str, Any]:
    """Process one input and persist its result record; returns the record."""
    item_id = context.pseudonymizer.item_id(item.relpath, item.member)
    record = new_record(context, item, item_id)
    written: list[Path] = []
    if item.issue is not None:
        record["outcome"], record["reason"] = item.issue
    else:
        try:
            with quiet_pydicom(), _open_source(context, item) as stream:
                _convert(context, item, stream, record, written)
        except _Reject as reject:
            record["outcome"], record["reason"] = reject.outcome, reject.reason
        except PixelError as error:
            record["outcome"], record["reason"] = "quarantined", error.reason
        except MemoryError:
            record["outcome"], record["reason"] = "quarantined", "out_of_memory"
        except RecursionError:
            record["outcome"], record["reason"] = "quarantined", "malformed_nesting"
        except (OSError, zipfile.BadZipFile, EOFError):
            record["outcome"], record["reason"] = "quarantined", "unreadable_file"
        except Exception as error:  # noqa: BLE001 - fail closed on anything unexpected
            # The type name is safe to log; the message may quote header values.
            logger.warning("input #%d: unexpected %s; quarantined", position, type(error).__name__)
            record["outcome"], record["reason"] = "quarantined", "internal_error"
    if record["outcome"] != "converted":
        for path in written:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        record.update(frames=[], outputs={}, dicom=None)
        if record["outcome"] == "quarantined":
            logger.info("input #%d quarantined: %s", position, record["reason"])
    target = record_path(context.output_root, item_id)
    document = json.dumps(record, sort_keys=True, indent=1) + "\n"
    write_bytes_atomic(target, document.encode(), prefix=TEMP_PREFIX)
    return record
