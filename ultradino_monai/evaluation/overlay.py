"""Class masks painted over grey images: one colour per foreground class, background left as is."""

from __future__ import annotations

import numpy as np

__all__ = ["PALETTE", "colour_overlay"]


#: Overlay colours per class index (background is left transparent); cycles for more classes.
PALETTE = (
    (0, 0, 0),
    (230, 25, 75),
    (60, 180, 75),
    (0, 130, 200),
    (255, 225, 25),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
)


def colour_overlay(grey: np.ndarray, mask: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """RGB uint8 overlay: ``grey`` ``[H, W]`` uint8 with foreground classes blended in :data:`PALETTE` colours."""
    if grey.shape != mask.shape:
        raise ValueError(f"image {grey.shape} and mask {mask.shape} differ in size")
    rgb = np.repeat(grey[..., None].astype(np.float32), 3, axis=-1)
    palette = np.asarray(PALETTE, dtype=np.float32)
    colours = palette[mask % len(PALETTE)]
    foreground = mask > 0
    rgb[foreground] = (1.0 - alpha) * rgb[foreground] + alpha * colours[foreground]
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
