"""A scene: tissue layers painted in order, sampled on the polar grid or at display pixels."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .geometry import FanLayout
from .shapes import RadialBand, Shape
from .tissues import Tissue


@dataclass
class Layer:
    """A shape painted with a tissue; ``label`` None keeps the label underneath."""

    shape: Shape
    tissue: Tissue
    label: int | None = None


@dataclass
class SceneSample:
    """Scene properties sampled at a set of points (arrays of the points' shape)."""

    echo_db: np.ndarray
    atten: np.ndarray
    specular: np.ndarray
    texture_db: np.ndarray
    label: np.ndarray


def _polar_block(bounds, radius, r0, dr, n_r, t0, dt, n_t):
    """Rows/lines of a uniform polar grid that a Cartesian box (xmin, xmax, zmin, zmax) can touch.

    Returns (row slice, line slice), the whole grid for unbounded shapes, or None if empty.
    """
    if bounds is None:
        return slice(0, n_r), slice(0, n_t)
    xmin, xmax, zmin, zmax = bounds
    az = -radius  # apex
    corners_x = (xmin, xmax, xmin, xmax)
    corners_z = (zmin - az, zmin - az, zmax - az, zmax - az)  # relative to the apex
    r_max = max(math.hypot(cx, cz) for cx, cz in zip(corners_x, corners_z))
    dx = max(xmin, 0.0, -xmax)
    dz = max(zmin - az, 0.0, az - zmax)
    r_min = math.hypot(dx, dz)
    i0 = max(int(math.floor((r_min - r0) / dr)) - 1, 0)
    i1 = min(int(math.ceil((r_max - r0) / dr)) + 2, n_r)
    if i0 >= i1:
        return None
    if zmin - az > 0:  # box entirely below the apex: the corner angles bound it
        angles = [math.atan2(cx, cz) for cx, cz in zip(corners_x, corners_z)]
        j0 = max(int(math.floor((min(angles) - t0) / dt)) - 1, 0)
        j1 = min(int(math.ceil((max(angles) - t0) / dt)) + 2, n_t)
        if j0 >= j1:
            return None
    else:
        j0, j1 = 0, n_t
    return slice(i0, i1), slice(j0, j1)


@dataclass
class Scene:
    """Layers painted in order over a background tissue (later layers win)."""

    background: Tissue
    layers: list[Layer] = field(default_factory=list)

    def add(self, shape: Shape, tissue: Tissue, label: int | None = None) -> None:
        self.layers.append(Layer(shape, tissue, label))

    def sample_polar(self, r: np.ndarray, theta: np.ndarray, radius: float) -> SceneSample:
        """Evaluate the scene on the outer grid r (n_r,) x theta (n_lines,) of a probe with apex (0, -radius).

        Same result as :meth:`sample` on the grid's Cartesian points, but each bounded shape is
        only evaluated on the block of rows/lines its bounding box can reach, and bands parallel
        to the probe face are tested column-wise, which keeps the cost proportional to the
        structures rather than to the number of layers times the grid size.
        """
        r = np.asarray(r, np.float32)
        theta = np.asarray(theta, np.float32)
        n_r, n_t = r.size, theta.size
        bg = self.background
        echo = np.full((n_r, n_t), bg.echo_db, np.float32)
        atten = np.full((n_r, n_t), bg.atten, np.float32)
        spec = np.full((n_r, n_t), bg.specular, np.float32)
        texture = np.full((n_r, n_t), bg.texture_db, np.float32)
        sin_t, cos_t = np.sin(theta), np.cos(theta)
        depth = r - np.float32(radius)
        lut_index = RadialBand.angle_index(theta)
        dr = float(r[1] - r[0]) if n_r > 1 else 1.0
        dt = float(theta[1] - theta[0]) if n_t > 1 else 1.0
        for layer in self.layers:
            shape = layer.shape
            if isinstance(shape, RadialBand) and shape.radius == radius:
                top = shape._profile(shape.top, lut_index)[None, :]
                bottom = shape._profile(shape.bottom, lut_index)[None, :]
                inside = (depth[:, None] >= top) & (depth[:, None] < bottom)
                if shape.theta_range is not None:
                    inside &= ((theta >= shape.theta_range[0]) & (theta <= shape.theta_range[1]))[None, :]
                rows, cols = slice(0, n_r), slice(0, n_t)
            else:
                block = _polar_block(shape.bounds(), radius, float(r[0]), dr, n_r, float(theta[0]), dt, n_t)
                if block is None:
                    continue
                rows, cols = block
                bx = r[rows, None] * sin_t[None, cols]
                bz = r[rows, None] * cos_t[None, cols] - np.float32(radius)
                inside = shape.mask(bx, bz)
            if not inside.any():
                continue
            t = layer.tissue
            if t.angle_db > 0:
                if isinstance(shape, RadialBand):
                    cos_inc = None
                else:
                    cos_inc = shape.incidence(bx[inside], bz[inside], -radius)
                if cos_inc is not None:
                    level = np.float32(t.echo_db) - np.float32(t.angle_db) * (1.0 - cos_inc.astype(np.float32))
                else:
                    level = np.float32(t.echo_db)
            else:
                level = np.float32(t.echo_db)
            echo[rows, cols][inside] = level
            atten[rows, cols][inside] = t.atten
            spec[rows, cols][inside] = t.specular
            texture[rows, cols][inside] = t.texture_db
        return SceneSample(echo, atten, spec, texture, None)

    def label_map(self, layout: FanLayout, theta_shift: float = 0.0) -> np.ndarray:
        """uint8 (H, W) labels at the display pixels of ``layout`` (no fan mask applied).

        A probe rocked by ``theta_shift`` rad sees the scene rotated about the apex. Only layers
        with a label can change the map (``None`` inherits), and each is evaluated only on the
        block of pixels its bounding box can reach, so this costs little more than the
        labelled structures themselves. Equals the ``label`` of :meth:`sample` on those pixels.
        """
        height, width = layout.shape
        pitch, radius = layout.mm_per_px, layout.probe.radius_mm
        xs = (np.arange(width, dtype=np.float32) - np.float32(layout.apex_col)) * np.float32(pitch)
        zrs = (np.arange(height, dtype=np.float32) - np.float32(layout.apex_row)) * np.float32(pitch)  # z + R
        c, s = math.cos(theta_shift), math.sin(theta_shift)
        label = np.zeros((height, width), np.uint8)
        for layer in self.layers:
            if layer.label is None:
                continue
            bounds = layer.shape.bounds()
            rows, cols = slice(0, height), slice(0, width)
            if bounds is not None:
                # scene box -> display box: rotate its corners back by -theta_shift about the apex
                corners = [(x, z + radius) for x in bounds[:2] for z in bounds[2:]]
                px = [cx * c - cz * s for cx, cz in corners]
                pz = [cx * s + cz * c for cx, cz in corners]
                c0 = max(int(math.floor(min(px) / pitch + layout.apex_col)) - 1, 0)
                c1 = min(int(math.ceil(max(px) / pitch + layout.apex_col)) + 2, width)
                r0 = max(int(math.floor(min(pz) / pitch + layout.apex_row)) - 1, 0)
                r1 = min(int(math.ceil(max(pz) / pitch + layout.apex_row)) + 2, height)
                if r0 >= r1 or c0 >= c1:
                    continue
                rows, cols = slice(r0, r1), slice(c0, c1)
            bx, bz = xs[None, cols], zrs[rows, None]
            if theta_shift:
                qx = bx * np.float32(c) + bz * np.float32(s)
                qz = -bx * np.float32(s) + bz * np.float32(c) - np.float32(radius)
            else:
                qx, qz = (
                    np.broadcast_to(bx, (bz.shape[0], bx.shape[1])),
                    np.broadcast_to(bz - np.float32(radius), (bz.shape[0], bx.shape[1])),
                )
            inside = layer.shape.mask(qx, qz)
            label[rows, cols][inside] = layer.label
        return label

    def sample(self, x: np.ndarray, z: np.ndarray, apex_z: float, with_label: bool = True) -> SceneSample:
        """Evaluate all layers at points (x, z) in mm; ``apex_z`` is the probe apex for specular incidence."""
        shape = np.shape(x)
        bg = self.background
        echo = np.full(shape, bg.echo_db, np.float32)
        atten = np.full(shape, bg.atten, np.float32)
        spec = np.full(shape, bg.specular, np.float32)
        texture = np.full(shape, bg.texture_db, np.float32)
        label = np.zeros(shape, np.uint8) if with_label else None
        flat_x, flat_z = x.reshape(-1), z.reshape(-1)
        polar_cache: dict[float, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        for layer in self.layers:
            bounds = layer.shape.bounds()
            if isinstance(layer.shape, RadialBand):
                radius = layer.shape.radius
                if radius not in polar_cache:
                    zr = flat_z + np.float32(radius)
                    theta = np.arctan2(flat_x, zr)
                    polar_cache[radius] = (
                        np.sqrt(flat_x * flat_x + zr * zr) - np.float32(radius),
                        theta,
                        RadialBand.angle_index(theta),
                    )
                idx = np.flatnonzero(layer.shape.mask_polar(*polar_cache[radius]))
                px, pz = flat_x[idx], flat_z[idx]
            elif bounds is not None:
                # cheap bounding-box prefilter so small structures cost little
                cand = np.flatnonzero(
                    (flat_x >= bounds[0]) & (flat_x <= bounds[1]) & (flat_z >= bounds[2]) & (flat_z <= bounds[3])
                )
                if cand.size == 0:
                    continue
                px, pz = flat_x[cand], flat_z[cand]
                inside = layer.shape.mask(px, pz)
                idx = cand[inside]
                px, pz = px[inside], pz[inside]
            else:
                inside = layer.shape.mask(flat_x, flat_z)
                idx = np.flatnonzero(inside)
                px, pz = flat_x[idx], flat_z[idx]
            if idx.size == 0:
                continue
            t = layer.tissue
            level = np.full(idx.size, t.echo_db, np.float32)
            if t.angle_db > 0:
                cos_inc = layer.shape.incidence(px, pz, apex_z)
                if cos_inc is not None:
                    # specular echoes fade as the beam grazes the surface
                    level -= np.float32(t.angle_db) * (1.0 - cos_inc.astype(np.float32))
            echo.reshape(-1)[idx] = level
            atten.reshape(-1)[idx] = t.atten
            spec.reshape(-1)[idx] = t.specular
            texture.reshape(-1)[idx] = t.texture_db
            if with_label and layer.label is not None:
                label.reshape(-1)[idx] = layer.label
        return SceneSample(echo, atten, spec, texture, label)
