"""Shapes of the (x, z) plane in mm that scene layers are painted with (ellipses, rings, capsules, bands)."""

from __future__ import annotations

import abc
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


class Shape(abc.ABC):
    """A region of the (x, z) plane in mm. Subclasses implement :meth:`mask`."""

    @abc.abstractmethod
    def mask(self, x: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Boolean array: True where (x, z) lies inside the shape."""

    def bounds(self) -> tuple[float, float, float, float] | None:
        """(xmin, xmax, zmin, zmax) or None when unbounded."""
        return None

    def incidence(self, x: np.ndarray, z: np.ndarray, apex_z: float) -> np.ndarray | None:
        """|cos| of the angle between the beam and the surface normal, or None if not defined."""
        return None


def _rot(x, z, cx, cz, angle):
    c, s = math.cos(angle), math.sin(angle)
    dx, dz = x - cx, z - cz
    return dx * c + dz * s, -dx * s + dz * c


@dataclass
class Ellipse(Shape):
    """Ellipse with semi-axis ``a`` along direction ``angle`` (rad from +x towards +z) and ``b`` across.

    ``wobble`` adds radial harmonics ((k, amplitude, phase), ...) for organic outlines.
    """

    cx: float
    cz: float
    a: float
    b: float
    angle: float = 0.0
    wobble: tuple = ()

    def mask(self, x, z):
        u, v = _rot(x, z, self.cx, self.cz, self.angle)
        rho2 = (u / self.a) ** 2 + (v / self.b) ** 2
        if not self.wobble:
            return rho2 <= 1.0
        phi = np.arctan2(v / self.b, u / self.a)
        limit = 1.0 + sum(amp * np.cos(k * phi + ph) for k, amp, ph in self.wobble)
        return rho2 <= limit * limit

    def bounds(self):
        r = max(self.a, self.b) * (1.0 + sum(abs(w[1]) for w in self.wobble))
        return self.cx - r, self.cx + r, self.cz - r, self.cz + r


@dataclass
class EllipseRing(Shape):
    """Band of ``thickness`` mm around the ellipse (a, b), optionally only for parameter angle in [phi0, phi1]."""

    cx: float
    cz: float
    a: float
    b: float
    thickness: float
    angle: float = 0.0
    phi_range: tuple[float, float] | None = None

    def mask(self, x, z):
        u, v = _rot(x, z, self.cx, self.cz, self.angle)
        half = self.thickness / 2.0
        outer = (u / (self.a + half)) ** 2 + (v / (self.b + half)) ** 2 <= 1.0
        inner_a, inner_b = max(self.a - half, 1e-3), max(self.b - half, 1e-3)
        inner = (u / inner_a) ** 2 + (v / inner_b) ** 2 < 1.0
        result = outer & ~inner
        if self.phi_range is not None:
            phi = np.arctan2(v / self.b, u / self.a)
            lo, hi = self.phi_range
            # angular window measured as a wrapped distance from its centre
            centre, half_span = (lo + hi) / 2.0, (hi - lo) / 2.0
            dist = np.abs(np.angle(np.exp(1j * (phi - centre))))
            result &= dist <= half_span
        return result

    def bounds(self):
        r = max(self.a, self.b) + self.thickness
        return self.cx - r, self.cx + r, self.cz - r, self.cz + r

    def incidence(self, x, z, apex_z):
        u, v = _rot(x, z, self.cx, self.cz, self.angle)
        # gradient of (u/a)^2 + (v/b)^2 in the rotated frame, rotated back to (x, z)
        gu, gv = u / self.a**2, v / self.b**2
        c, s = math.cos(self.angle), math.sin(self.angle)
        nx, nz = gu * c - gv * s, gu * s + gv * c
        bx, bz = x, z - apex_z
        return np.abs(nx * bx + nz * bz) / (np.hypot(nx, nz) * np.hypot(bx, bz) + 1e-9)


@dataclass
class Capsule(Shape):
    """Points within ``radius`` (tapering to ``radius1`` at the far end) of the segment p0-p1."""

    x0: float
    z0: float
    x1: float
    z1: float
    radius: float
    radius1: float | None = None

    def _t_and_dist(self, x, z):
        ex, ez = self.x1 - self.x0, self.z1 - self.z0
        length2 = ex * ex + ez * ez + 1e-12
        t = np.clip(((x - self.x0) * ex + (z - self.z0) * ez) / length2, 0.0, 1.0)
        px, pz = self.x0 + t * ex, self.z0 + t * ez
        return t, np.hypot(x - px, z - pz)

    def mask(self, x, z):
        t, dist = self._t_and_dist(x, z)
        r1 = self.radius if self.radius1 is None else self.radius1
        return dist <= self.radius + (r1 - self.radius) * t

    def bounds(self):
        r = max(self.radius, self.radius1 or 0.0)
        return (
            min(self.x0, self.x1) - r,
            max(self.x0, self.x1) + r,
            min(self.z0, self.z1) - r,
            max(self.z0, self.z1) + r,
        )

    def incidence(self, x, z, apex_z):
        ex, ez = self.x1 - self.x0, self.z1 - self.z0
        norm = math.hypot(ex, ez) + 1e-9
        # the surface normal is perpendicular to the shaft
        nx, nz = -ez / norm, ex / norm
        bx, bz = x, z - apex_z
        return np.abs(nx * bx + nz * bz) / (np.hypot(bx, bz) + 1e-9)


@dataclass
class Tube(Shape):
    """A tube of constant ``radius`` along a polyline of points [(x, z), ...]."""

    points: Sequence[tuple[float, float]]
    radius: float

    def mask(self, x, z):
        result = np.zeros(np.shape(x), dtype=bool)
        for (x0, z0), (x1, z1) in zip(self.points[:-1], self.points[1:]):
            result |= Capsule(x0, z0, x1, z1, self.radius).mask(x, z)
        return result

    def bounds(self):
        xs = [p[0] for p in self.points]
        zs = [p[1] for p in self.points]
        return min(xs) - self.radius, max(xs) + self.radius, min(zs) - self.radius, max(zs) + self.radius


@dataclass
class RadialBand(Shape):
    """Layer parallel to the probe face: ``top(theta) <= r - R < bottom(theta)`` (mm below the face).

    ``top``/``bottom`` are (base, ((amplitude, frequency, phase), ...)) undulating profiles in
    the beam angle; ``theta_range`` limits the layer laterally (rad).
    """

    radius: float
    top: tuple
    bottom: tuple
    theta_range: tuple[float, float] | None = None

    LUT_SIZE = 4096

    @classmethod
    def angle_index(cls, theta: np.ndarray) -> np.ndarray:
        """Index of each beam angle in the profile tables (profiles depend on the angle only)."""
        index = np.rint((theta + np.float32(math.pi)) * np.float32((cls.LUT_SIZE - 1) / (2 * math.pi)))
        return np.clip(index, 0, cls.LUT_SIZE - 1).astype(np.intp)

    @classmethod
    def _profile(cls, spec, index):
        base, terms = spec
        grid = np.linspace(-math.pi, math.pi, cls.LUT_SIZE, dtype=np.float32)
        table = np.full(cls.LUT_SIZE, float(base), dtype=np.float32)
        for amp, freq, phase in terms:
            table += np.float32(amp) * np.sin(np.float32(freq) * grid + np.float32(phase))
        return table[index]

    def mask(self, x, z):
        zr = z + self.radius
        theta = np.arctan2(x, zr)
        return self.mask_polar(np.sqrt(x * x + zr * zr) - self.radius, theta, self.angle_index(theta))

    def mask_polar(self, depth, theta, index):
        """Mask from depth below the face (mm), beam angle (rad) and its :meth:`angle_index`,
        which a scene computes once for all bands."""
        result = (depth >= self._profile(self.top, index)) & (depth < self._profile(self.bottom, index))
        if self.theta_range is not None:
            result &= (theta >= self.theta_range[0]) & (theta <= self.theta_range[1])
        return result


@dataclass
class Intersection(Shape):
    shapes: Sequence[Shape]

    def mask(self, x, z):
        result = self.shapes[0].mask(x, z)
        for shape in self.shapes[1:]:
            result &= shape.mask(x, z)
        return result

    def bounds(self):
        boxes = [s.bounds() for s in self.shapes if s.bounds() is not None]
        if not boxes:
            return None
        return max(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), min(b[3] for b in boxes)
