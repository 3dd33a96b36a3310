"""Lazy frame decoding and photometric normalisation to 8-bit grey or RGB.

Reference ``dicom_deidentification.md`` §3.3:

* every frame goes through ``pydicom.pixels.iter_pixels`` with a pinned
  decoding plugin, one frame at a time (a 200-frame 1024x768 RGB cine is
  ~470 MB decoded, so it is never held whole);
* YBR_FULL / YBR_FULL_422 are converted to RGB by pydicom (``raw=False``), J2K
  YBR_RCT / YBR_ICT come back as RGB from the decoder's inverse colour
  transform, planar configuration 1 is handled by pydicom (never reshaped by
  hand);
* PALETTE COLOR goes through ``apply_color_lut``; 16-bit LUT entries are
  reduced with ``>> 8``;
* MONOCHROME1 is inverted so that higher is brighter, like MONOCHROME2;
* more than 8 stored bits are reduced by a right shift over the stored range.

Frames whose Rows x Columns exceed the pixel budget, or files that declare too
many frames, are rejected from the header alone, before any decoding.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import BinaryIO, Iterable, Iterator

import numpy as np
from pydicom.dataset import Dataset
from pydicom.pixels import apply_color_lut, iter_pixels
from pydicom.uid import UID

logger = logging.getLogger(__name__)

__all__ = ["PixelError", "PixelSpec", "FrameDecoder", "to_uint8", "SUPPORTED_PHOTOMETRIC"]

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
_COLOUR_TO_RGB = {"RGB", "YBR_FULL", "YBR_FULL_422", "YBR_RCT", "YBR_ICT"}


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
    def from_header(cls, dataset: Dataset) -> "PixelSpec":
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
        return cls(rows, columns, samples, frames, photometric, bits_allocated, bits_stored, representation, transfer_syntax)

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
        # 16-bit LUT entries (reference §3.3).  Some writers declare 16 bits but
        # store 8-bit values; those are used as they are.
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
        plugin: pydicom decoding plugin name ('' for native transfer syntaxes).
    """

    def __init__(self, source: BinaryIO, header: Dataset, spec: PixelSpec, plugin: str) -> None:
        self.source = source
        self.spec = spec
        self.plugin = plugin if UID(spec.transfer_syntax).is_compressed else ""
        self.palette = _palette_table(header, spec) if spec.photometric == "PALETTE COLOR" else None

    def frames(self, indices: Iterable[int]) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(frame_index, uint8 frame)`` for the requested indices, in order."""
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
            if array.shape != expected:
                raise PixelError("decode_shape_mismatch")
            yield index, to_uint8(array, self.spec, self.palette)
