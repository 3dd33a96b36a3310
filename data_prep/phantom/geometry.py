"""Convex probe geometry and where its fan sits on the display (docs/phantom.md, "Probe and display geometry")."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ProbeGeometry:
    """A curvilinear probe: virtual apex at (0, -R) mm, probe face at z = 0 on the axis.

    Attributes:
        radius_mm: probe radius R (mm).
        fov_deg: sector angle (degrees, < 180).
        depth_mm: imaging depth below the probe face (mm).
        frequency_mhz: centre frequency, sets the attenuation law.
        n_lines: number of scan lines across the sector.
    """

    radius_mm: float
    fov_deg: float
    depth_mm: float
    frequency_mhz: float
    n_lines: int

    def __post_init__(self):
        if not (0 < self.fov_deg < 180):
            raise ValueError(f"fov_deg must be in (0, 180), got {self.fov_deg}")
        if self.radius_mm <= 0 or self.depth_mm <= 0 or self.n_lines < 8:
            raise ValueError(f"invalid probe geometry {self}")

    @property
    def half_fov(self) -> float:
        return math.radians(self.fov_deg) / 2.0

    @property
    def extent_mm(self) -> tuple[float, float, float]:
        """(half width, top z, bottom z) of the fan's bounding box in mm."""
        h = self.half_fov
        outer = self.radius_mm + self.depth_mm
        half_width = outer * math.sin(h)
        return half_width, self.radius_mm * (math.cos(h) - 1.0), self.depth_mm

    @staticmethod
    def sample_convex(rng: np.random.Generator, depth_mm: float | None = None) -> ProbeGeometry:
        """Abdominal convex probe: R 40-65 mm, FOV 55-80 deg, depth 10-20 cm, 128-256 lines."""
        return ProbeGeometry(
            radius_mm=float(rng.uniform(40, 65)),
            fov_deg=float(rng.uniform(55, 80)),
            depth_mm=float(depth_mm if depth_mm is not None else rng.uniform(100, 200)),
            frequency_mhz=float(rng.uniform(2.5, 5.0)),
            n_lines=int(rng.integers(128, 257)),
        )

    @staticmethod
    def sample_endocavity(rng: np.random.Generator) -> ProbeGeometry:
        """Transvaginal probe for the cervix: R ~10 mm and a wide sector.

        Such probes reach 120-180 deg; the sector is kept below 150 deg so
        the fan fits a 4:3 display without a degenerate top edge.
        """
        return ProbeGeometry(
            radius_mm=float(rng.uniform(8, 13)),
            fov_deg=float(rng.uniform(115, 150)),
            depth_mm=float(rng.uniform(60, 100)),
            frequency_mhz=float(rng.uniform(5.0, 7.5)),
            n_lines=int(rng.integers(160, 257)),
        )


@dataclass(frozen=True)
class FanLayout:
    """Where the fan of ``probe`` sits on an ``shape`` (H, W) display.

    Pixel (row, col) maps to x = (col - apex_col) * mm_per_px and
    z = (row - apex_row) * mm_per_px - R (apex at z = -R).
    """

    probe: ProbeGeometry
    shape: tuple[int, int]
    mm_per_px: float
    apex_row: float
    apex_col: float

    @staticmethod
    def fit(
        probe: ProbeGeometry,
        shape: tuple[int, int],
        box: tuple[int, int, int, int] | None = None,
        margin_px: int = 2,
    ) -> FanLayout:
        """Fit the whole fan inside ``box`` = (top, left, height, width) px, top-aligned and centred."""
        height, width = int(shape[0]), int(shape[1])
        top, left, box_h, box_w = box if box is not None else (0, 0, height, width)
        if box_h - 2 * margin_px < 8 or box_w - 2 * margin_px < 8:
            raise ValueError(f"fan box {box} is too small for display {shape}")
        half_width, z_top, z_bottom = probe.extent_mm
        pitch = max(2 * half_width / (box_w - 2 * margin_px), (z_bottom - z_top) / (box_h - 2 * margin_px))
        row_top = top + margin_px
        apex_row = row_top + (-probe.radius_mm - z_top) / pitch
        apex_col = left + box_w / 2.0 - 0.5
        return FanLayout(probe, (height, width), float(pitch), float(apex_row), float(apex_col))

    def pixel_mm(self, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(x, z) in mm of pixel centres."""
        x = (cols - self.apex_col) * self.mm_per_px
        z = (rows - self.apex_row) * self.mm_per_px - self.probe.radius_mm
        return x, z

    def polar_of_pixels(self) -> tuple[np.ndarray, np.ndarray]:
        """(r, theta) of every display pixel, float32 arrays of ``shape``."""
        rows = np.arange(self.shape[0], dtype=np.float32)[:, None]
        cols = np.arange(self.shape[1], dtype=np.float32)[None, :]
        dx = (cols - np.float32(self.apex_col)) * np.float32(self.mm_per_px)
        dz = (rows - np.float32(self.apex_row)) * np.float32(self.mm_per_px)
        r = np.sqrt(dx * dx + dz * dz)
        theta = np.arctan2(dx, dz)
        return r, theta

    def fan_mask(self) -> np.ndarray:
        """Boolean (H, W) mask of pixels inside the fan (|theta| <= FOV/2, R <= r <= R + depth)."""
        r, theta = self.polar_of_pixels()
        p = self.probe
        return (np.abs(theta) <= p.half_fov) & (r >= p.radius_mm) & (r <= p.radius_mm + p.depth_mm)

    def fan_bbox(self) -> tuple[int, int, int, int]:
        """Inclusive (min_row, min_col, max_row, max_col) of the fan pixels."""
        mask = self.fan_mask()
        rows = np.flatnonzero(mask.any(axis=1))
        cols = np.flatnonzero(mask.any(axis=0))
        return int(rows[0]), int(cols[0]), int(rows[-1]), int(cols[-1])

    def mm_to_pixel(self, x_mm: float, z_mm: float) -> tuple[float, float]:
        """(row, col) of a point given in mm."""
        return (z_mm + self.probe.radius_mm) / self.mm_per_px + self.apex_row, x_mm / self.mm_per_px + self.apex_col
