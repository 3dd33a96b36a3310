"""Ultrasound DICOM frames as uint8 pixels, cropped to the image region.

Used by ingestion (``data_prep.ingest``, which adds de-identification around it) and by
inference (``engines/classification.py``), so a model sees at inference the pixels its
ingested training frames were made of.

Decoding (DICOM PS3.3 C.7.6.3, Image Pixel module; PS3.5 section 8 and annex A, transfer syntaxes):

* every frame goes through ``pydicom.pixels.iter_pixels`` with a pinned decoding plugin,
  one frame at a time (a 200-frame 1024x768 RGB cine is about 470 MB decoded, so it is
  never held whole);
* YBR_FULL / YBR_FULL_422 are converted to RGB by pydicom, JPEG 2000 YBR_RCT / YBR_ICT come
  back as RGB from the decoder's inverse colour transform, planar configuration 1 is handled
  by pydicom (never reshaped by hand);
* PALETTE COLOR goes through ``apply_color_lut``; 16-bit LUT entries are reduced with ``>> 8``;
* MONOCHROME1 is inverted so that higher is brighter, like MONOCHROME2;
* more than 8 stored bits are reduced by a right shift over the stored range.

Frames whose Rows x Columns exceed a pixel budget, or files that declare too many frames,
are rejected from the header alone, before any decoding.

Regions (PS3.3 C.8.5.5, US Region Calibration module, ``SequenceOfUltrasoundRegions``):

* RegionLocationMinX0/MinY0/MaxX1/MaxY1 are **inclusive** pixel bounds.
* PhysicalDeltaX/Y are in the unit of PhysicalUnitsX/YDirection; code 3 is **centimetres**,
  so millimetres per pixel = 10 * delta. Spacing is only used when both units are cm and
  delta_x ~ delta_y.
* Regions copied from a bigger original (pydicom's ``examples_palette``: Rows = 350 with
  regions reaching y = 576; ``examples_ybr_color``: 320x240 with a 640x480 region) are
  stale. A region may overshoot the image by at most a tolerance (1 px, e.g. MaxX1 ==
  Columns) and is then clamped; anything more is stale and never used for cropping.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
from pydicom import uid as _uid
from pydicom.dataset import Dataset
from pydicom.pixels import apply_color_lut, iter_pixels
from pydicom.uid import UID

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_DECODER_PLUGINS",
    "SUPPORTED_PHOTOMETRIC",
    "CropBox",
    "CropDecision",
    "FrameDecoder",
    "PixelError",
    "PixelSpec",
    "Region",
    "apply_crop",
    "decide_crop",
    "parse_regions",
    "region_box",
    "to_uint8",
]

# One decoder plugin per compressed transfer syntax, so the same file always decodes to the
# same pixels (Pillow and pylibjpeg differ by up to 3 grey levels on YBR JPEG). Pillow
# (libjpeg-turbo) is the fast path for 8-bit JPEG baseline; it cannot decode 12-bit JPEG,
# lossless JPEG or JPEG-LS, which go to pylibjpeg (libjpeg / CharLS-compatible), and JPEG 2000
# goes to pylibjpeg-openjpeg.
DEFAULT_DECODER_PLUGINS: dict[str, str] = {
    _uid.JPEGBaseline8Bit: "pillow",
    _uid.JPEGExtended12Bit: "pylibjpeg",
    _uid.JPEGLossless: "pylibjpeg",
    _uid.JPEGLosslessSV1: "pylibjpeg",
    _uid.JPEGLSLossless: "pylibjpeg",
    _uid.JPEGLSNearLossless: "pylibjpeg",
    _uid.JPEG2000Lossless: "pylibjpeg",
    _uid.JPEG2000: "pylibjpeg",
    _uid.RLELossless: "pydicom",
}

SUPPORTED_PHOTOMETRIC = {
    "MONOCHROME1",
    "MONOCHROME2",
    "RGB",
    "YBR_FULL",
    "YBR_FULL_422",
    "YBR_RCT",
    "YBR_ICT",
    "PALETTE COLOR",
}

SPATIAL_FORMAT_2D = 1
DATA_TYPE_TISSUE = 1
DATA_TYPE_COLOR_FLOW = 2
UNITS_CM = 3
# Isotropy tolerance for using PhysicalDelta as a pixel spacing (relative difference).
_ISOTROPY_TOLERANCE = 0.02
# What pydicom and its plugins raise on truncated or corrupt pixel data (NotImplementedError is a RuntimeError).
_DECODE_ERRORS = (ValueError, RuntimeError, OSError, EOFError, KeyError, IndexError, TypeError, struct.error)
_CORNERS = ("RegionLocationMinX0", "RegionLocationMinY0", "RegionLocationMaxX1", "RegionLocationMaxY1")


# ------------------------------------------------------------------------------ pixels
class PixelError(Exception):
    """A pixel problem with a reason code; the message never holds data values."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _int_or(dataset: Dataset, keyword: str, default: int | None) -> int | None:
    try:
        value = dataset.get(keyword)
        if value is None or value == "":
            return default
        return int(value)
    except (TypeError, ValueError, OverflowError):
        raise PixelError("bad_pixel_header") from None


@dataclass(frozen=True)
class PixelSpec:
    """Image Pixel module facts read from the header (before any decoding)."""

    rows: int
    columns: int
    samples: int
    frames: int
    photometric: str
    bits_allocated: int
    bits_stored: int
    pixel_representation: int
    transfer_syntax: str

    @classmethod
    def from_header(cls, dataset: Dataset) -> PixelSpec:
        """Validate the Image Pixel module; raises :class:`PixelError` with a reason code."""
        meta = getattr(dataset, "file_meta", None)
        transfer_syntax = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
        if not transfer_syntax:
            raise PixelError("missing_transfer_syntax")
        rows = _int_or(dataset, "Rows", None)
        columns = _int_or(dataset, "Columns", None)
        if rows is None or columns is None or rows < 1 or columns < 1:
            raise PixelError("bad_geometry")
        samples = _int_or(dataset, "SamplesPerPixel", 1)
        bits_allocated = _int_or(dataset, "BitsAllocated", None)
        bits_stored = _int_or(dataset, "BitsStored", bits_allocated)
        representation = _int_or(dataset, "PixelRepresentation", 0)
        frames = _int_or(dataset, "NumberOfFrames", 1)
        photometric = str(dataset.get("PhotometricInterpretation", "") or "").strip().upper()
        if photometric not in SUPPORTED_PHOTOMETRIC:
            raise PixelError("unsupported_photometric")
        expected_samples = 1 if photometric in ("MONOCHROME1", "MONOCHROME2", "PALETTE COLOR") else 3
        if samples != expected_samples:
            raise PixelError("bad_pixel_header")
        if bits_allocated not in (8, 16) or bits_stored is None or not 1 <= bits_stored <= bits_allocated:
            raise PixelError("unsupported_bit_depth")
        if representation not in (0, 1):
            raise PixelError("bad_pixel_header")
        if frames is None or frames < 1:
            raise PixelError("bad_geometry")
        if "FloatPixelData" in dataset or "DoubleFloatPixelData" in dataset:
            raise PixelError("unsupported_bit_depth")
        return cls(
            rows, columns, samples, frames, photometric, bits_allocated, bits_stored, representation, transfer_syntax
        )

    def check_budget(self, max_pixels: int, max_frames: int) -> None:
        """Reject decompression bombs from the declared geometry alone."""
        if self.rows * self.columns > max_pixels:
            raise PixelError("pixel_budget")
        if self.frames > max_frames:
            raise PixelError("frame_budget")


def to_uint8(array: np.ndarray, spec: PixelSpec, palette: np.ndarray | None) -> np.ndarray:
    """One decoded frame -> ``uint8`` of shape (rows, columns) or (rows, columns, 3).

    Args:
        array: as yielded by ``iter_pixels`` (YBR already converted to RGB).
        spec: the header facts.
        palette: (entries, 3) uint8 lookup table for PALETTE COLOR, else None.
    """
    if spec.photometric == "PALETTE COLOR":
        if palette is None:
            raise PixelError("bad_palette")
        indices = np.clip(array.astype(np.int64), 0, palette.shape[0] - 1)
        return palette[indices]
    if array.dtype.kind == "f":
        raise PixelError("unsupported_bit_depth")
    out = array
    if spec.bits_stored > 8 or out.dtype.itemsize > 1:
        wide = out.astype(np.int64)
        if spec.pixel_representation == 1:
            wide = wide + (1 << (spec.bits_stored - 1))
        shift = max(spec.bits_stored - 8, 0)
        out = np.clip(wide >> shift, 0, 255).astype(np.uint8)
    elif out.dtype != np.uint8:
        if spec.pixel_representation == 1:
            out = (out.astype(np.int16) + 128).astype(np.uint8)
        else:
            out = out.astype(np.uint8)
    if spec.photometric == "MONOCHROME1":
        out = 255 - out
    return np.ascontiguousarray(out)


def _palette_table(header: Dataset, spec: PixelSpec) -> np.ndarray:
    """Precompute the palette as a (2**bits_stored, 3) uint8 table via ``apply_color_lut``."""
    try:
        descriptor = header.RedPaletteColorLookupTableDescriptor
        entry_bits = int(descriptor[2])
    except (AttributeError, IndexError, TypeError, ValueError):
        raise PixelError("bad_palette") from None
    if spec.bits_stored > 16:
        raise PixelError("bad_palette")
    dtype = np.uint8 if spec.bits_allocated == 8 else np.uint16
    values = np.arange(1 << spec.bits_stored, dtype=np.int64).astype(dtype)
    try:
        table = apply_color_lut(values, header)
    except Exception:
        raise PixelError("bad_palette") from None
    table = np.asarray(table)
    if table.ndim != 2 or table.shape[-1] != 3:
        raise PixelError("bad_palette")
    if table.dtype != np.uint8:
        # 16-bit LUT entries. Some writers declare 16 bits but store 8-bit values; those are used as they are.
        table = table.astype(np.uint16)
        if entry_bits == 16 and int(table.max()) > 255:
            table = table >> 8
        table = np.clip(table, 0, 255)
    return table.astype(np.uint8)


class FrameDecoder:
    """Decode selected frames of one file lazily with a pinned plugin.

    Args:
        source: seekable binary stream of the whole DICOM file.
        header: the file's header (read with ``stop_before_pixels``), for the palette.
        spec: validated :class:`PixelSpec`.
        plugin: pydicom decoding plugin name; None picks :data:`DEFAULT_DECODER_PLUGINS`'s
            plugin for the transfer syntax. Ignored ('') for native transfer syntaxes.
    """

    def __init__(self, source: BinaryIO, header: Dataset, spec: PixelSpec, plugin: str | None = None) -> None:
        if plugin is None:
            plugin = DEFAULT_DECODER_PLUGINS.get(spec.transfer_syntax, "")
        self.source = source
        self.spec = spec
        self.plugin = plugin if UID(spec.transfer_syntax).is_compressed else ""
        self.palette = _palette_table(header, spec) if spec.photometric == "PALETTE COLOR" else None

    def frames(self, indices: Iterable[int]) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(frame_index, uint8 frame)`` for the requested indices, in order.

        Raises:
            PixelError: ``no_pixel_data`` when the file has no pixel data element;
                ``decode_error`` when pydicom or its plugin cannot parse or decode a frame
                (truncated or corrupt data: a ``ValueError`` for an encapsulated item cut
                short, ``struct.error`` for a cut inside an item tag, ``RuntimeError`` from
                the plugin), chained to the original error; ``decode_shape_mismatch``.
        """
        indices = list(indices)
        if not indices:
            return
        self.source.seek(0)
        iterator = iter_pixels(self.source, indices=indices, decoding_plugin=self.plugin)
        expected = (self.spec.rows, self.spec.columns) + ((3,) if self.spec.samples == 3 else ())
        for index in indices:
            try:
                array = next(iterator)
            except StopIteration:
                raise PixelError("decode_error") from None
            except AttributeError as error:
                # iter_pixels raises AttributeError when the dataset has no (Float/Double) Pixel Data element.
                raise PixelError("no_pixel_data") from error
            except _DECODE_ERRORS as error:
                raise PixelError("decode_error") from error
            if array.shape != expected:
                raise PixelError("decode_shape_mismatch")
            yield index, to_uint8(array, self.spec, self.palette)


# ----------------------------------------------------------------------------- regions
@dataclass(frozen=True)
class CropBox:
    """Inclusive pixel rectangle ``[x0, x1] x [y0, y1]``."""

    x0: int
    y0: int
    x1: int
    y1: int

    @property
    def width(self) -> int:
        return self.x1 - self.x0 + 1

    @property
    def height(self) -> int:
        return self.y1 - self.y0 + 1

    def contains(self, other: CropBox) -> bool:
        return self.x0 <= other.x0 and self.y0 <= other.y0 and other.x1 <= self.x1 and other.y1 <= self.y1


@dataclass(frozen=True)
class Region:
    """One parsed item of SequenceOfUltrasoundRegions (geometry in source pixels)."""

    index: int
    spatial_format: int | None
    data_type: int | None
    box: CropBox | None
    units_x: int | None
    units_y: int | None
    delta_x: float | None
    delta_y: float | None

    @property
    def area(self) -> int:
        return self.box.width * self.box.height if self.box else 0

    def spacing_mm(self) -> tuple[float, float] | None:
        """(row, column) spacing in mm when both units are cm and the pixels are square."""
        if self.units_x != UNITS_CM or self.units_y != UNITS_CM:
            return None
        if not self.delta_x or not self.delta_y or self.delta_x <= 0 or self.delta_y <= 0:
            return None
        if abs(self.delta_x - self.delta_y) > _ISOTROPY_TOLERANCE * max(self.delta_x, self.delta_y):
            return None
        return (10.0 * self.delta_y, 10.0 * self.delta_x)


@dataclass(frozen=True)
class CropDecision:
    """How a frame is cleaned, or why it cannot be.

    ``method`` is ``region`` (crop to ``box``), ``mask-top`` (whole frame with the
    top ``mask_rows`` rows blacked out) or ``None`` with a ``reason``.
    ``spacing_mm`` is (row, column) in millimetres or None.
    """

    method: str | None
    box: CropBox | None = None
    mask_rows: int = 0
    spacing_mm: tuple[float, float] | None = None
    region_type: str = "none"
    reason: str | None = None
    region_index: int | None = None


def _int(item: Dataset, keyword: str) -> int | None:
    try:
        value = item.get(keyword)
        return None if value is None or value == "" else int(value)
    except (TypeError, ValueError, OverflowError):
        return None


def _float(item: Dataset, keyword: str) -> float | None:
    try:
        value = item.get(keyword)
        if value is None or value == "":
            return None
        number = float(value)
        return number if number == number and abs(number) != float("inf") else None
    except (TypeError, ValueError, OverflowError):
        return None


def region_box(item: Dataset) -> CropBox | None:
    """The inclusive RegionLocation rectangle of one region item, or None when a corner is missing or malformed."""
    corners = [_int(item, keyword) for keyword in _CORNERS]
    return CropBox(*corners) if all(c is not None for c in corners) else None


def parse_regions(dataset: Dataset) -> list[Region]:
    """Parse SequenceOfUltrasoundRegions; malformed items become regions without a box."""
    regions = []
    sequence = dataset.get("SequenceOfUltrasoundRegions") or []
    for index, item in enumerate(sequence):
        regions.append(
            Region(
                index=index,
                spatial_format=_int(item, "RegionSpatialFormat"),
                data_type=_int(item, "RegionDataType"),
                box=region_box(item),
                units_x=_int(item, "PhysicalUnitsXDirection"),
                units_y=_int(item, "PhysicalUnitsYDirection"),
                delta_x=_float(item, "PhysicalDeltaX"),
                delta_y=_float(item, "PhysicalDeltaY"),
            )
        )
    return regions


def _validate(box: CropBox, rows: int, columns: int, tolerance: int) -> CropBox | None:
    """Clamp a box that overshoots the image by <= tolerance px; None if it is stale."""
    if box.x1 < box.x0 or box.y1 < box.y0:
        return None
    if box.x0 < -tolerance or box.y0 < -tolerance:
        return None
    if box.x1 > columns - 1 + tolerance or box.y1 > rows - 1 + tolerance:
        return None
    return CropBox(max(box.x0, 0), max(box.y0, 0), min(box.x1, columns - 1), min(box.y1, rows - 1))


def decide_crop(
    regions: Sequence[Region],
    rows: int,
    columns: int,
    mask_top_rows: int = 0,
    tolerance: int = 1,
    min_size: int = 32,
) -> CropDecision:
    """Choose the largest 2D tissue/colour-flow region; without one, mask the top rows or give the reason.

    Args:
        regions: from :func:`parse_regions`.
        rows, columns: the image size in pixels.
        mask_top_rows: without a usable region, keep the whole frame with this many top rows
            blacked out (``mask-top``); 0 (default) returns ``method=None`` with the reason.
        tolerance: pixels a region may overshoot the image and still be clamped.
        min_size: smallest accepted crop width and height.
    """
    candidates = [
        r
        for r in regions
        if r.spatial_format == SPATIAL_FORMAT_2D and r.data_type in (DATA_TYPE_TISSUE, DATA_TYPE_COLOR_FLOW) and r.box
    ]
    reason = "no_tissue_region"
    if candidates:
        # Largest area first; ties go to the earlier item so the choice is stable.
        best = sorted(candidates, key=lambda r: (-r.area, r.index))[0]
        box = _validate(best.box, rows, columns, tolerance)
        if box is None:
            reason = "region_out_of_bounds"
        elif box.width < min_size or box.height < min_size:
            reason = "region_too_small"
        else:
            return CropDecision(
                method="region",
                box=box,
                spacing_mm=best.spacing_mm(),
                region_type="2d_tissue" if best.data_type == DATA_TYPE_TISSUE else "2d_color_flow",
                region_index=best.index,
            )
    if mask_top_rows > 0:
        if mask_top_rows >= rows:
            return CropDecision(method=None, reason="mask_exceeds_image")
        # Stale or missing regions say nothing trustworthy about geometry.
        return CropDecision(
            method="mask-top", box=CropBox(0, 0, columns - 1, rows - 1), mask_rows=mask_top_rows, reason=reason
        )
    return CropDecision(method=None, reason=reason)


def apply_crop(frame: np.ndarray, decision: CropDecision) -> np.ndarray:
    """Crop to the chosen region, or black out the top rows (``mask-top``).

    Args:
        frame: uint8 (H, W) or (H, W, 3), already RGB (never YCbCr, where 0 is green).
        decision: from :func:`decide_crop` with a method set.
    Returns:
        a new contiguous uint8 array.
    """
    if decision.method == "region" and decision.box is not None:
        box = decision.box
        return np.ascontiguousarray(frame[box.y0 : box.y1 + 1, box.x0 : box.x1 + 1])
    if decision.method == "mask-top":
        out = frame.copy()
        out[: decision.mask_rows] = 0
        return out
    raise ValueError("apply_crop needs a decision with method 'region' or 'mask-top'")
