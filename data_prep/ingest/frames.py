"""Per-frame selection after the crop: Doppler flag, grey collapse, near-duplicates.

The crop itself is :func:`ultradino_monai.data.dicom.apply_crop`.

docs/deidentification.md §3.3: a frame is colour Doppler when a
high fraction of its pixels has a channel spread (max - min) above ~25 grey
levels, a threshold that tolerates JPEG chroma bleed; B-mode exported as RGB
is collapsed to one channel; cine frames are subsampled with a temporal
stride and near-duplicates (frozen cine) are removed.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

__all__ = ["colour_fraction", "is_doppler", "to_output_mode", "NearDuplicateFilter", "thumbnail"]

THUMBNAIL_SIZE = 64


def colour_fraction(frame: np.ndarray, chroma: int) -> float:
    """Fraction of pixels whose channel spread (max - min) exceeds ``chroma``; 0 for grey."""
    if frame.ndim != 3:
        return 0.0
    red, green, blue = frame[..., 0], frame[..., 1], frame[..., 2]
    # Element-wise max/min of the three planes: much faster than reducing over the
    # short last axis, and exact in uint8 because highest >= lowest.
    spread = np.maximum(np.maximum(red, green), blue) - np.minimum(np.minimum(red, green), blue)
    return float(np.count_nonzero(spread > chroma)) / float(spread.size)


def is_doppler(frame: np.ndarray, fraction: float, chroma: int) -> bool:
    """True when at least ``fraction`` of the pixels are clearly coloured."""
    return colour_fraction(frame, chroma) >= fraction


def to_output_mode(frame: np.ndarray, doppler: bool) -> np.ndarray:
    """Keep RGB for Doppler frames; collapse everything else to one channel.

    Exactly grey RGB (R = G = B) collapses losslessly; otherwise ITU-R BT.601 luma
    via Pillow's ``convert("L")``, which is deterministic.
    """
    if frame.ndim == 2 or doppler:
        return frame
    red = frame[..., 0]
    if np.array_equal(red, frame[..., 1]) and np.array_equal(red, frame[..., 2]):
        return np.ascontiguousarray(red)
    return np.asarray(Image.fromarray(frame, mode="RGB").convert("L"))


def thumbnail(frame: np.ndarray) -> np.ndarray:
    """64x64 float32 grey box-filtered thumbnail used to compare frames."""
    grey = frame if frame.ndim == 2 else frame.mean(axis=2).astype(np.uint8)
    image = Image.fromarray(np.ascontiguousarray(grey), mode="L").resize(
        (THUMBNAIL_SIZE, THUMBNAIL_SIZE), Image.Resampling.BOX
    )
    return np.asarray(image, dtype=np.float32)


class NearDuplicateFilter:
    """Drop frames that barely differ from the last frame kept.

    Args:
        threshold: largest mean absolute thumbnail difference (0-255) that still
            counts as a duplicate; negative disables the filter.
    """

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold
        self._reference: np.ndarray | None = None

    def is_duplicate(self, frame: np.ndarray) -> bool:
        if self.threshold < 0:
            return False
        current = thumbnail(frame)
        if self._reference is not None and float(np.abs(current - self._reference).mean()) <= self.threshold:
            return True
        self._reference = current
        return False
