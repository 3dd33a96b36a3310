"""Synthetic B-mode fetal ultrasound phantom, formed in the image domain.

Each image is simulated on the polar grid of a convex (or endocavity) probe
and scan-converted onto the display, following
``reference/ultrasound_phantom.md`` §1:

* a *scene* of tissue layers (echo level in dB relative to parenchyma, attenuation
  in dB/cm/MHz, optional specular component and segmentation label) is sampled on
  the polar grid (§1.5 echo defaults, §1.4 attenuation table);
* speckle is complex white noise multiplied by sqrt(backscatter) *before* a
  Gaussian PSF blur, then enveloped (§1.3 convolution recipe), so it is
  Rayleigh-distributed and laterally elongated;
* per-ray attenuation is accumulated along each line and a TGC removes only the
  nominal 0.5 dB/cm/MHz law plus a residual (§1.4), so posterior enhancement
  appears behind fluid and clean or partial shadows behind bone;
* log compression maps the envelope to 0..255; display gain and dynamic range are
  auto-optimised per image towards a brightness/contrast preset drawn independently
  of the anatomy (so image-wide intensity statistics do not give the plane away);
  the DR search range (35-90 dB) is wider than the 50-60 dB of §1.3 for that reason;
* scan conversion is order-1 (bilinear) interpolation from the polar grid, as
  ``map_coordinates(order=1)`` with precomputed weights; label maps are evaluated
  exactly at display pixels (§1.2 asks for order 0, exact is stricter); outside the
  fan the display is black;
* cine loops rock the probe about its apex by whole scan lines (speckle moves with the
  tissue) and blend a second speckle realisation in slowly.

Fetal sizes come from INTERGROWTH-21st (§2.1); plane layouts follow §2.3.

Public API: :data:`PLANE_CLASSES`, :data:`FASS_LABELS`, :data:`JNU_LABELS`,
:func:`intergrowth_biometry`, :class:`ProbeGeometry`, :class:`FanLayout`,
:class:`PlaneImage`, :func:`render_plane`, :func:`render_sequence`, :func:`label_scheme`;
lower-level pieces (:class:`Scene`, :func:`acquire`, :func:`envelope_db`, :class:`ScanConverter`,
:func:`auto_optimise`, :func:`log_compress`) are public for tests and experiments.
"""

from __future__ import annotations

import abc
import logging
import math
from dataclasses import dataclass, field, replace
from typing import Callable, Sequence

import numpy as np
from scipy import ndimage

logger = logging.getLogger(__name__)

#: Fetal Planes DB classes in UltraDINO's label order (index = class id),
#: reference/datasets_and_nnunet.md §1.3.
PLANE_CLASSES = ["Other", "Maternal cervix", "Fetal abdomen", "Fetal brain", "Fetal femur", "Fetal thorax"]
#: Intrapartum transperineal view, the JNU-IFM segmentation plane (not a Fetal Planes class).
INTRAPARTUM = "Intrapartum transperineal"
ALL_PLANES = PLANE_CLASSES + [INTRAPARTUM]
#: FASS label scheme (datasets_and_nnunet.md §2.3).
FASS_LABELS = {"background": 0, "artery": 1, "liver": 2, "stomach": 3, "vein": 4}
#: JNU-IFM label scheme after the 7->1, 8->2 remap (datasets_and_nnunet.md §1.2).
JNU_LABELS = {"background": 0, "pubic_symphysis": 1, "head": 2}

_PLANE_ALIASES = {
    "other": "Other",
    "cervix": "Maternal cervix",
    "maternal cervix": "Maternal cervix",
    "abdomen": "Fetal abdomen",
    "fetal abdomen": "Fetal abdomen",
    "brain": "Fetal brain",
    "fetal brain": "Fetal brain",
    "femur": "Fetal femur",
    "fetal femur": "Fetal femur",
    "thorax": "Fetal thorax",
    "fetal thorax": "Fetal thorax",
    "intrapartum": INTRAPARTUM,
    "intrapartum transperineal": INTRAPARTUM,
    "transperineal": INTRAPARTUM,
}


def canonical_plane(plane: str) -> str:
    """Return the canonical plane name for a class name or short alias (case-insensitive)."""
    key = str(plane).strip().lower()
    if key in _PLANE_ALIASES:
        return _PLANE_ALIASES[key]
    raise ValueError(f"unknown plane {plane!r}; expected one of {ALL_PLANES} or aliases {sorted(_PLANE_ALIASES)}")


# --------------------------------------------------------------------------------------
# Fetal biometry (reference §2.1, INTERGROWTH-21st, Papageorghiou Lancet 2014)
# --------------------------------------------------------------------------------------


def _ig21_mean_sd(ga: float) -> dict[str, tuple[float, float]]:
    lg = math.log(ga)
    g2, g3 = ga * ga, ga**3
    hc = (-28.2849 + 1.69267 * g2 - 0.397485 * g2 * lg,
          1.98735 + 0.0136772 * g3 - 0.00726264 * g3 * lg + 0.000976253 * g3 * lg * lg)
    bpd = (5.60878 + 0.158369 * g2 - 0.00256379 * g3,
           math.exp(0.101242 + 0.00150557 * g3 - 0.000771535 * g3 * lg + 0.0000999638 * g3 * lg * lg))
    ac = (-81.3243 + 11.6772 * ga - 0.000561865 * g3,
          -4.36302 + 0.121445 * g2 - 0.0130256 * g3 + 0.00282143 * g3 * lg)
    fl = (-39.9616 + 4.32298 * ga - 0.0380156 * g2,
          math.exp(0.605843 - 42.0014 / g2 + 0.00000917972 * g3))
    return {"hc": hc, "bpd": bpd, "ac": ac, "fl": fl}


def intergrowth_biometry(
    ga_weeks: float,
    z_score: float = 0.0,
    measure_noise: Sequence[float] | None = None,
) -> dict[str, float]:
    """Fetal biometry in mm from the INTERGROWTH-21st equations (reference §2.1).

    Args:
        ga_weeks: gestational age in weeks (the equations are fitted for 14-42).
        z_score: shared size z-score of the fetus.
        measure_noise: optional per-measure extra z for (hc, bpd, ac, fl); the
            reference recommends "a shared z-score plus per-measure noise".

    Returns:
        ``{"hc", "bpd", "ac", "fl"}`` in mm.
    """
    if not 12.0 <= ga_weeks <= 43.0:
        raise ValueError(f"gestational age {ga_weeks} weeks is outside the 12-43 week range of INTERGROWTH-21st")
    noise = list(measure_noise) if measure_noise is not None else [0.0] * 4
    stats = _ig21_mean_sd(ga_weeks)
    return {name: mu + (z_score + extra) * sd for (name, (mu, sd)), extra in zip(stats.items(), noise)}


def cardiac_circumference_mm(ga_weeks: float) -> float:
    """Fetal cardiac circumference (reference §2.2, PMID 21876089)."""
    return -53.11 + 6.56 * ga_weeks - 0.035 * ga_weeks**2


def csp_width_mm(ga_weeks: float) -> float:
    """Cavum septi pellucidi width (reference §2.2, J Obstet Gynaecol 2022)."""
    return 0.2705 * ga_weeks - 1.6121


# --------------------------------------------------------------------------------------
# Probe and display geometry (reference §1.1, §1.2)
# --------------------------------------------------------------------------------------


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
    def sample_convex(rng: np.random.Generator, depth_mm: float | None = None) -> "ProbeGeometry":
        """Abdominal convex probe: R 40-65 mm, FOV 55-80 deg, depth 10-20 cm, 128-256 lines (§1.1)."""
        return ProbeGeometry(
            radius_mm=float(rng.uniform(40, 65)),
            fov_deg=float(rng.uniform(55, 80)),
            depth_mm=float(depth_mm if depth_mm is not None else rng.uniform(100, 200)),
            frequency_mhz=float(rng.uniform(2.5, 5.0)),
            n_lines=int(rng.integers(128, 257)),
        )

    @staticmethod
    def sample_endocavity(rng: np.random.Generator) -> "ProbeGeometry":
        """Transvaginal probe for the cervix: R ~10 mm and a wide sector (§2.3 "Cervix (TVS)").

        The reference gives 120-180 deg (U); the sector is kept below 150 deg so
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
    ) -> "FanLayout":
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


# --------------------------------------------------------------------------------------
# Scene: shapes and tissues
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tissue:
    """Acoustic properties of one scene layer (reference §1.4, §1.5).

    Attributes:
        echo_db: mean backscatter relative to parenchyma (liver = 0 dB).
        atten: attenuation in dB/cm/MHz (one way; doubled for the round trip).
        specular: fraction of the echo energy that is coherent (bone, fascia): 0..1.
        texture_db: amplitude of the smooth tissue heterogeneity in dB.
        angle_db: how many dB a specular surface loses when the beam is tangent to it.
    """

    echo_db: float
    atten: float = 0.5
    specular: float = 0.0
    texture_db: float = 1.0
    angle_db: float = 0.0


# Reference §1.5 echo defaults and §1.4 attenuation table (dB/cm/MHz).
FLUID = Tissue(-48.0, atten=0.005, texture_db=0.0)
BLOOD = Tissue(-42.0, atten=0.17, texture_db=0.0)
BRAIN = Tissue(-5.0, atten=0.6, texture_db=2.5)
THALAMUS = Tissue(-9.0, atten=0.6, texture_db=1.0)
LIVER = Tissue(0.0, atten=0.5, texture_db=3.0)
BOWEL = Tissue(2.0, atten=0.6, texture_db=4.5)
MYOCARDIUM = Tissue(0.0, atten=0.52, texture_db=2.5)
MUSCLE = Tissue(-1.0, atten=1.0, texture_db=4.0)
FAT = Tissue(-8.0, atten=0.63, texture_db=3.5)
LUNG = Tissue(3.0, atten=0.6, texture_db=2.5)
PLACENTA = Tissue(4.5, atten=0.6, texture_db=4.0)
MYOMETRIUM = Tissue(-3.0, atten=0.6, texture_db=3.5)
FETAL_SOFT = Tissue(-1.0, atten=0.6, texture_db=4.0)
CARTILAGE = Tissue(-10.0, atten=0.8, texture_db=1.0)
BRIGHT_LINE = Tissue(12.0, atten=0.6, specular=0.3, texture_db=1.0, angle_db=6.0)
SKIN = Tissue(8.0, atten=0.8, specular=0.3, texture_db=1.0, angle_db=4.0)
# Skull: thin mid-trimester bone, partial 10-20 dB shadow (§1.4); femur/ribs/vertebrae: near-total shadow.
SKULL = Tissue(20.0, atten=8.0, specular=0.6, texture_db=1.0, angle_db=10.0)
BONE = Tissue(22.0, atten=14.0, specular=0.6, texture_db=1.0, angle_db=8.0)


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
        return min(self.x0, self.x1) - r, max(self.x0, self.x1) + r, min(self.z0, self.z1) - r, max(self.z0, self.z1) + r

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

    def label_map(self, layout: "FanLayout", theta_shift: float = 0.0) -> np.ndarray:
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
                qx, qz = np.broadcast_to(bx, (bz.shape[0], bx.shape[1])), np.broadcast_to(bz - np.float32(radius), (bz.shape[0], bx.shape[1]))
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
                    polar_cache[radius] = (np.sqrt(flat_x * flat_x + zr * zr) - np.float32(radius), theta,
                                           RadialBand.angle_index(theta))
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


# --------------------------------------------------------------------------------------
# Image formation
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImagingParams:
    """Per-image system settings (reference §1.3, §1.4).

    Attributes:
        target_mean, target_std: the whole-frame grey mean and std that the auto-optimised
            gain and dynamic range aim for (:func:`auto_optimise`); drawn independently of the anatomy.
        pulse_cycles: transmit pulse length in cycles; axial cell = 0.77 * cycles / f mm
            (SPL/2, §1.3: 0.45-0.65 mm at 3.5 MHz with 2-3 cycles).
        lateral_sigma_lines: lateral PSF sigma in scan-line spacings. Line spacing grows with
            depth, so the lateral FWHM goes from about 1-2 mm at 10 cm to 2.5-4 mm at 20 cm
            (§1.3: 0.8-1.5 mm at focus, 2-3 mm deep or off focus), with a lateral:axial grain
            ratio of about 2-4.
        tgc_residual_db_per_cm: TGC error slope (±0.2 dB/cm, §1.4).
        tgc_wiggle_db: amplitude of the smooth slider-shaped TGC curve error.
        noise_floor_db: receiver noise relative to a parenchyma echo from the maximum depth (dB).
        tgc_follow: how much of the scene's actual median loss the TGC sliders follow (0..1).
        interface_db: level of a strong specular interface relative to parenchyma (dB).
        focus_depth, focus_gain_db: transmit focus as a fraction of depth and its brightening (dB).
        edge_loss_db: darkening at the sector edges from element directivity (dB).
        reverb_db: level of the first reverberation copy of the near-field wall (-6..-20 dB, §1.4).
        smoothing_mm: display-side speckle-reduction / persistence blur (Gaussian sigma, mm).
    """

    target_mean: float
    target_std: float
    pulse_cycles: float
    lateral_sigma_lines: float
    tgc_residual_db_per_cm: float
    tgc_wiggle_db: float
    noise_floor_db: float
    reverb_db: float
    smoothing_mm: float
    tgc_follow: float
    interface_db: float
    focus_depth: float
    focus_gain_db: float
    edge_loss_db: float

    @staticmethod
    def sample(rng: np.random.Generator) -> "ImagingParams":
        return ImagingParams(
            target_mean=float(rng.uniform(22, 42)),
            target_std=float(rng.uniform(46, 58)),
            pulse_cycles=float(rng.uniform(2.0, 3.0)),
            lateral_sigma_lines=float(rng.uniform(0.8, 1.3)),
            tgc_residual_db_per_cm=float(rng.uniform(-0.2, 0.2)),
            tgc_wiggle_db=float(rng.uniform(0.5, 3.0)),
            noise_floor_db=float(rng.uniform(-36, -24)),
            reverb_db=float(rng.uniform(-20, -12)),
            smoothing_mm=float(rng.uniform(0.1, 0.35)),
            tgc_follow=float(rng.uniform(0.6, 0.9)),
            interface_db=float(rng.uniform(0.0, 6.0)),
            focus_depth=float(rng.uniform(0.3, 0.7)),
            focus_gain_db=float(rng.uniform(1.0, 4.0)),
            edge_loss_db=float(rng.uniform(1.0, 5.0)),
        )


@dataclass
class PolarGrid:
    """Sample positions of the simulated acquisition: ``n_r`` depths x (``n_lines`` + 2 ``pad``) beams.

    ``pad`` extra lines on each side let a cine loop rock the probe by whole lines
    without re-simulating: frame k shows columns ``pad + shift_k ... pad + shift_k + n_lines``.
    """

    probe: ProbeGeometry
    dr_mm: float
    r: np.ndarray  # (n_r,) mm from the apex
    theta: np.ndarray  # (n_lines + 2 pad,) rad
    pad: int = 0

    @staticmethod
    def for_layout(layout: FanLayout, pad: int = 0) -> "PolarGrid":
        probe = layout.probe
        # about 1.15 radial samples per display pixel: the display, not the physics, limits
        # how much axial detail survives, so finer sampling would only cost time.
        dr = float(np.clip(layout.mm_per_px / 1.15, 0.08, 0.6))
        n_r = int(math.ceil(probe.depth_mm / dr)) + 1
        r = probe.radius_mm + np.arange(n_r, dtype=np.float32) * np.float32(dr)
        d_theta = 2 * probe.half_fov / probe.n_lines
        index = np.arange(-pad, probe.n_lines + pad, dtype=np.float32)
        theta = (index + np.float32(0.5)) * np.float32(d_theta) - np.float32(probe.half_fov)
        return PolarGrid(probe, dr, r, theta, pad)

    @property
    def d_theta(self) -> float:
        return 2 * self.probe.half_fov / self.probe.n_lines

    def cartesian(self) -> tuple[np.ndarray, np.ndarray]:
        """(x, z) mm of every sample, float32 (n_r, n_lines + 2 pad)."""
        x = self.r[:, None] * np.sin(self.theta)[None, :]
        z = self.r[:, None] * np.cos(self.theta)[None, :] - np.float32(self.probe.radius_mm)
        return x.astype(np.float32), z.astype(np.float32)


def _bilinear(field_: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Sample a 2-D array on the outer grid rows x cols (fractional indices) by bilinear interpolation."""
    r0 = np.minimum(rows.astype(np.intp), field_.shape[0] - 2)
    c0 = np.minimum(cols.astype(np.intp), field_.shape[1] - 2)
    fr = (rows - r0)[:, None].astype(np.float32)
    fc = (cols - c0)[None, :].astype(np.float32)
    top = field_[r0][:, c0] * (1 - fc) + field_[r0][:, c0 + 1] * fc
    bottom = field_[r0 + 1][:, c0] * (1 - fc) + field_[r0 + 1][:, c0 + 1] * fc
    return (top * (1 - fr) + bottom * fr).astype(np.float32)


def _complex_noise(rng: np.random.Generator, shape) -> np.ndarray:
    """Circular complex white Gaussian noise, unit variance per component, complex64."""
    out = np.empty(shape, np.complex64)
    out.real = rng.standard_normal(shape, dtype=np.float32)
    out.imag = rng.standard_normal(shape, dtype=np.float32)
    return out


def draw_speckle(rng: np.random.Generator, grid: PolarGrid, n_realisations: int = 1) -> list[tuple[np.ndarray, np.ndarray]]:
    """(scatterer, receiver) complex white noise pairs for :func:`acquire`, one per realisation."""
    shape = (grid.r.size, grid.theta.size)
    return [(_complex_noise(rng, shape), _complex_noise(rng, shape)) for _ in range(n_realisations)]


def tissue_texture(rng: np.random.Generator, grid: PolarGrid) -> np.ndarray:
    """Unit-variance tissue heterogeneity (not speckle): ~1 mm microstructure plus ~6 mm patchiness.

    Smooth fields are drawn on a coarser grid and interpolated up (same field, less work).
    Returns float32 (n_r, n_lines + 2 pad).
    """
    n_r, n_lines = grid.r.size, grid.theta.size
    mid_r = float(grid.r[n_r // 2])
    texture = np.zeros((n_r, n_lines), np.float32)
    for scale_mm, weight in ((1.0, 0.75), (6.0, 0.65)):
        sigma = np.array([scale_mm / grid.dr_mm, scale_mm / (mid_r * grid.d_theta)])
        factor = np.maximum(np.floor(sigma / 2.0), 1).astype(int)
        coarse_shape = (-(-n_r // factor[0]) + 1, -(-n_lines // factor[1]) + 1)
        part = ndimage.gaussian_filter(rng.standard_normal(coarse_shape, dtype=np.float32), sigma / factor)
        part = _bilinear(part, np.arange(n_r, dtype=np.float32) / factor[0], np.arange(n_lines, dtype=np.float32) / factor[1])
        texture += np.float32(weight) * part / (float(part.std()) + 1e-6)
    return texture


@dataclass
class Acquisition:
    """Received, PSF-filtered complex echo fields of one scene and the depth gain to display them.

    Attributes:
        fields: complex64 (n_r, n_lines + 2 pad) arrays, one per independent speckle realisation
            (cine frames blend two of them to decorrelate slowly).
        gain_db: float32 (n_r,) TGC plus transmit-focus gain.
    """

    grid: PolarGrid
    fields: list[np.ndarray]
    gain_db: np.ndarray


def acquire(
    scene: Scene,
    grid: PolarGrid,
    params: ImagingParams,
    noise: Sequence[tuple[np.ndarray, np.ndarray]],
    tgc_curve_db: np.ndarray,
    texture: np.ndarray,
    reverb_depth_mm: float | None = None,
) -> Acquisition:
    """Form the received echo field of ``scene`` on ``grid`` (reference §1.3 steps 1-3, §1.4).

    * backscatter: echo level (blurred over ~1 resolution cell so boundaries soften) plus
      tissue texture; interfaces facing the beam add a coherent echo proportional to the
      echo-level step along the ray (reflection is strongest at normal incidence);
    * reverberation: weaker copies of the near-field wall at multiples of its depth (§1.4);
    * speckle: complex white noise x sqrt(backscatter) (+ coherent specular part), then the
      round-trip attenuation accumulated along each ray, receiver noise, and a separable
      Gaussian PSF; the PSF is scaled to keep the mean speckle energy of a unit field;
    * gain: the TGC removes the nominal 0.5 dB/cm/MHz law plus a residual and follows the
      scene's median loss only partly, so enhancement behind fluid and shadows survive.

    ``noise`` holds one (scatterer, receiver) pair of complex white noise fields of the grid's
    shape per speckle realisation (:func:`draw_speckle`); re-simulated frames of a sequence reuse
    them so tissue keeps its speckle.
    """
    probe = grid.probe
    props = scene.sample_polar(grid.r, grid.theta, probe.radius_mm)
    axial_fwhm_mm = 0.77 * params.pulse_cycles / probe.frequency_mhz  # SPL/2, §1.3
    sigma_axial = max(axial_fwhm_mm / 2.355 / grid.dr_mm, 0.6)
    sigma_lateral = params.lateral_sigma_lines
    level_db = ndimage.gaussian_filter(props.echo_db, (max(2.0 * sigma_axial, 0.7 / grid.dr_mm), 1.0), mode="nearest",
                                       truncate=2.5)
    level_db += props.texture_db * texture
    step = max(1, int(round(0.8 / grid.dr_mm)))
    jump = np.zeros_like(level_db)
    jump[step:-step] = np.abs(level_db[2 * step:] - level_db[: -2 * step])
    interface = np.power(np.float32(10.0), (np.minimum(jump, 30.0) - 30.0 + params.interface_db) / 20.0)
    interface *= jump > 6.0
    amplitude = np.power(np.float32(10.0), level_db / np.float32(20.0))
    if reverb_depth_mm is not None:
        shift = int(round(reverb_depth_mm / grid.dr_mm))
        if 0 < shift < amplitude.shape[0]:
            near = amplitude[:shift].copy()
            for k in (1, 2):
                start = shift * k
                if start >= amplitude.shape[0]:
                    break
                stop = min(start + shift, amplitude.shape[0])
                gain = np.float32(10 ** (params.reverb_db * k / 20.0))
                amplitude[start:stop] = np.sqrt(amplitude[start:stop] ** 2 + (gain * near[: stop - start]) ** 2)
    diffuse = amplitude * np.sqrt(np.float32(1.0) - props.specular)
    coherent = amplitude * np.sqrt(props.specular) * np.float32(1.4) + interface
    dr_cm = grid.dr_mm / 10.0
    path_db = np.cumsum(props.atten, axis=0) * np.float32(2.0 * probe.frequency_mhz * dr_cm)
    loss = np.power(np.float32(10.0), -path_db / np.float32(20.0))
    nominal_db = (2.0 * 0.5 * probe.frequency_mhz * (grid.r - probe.radius_mm) / 10.0).astype(np.float32)
    floor = np.float32(10.0 ** ((-float(nominal_db[-1]) + params.noise_floor_db) / 20.0))
    energy = np.float32(math.sqrt(4.0 * math.pi * sigma_axial * sigma_lateral))
    fields = []
    for scatter, electronic in noise:
        received = (diffuse * scatter + coherent) * loss
        received += floor * electronic
        blurred = np.empty_like(received)
        blurred.real = ndimage.gaussian_filter(received.real, (sigma_axial, sigma_lateral), mode="nearest", truncate=3.0)
        blurred.imag = ndimage.gaussian_filter(received.imag, (sigma_axial, sigma_lateral), mode="nearest", truncate=3.0)
        blurred *= energy
        fields.append(blurred)
    typical_db = np.median(path_db, axis=1)
    tgc_db = tgc_curve_db + np.float32(params.tgc_follow) * (typical_db - nominal_db)
    depth_frac = (grid.r - probe.radius_mm) / probe.depth_mm
    focus_db = params.focus_gain_db * np.exp(-(((depth_frac - params.focus_depth) / 0.3) ** 2))
    return Acquisition(grid, fields, (tgc_db + focus_db).astype(np.float32))


def envelope_db(acq: Acquisition, params: ImagingParams, line_shift: int = 0, mix: float = 0.0) -> np.ndarray:
    """Log envelope (dB) of the ``n_lines`` window starting ``line_shift`` lines off centre.

    ``mix`` (rad) blends in the second speckle realisation: cos(mix) F1 + sin(mix) F2 keeps the
    speckle energy and decorrelates it gradually (out-of-plane motion). Element directivity
    darkens the sector edges. Returns float32 (n_r, n_lines).
    """
    grid = acq.grid
    n_lines = grid.probe.n_lines
    if abs(line_shift) > grid.pad:
        raise ValueError(f"line shift {line_shift} exceeds the {grid.pad} padding lines of the acquisition")
    lo = grid.pad + line_shift
    field_ = acq.fields[0][:, lo:lo + n_lines]
    if mix and len(acq.fields) > 1:
        field_ = np.float32(math.cos(mix)) * field_ + np.float32(math.sin(mix)) * acq.fields[1][:, lo:lo + n_lines]
    theta = grid.theta[grid.pad:grid.pad + n_lines]
    edge_db = -params.edge_loss_db * (theta / grid.probe.half_fov) ** 4
    display_db = acq.gain_db[:, None] + edge_db[None, :].astype(np.float32)
    return (20.0 * np.log10(np.abs(field_) + np.float32(1e-6)) + display_db).astype(np.float32)


def tgc_curve(grid: PolarGrid, params: ImagingParams, rng: np.random.Generator) -> np.ndarray:
    """TGC in dB per depth sample: nominal 2*0.5*f*d plus residual slope and a smooth slider error (§1.4)."""
    depth_cm = (grid.r - grid.probe.radius_mm) / 10.0
    nominal = 2.0 * 0.5 * grid.probe.frequency_mhz * depth_cm
    residual = params.tgc_residual_db_per_cm * depth_cm
    knots = rng.uniform(-1.0, 1.0, size=8) * params.tgc_wiggle_db
    wiggle = np.interp(depth_cm, np.linspace(0, depth_cm[-1] + 1e-6, 8), knots)
    return (nominal + residual + wiggle).astype(np.float32)


@dataclass
class ScanConverter:
    """Precomputed inverse mapping from display pixels to polar samples (§1.2).

    Bilinear (order-1) interpolation as in ``scipy.ndimage.map_coordinates(order=1)``,
    with the four neighbour indices and weights computed once per layout so cine frames
    only pay for the gather.
    """

    layout: FanLayout
    fan: np.ndarray  # bool (H, W)
    flat_index: np.ndarray  # intp (n_fan,) flat display index of each fan pixel
    corners: np.ndarray  # intp (4, n_fan) flat polar indices of the neighbours
    weights: np.ndarray  # float32 (4, n_fan)

    @staticmethod
    def build(layout: FanLayout, grid: PolarGrid) -> "ScanConverter":
        r, theta = layout.polar_of_pixels()
        probe = layout.probe
        fan = (np.abs(theta) <= probe.half_fov) & (r >= probe.radius_mm) & (r <= probe.radius_mm + probe.depth_mm)
        flat_index = np.flatnonzero(fan)
        n_r, n_lines = grid.r.size, probe.n_lines
        ir = (r.reshape(-1)[flat_index] - np.float32(probe.radius_mm)) / np.float32(grid.dr_mm)
        it = (theta.reshape(-1)[flat_index] + np.float32(probe.half_fov)) / np.float32(grid.d_theta) - np.float32(0.5)
        ir = np.clip(ir, 0, n_r - 1)
        it = np.clip(it, 0, n_lines - 1)
        i0 = np.minimum(ir.astype(np.intp), n_r - 2)
        j0 = np.minimum(it.astype(np.intp), n_lines - 2)
        fr = (ir - i0).astype(np.float32)
        fc = (it - j0).astype(np.float32)
        base = i0 * n_lines + j0
        corners = np.stack([base, base + 1, base + n_lines, base + n_lines + 1])
        weights = np.stack([(1 - fr) * (1 - fc), (1 - fr) * fc, fr * (1 - fc), fr * fc]).astype(np.float32)
        return ScanConverter(layout, fan, flat_index, corners, weights)

    def __call__(self, polar: np.ndarray, fill: float) -> np.ndarray:
        """Interpolate a (n_r, n_lines) polar image onto the display; ``fill`` outside the fan."""
        flat = np.ascontiguousarray(polar, np.float32).reshape(-1)
        values = (flat[self.corners] * self.weights).sum(axis=0)
        out = np.full(self.layout.shape[0] * self.layout.shape[1], fill, dtype=np.float32)
        out[self.flat_index] = values
        return out.reshape(self.layout.shape)


def log_compress(image_db: np.ndarray, fan: np.ndarray, dynamic_range_db: float, ref_db: float) -> np.ndarray:
    """I = 255 * clip((L - ref + DR) / DR, 0, 1) inside the fan, 0 outside (§1.3); uint8 (H, W)."""
    if dynamic_range_db <= 0:
        raise ValueError(f"dynamic range must be positive, got {dynamic_range_db}")
    grey = np.float32(255.0) * np.clip((image_db - np.float32(ref_db - dynamic_range_db)) / np.float32(dynamic_range_db), 0.0, 1.0)
    grey[~fan] = 0.0
    return np.rint(grey).astype(np.uint8)


def auto_optimise(
    image_db: np.ndarray,
    fan: np.ndarray,
    target_mean: float,
    target_std: float,
    dr_range: tuple[float, float] = (35.0, 90.0),
) -> tuple[float, float]:
    """Pick the display (ref dB, dynamic range dB) whose whole-frame grey mean and std hit the targets.

    Scanners' "auto-optimise" sets gain and dynamic range from the frame itself; drawing
    the targets independently of the anatomy keeps image-wide intensity statistics free of
    plane information. The DR search range is wider than the 50-60 dB of §1.3 because here
    DR doubles as the contrast control. Pixels outside the fan count as 0, as they do in
    the stored image. Works on a histogram of the fan: the mean falls as ref rises, and
    for a fixed mean the std falls as DR widens, so both are found by bracketing on a grid.
    """
    values = image_db[fan]
    if values.size == 0:
        raise ValueError("the fan does not cover any display pixel")
    # a fine histogram of the fan values stands in for the pixels (the outside adds zeros)
    counts, edges = np.histogram(values, bins=1024)
    centres = 0.5 * (edges[:-1] + edges[1:])
    weights = counts / float(image_db.size)  # fraction of the whole frame per bin

    # the grey map is 0 below ref - DR, 255 above ref and linear between, so the frame's grey
    # mean and second moment follow from cumulative sums of the histogram in O(log bins)
    cum_w = np.concatenate([[0.0], np.cumsum(weights)])
    cum_c = np.concatenate([[0.0], np.cumsum(weights * centres)])
    cum_c2 = np.concatenate([[0.0], np.cumsum(weights * centres * centres)])

    def grey_stats(refs: np.ndarray, drs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Whole-frame grey mean and std for refs (D, K) under dynamic ranges drs (D,)."""
        dr = np.broadcast_to(np.asarray(drs, np.float64)[:, None], np.shape(refs))
        lo = refs - dr
        i = np.searchsorted(centres, lo, side="right")
        j = np.searchsorted(centres, refs, side="right")
        w_mid, s1, s2 = cum_w[j] - cum_w[i], cum_c[j] - cum_c[i], cum_c2[j] - cum_c2[i]
        w_top = cum_w[-1] - cum_w[j]
        m1 = w_top + (s1 - lo * w_mid) / dr
        m2 = w_top + (s2 - 2.0 * lo * s1 + lo * lo * w_mid) / (dr * dr)
        return 255.0 * m1, 255.0 * np.sqrt(np.maximum(m2 - m1 * m1, 0.0))

    def ref_for_mean(drs: np.ndarray) -> np.ndarray:
        # the mean falls monotonically as ref rises: bracket the target on a grid, twice, then interpolate
        lo = np.full(drs.shape, float(edges[0]) - 1.0)
        hi = float(edges[-1]) + drs
        steps = np.linspace(0.0, 1.0, 40)
        for _ in range(2):
            refs = lo[:, None] + (hi - lo)[:, None] * steps[None, :]
            means = grey_stats(refs, drs)[0]
            k = np.clip((means > target_mean).sum(axis=1), 1, len(steps) - 1)
            rows = np.arange(len(drs))
            lo, hi = refs[rows, k - 1], refs[rows, k]
        m_lo, m_hi = grey_stats(np.stack([lo, hi], axis=1), drs)[0].T
        frac = np.clip(np.divide(m_lo - target_mean, m_lo - m_hi, out=np.zeros_like(m_lo), where=m_lo != m_hi), 0, 1)
        return lo + frac * (hi - lo)

    # for a fixed mean the std falls as DR widens: bracket the target DR on a grid, twice, then interpolate
    dr_lo, dr_hi = dr_range
    for _ in range(2):
        drs = np.linspace(dr_lo, dr_hi, 12)
        refs = ref_for_mean(drs)
        stds = grey_stats(refs[:, None], drs)[1][:, 0]
        k = int(np.clip((stds > target_std).sum(), 1, len(drs) - 1))
        dr_lo, dr_hi = float(drs[k - 1]), float(drs[k])
        s_lo, s_hi = float(stds[k - 1]), float(stds[k])
    frac = 0.0 if s_lo == s_hi else float(np.clip((s_lo - target_std) / (s_lo - s_hi), 0.0, 1.0))
    dr = dr_lo + frac * (dr_hi - dr_lo)
    return float(ref_for_mean(np.array([dr]))[0]), dr


# --------------------------------------------------------------------------------------
# Anatomy
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pose:
    """Local anatomical frame: origin (cx, cz) mm, rotation ``angle`` rad, ``mirror`` flips the v axis."""

    cx: float
    cz: float
    angle: float
    mirror: bool = False

    def point(self, u: float, v: float) -> tuple[float, float]:
        v = -v if self.mirror else v
        c, s = math.cos(self.angle), math.sin(self.angle)
        return self.cx + u * c - v * s, self.cz + u * s + v * c

    def direction(self, local_angle: float) -> float:
        return self.angle + (-local_angle if self.mirror else local_angle)

    def ellipse(self, u, v, a, b, local_angle=0.0, wobble=()) -> Ellipse:
        cx, cz = self.point(u, v)
        return Ellipse(cx, cz, a, b, self.direction(local_angle), wobble)

    def ring(self, u, v, a, b, thickness, local_angle=0.0, phi_range=None) -> EllipseRing:
        cx, cz = self.point(u, v)
        if phi_range is not None and self.mirror:
            phi_range = (-phi_range[1], -phi_range[0])
        return EllipseRing(cx, cz, a, b, thickness, self.direction(local_angle), phi_range)

    def capsule(self, u0, v0, u1, v1, radius, radius1=None) -> Capsule:
        x0, z0 = self.point(u0, v0)
        x1, z1 = self.point(u1, v1)
        return Capsule(x0, z0, x1, z1, radius, radius1)

    def tube(self, points_uv, radius) -> Tube:
        return Tube([self.point(u, v) for u, v in points_uv], radius)


def _wobble(rng: np.random.Generator, amount: float, orders=(2, 3, 4)) -> tuple:
    return tuple((k, float(rng.uniform(-amount, amount) / k), float(rng.uniform(0, 2 * math.pi))) for k in orders)


def _jitter(tissue: Tissue, rng: np.random.Generator, db: float = 1.5) -> Tissue:
    return replace(tissue, echo_db=tissue.echo_db + float(rng.uniform(-db, db)))


def _bezier(p0, p1, p2, n=8):
    t = np.linspace(0, 1, n)
    return [tuple((1 - s) ** 2 * np.asarray(p0) + 2 * (1 - s) * s * np.asarray(p1) + s * s * np.asarray(p2)) for s in t]


@dataclass
class Anatomy:
    """What a plane builder returns: the scene, probe, biometry and reverberation depth."""

    scene: Scene
    probe: ProbeGeometry
    info: dict
    reverb_depth_mm: float | None = None
    # lets sequences move one structure (the fetal head in intrapartum videos) frame by frame
    rebuild: Callable[[float], Scene] | None = None


def _sample_ga(rng, lo=20.0, hi=36.0) -> float:
    return float(rng.uniform(lo, hi))


def _sample_biometry(rng, ga) -> dict:
    return intergrowth_biometry(ga, float(rng.normal(0, 1)), rng.normal(0, 0.4, size=4))


def _maternal_wall(rng: np.random.Generator, probe: ProbeGeometry, scene: Scene, far_wall: bool = True) -> float:
    """Paint skin, fat, fascia, rectus, myometrium (parallel to the probe face), amniotic fluid and the
    far uterine wall. Returns the depth (mm) where the amniotic cavity starts.
    """
    R = probe.radius_mm

    def profile(depth, amp=1.5):
        return (depth, tuple((float(rng.uniform(0, amp)), float(rng.uniform(1, 6)), float(rng.uniform(0, 6.3)))
                             for _ in range(2)))

    d = 0.0
    fat = float(rng.uniform(3, 16))
    muscle = float(rng.uniform(4, 10))
    myo = float(rng.uniform(4, 10))
    scene.add(RadialBand(R, profile(-5, 0), profile(1.2, 0.2)), SKIN)
    d = 1.2
    scene.add(RadialBand(R, profile(d, 0.2), profile(d + fat)), _jitter(FAT, rng))
    d += fat
    scene.add(RadialBand(R, profile(d), profile(d + 1.0)), _jitter(BRIGHT_LINE, rng, 3))
    scene.add(RadialBand(R, profile(d + 1.0), profile(d + muscle)), _jitter(MUSCLE, rng))
    d += muscle
    scene.add(RadialBand(R, profile(d), profile(d + 0.8)), _jitter(BRIGHT_LINE, rng, 3))
    scene.add(RadialBand(R, profile(d + 0.8), profile(d + myo)), _jitter(MYOMETRIUM, rng))
    d += myo
    cavity_top = d
    far = probe.depth_mm * float(rng.uniform(0.82, 1.15)) if far_wall else 1e6
    scene.add(RadialBand(R, profile(d, 1.0), profile(far, 6.0)), FLUID)
    if far < probe.depth_mm:
        scene.add(RadialBand(R, profile(far, 6.0), profile(far + float(rng.uniform(6, 12)), 4.0)), _jitter(MYOMETRIUM, rng))
    # placenta (anterior or posterior), common to all planes so it is no class cue
    placement = rng.choice(["none", "anterior", "posterior"], p=[0.35, 0.35, 0.30])
    if placement != "none":
        thick = float(rng.uniform(15, 35))
        lo = float(rng.uniform(-probe.half_fov, 0.2))
        span = (lo, lo + float(rng.uniform(0.5, 1.6)))
        start = cavity_top if placement == "anterior" else min(far, probe.depth_mm) - thick
        scene.add(RadialBand(R, profile(start, 1.0), profile(start + thick, 3.0), span), _jitter(PLACENTA, rng))
        scene.add(RadialBand(R, profile(start + (thick if placement == "anterior" else 0) - 0.7, 0.5),
                             profile(start + (thick if placement == "anterior" else 0) + 0.7, 0.5), span),
                  _jitter(BRIGHT_LINE, rng, 4))
    return cavity_top


def _fetal_parts(rng, scene: Scene, probe: ProbeGeometry, n: int, avoid: tuple[float, float, float] | None,
                 cavity_top: float, size_range: tuple[float, float] = (12, 38)):
    """Generic fetal soft-tissue (trunk, limbs, cord) in the fluid, without bones: context all planes share."""
    half_w, _, depth = probe.extent_mm
    for _ in range(n):
        for _attempt in range(6):
            cx = float(rng.uniform(-half_w * 0.8, half_w * 0.8))
            size = float(rng.uniform(*size_range))
            cz = float(rng.uniform(cavity_top + 0.5 * size, max(depth * 1.05, cavity_top + size)))
            if avoid is None or math.hypot(cx - avoid[0], cz - avoid[1]) > avoid[2] + size * 0.6:
                break
        angle = float(rng.uniform(0, math.pi))
        shape = Ellipse(cx, cz, size, size * float(rng.uniform(0.4, 0.85)), angle, _wobble(rng, 0.12, (2, 3, 4)))
        scene.add(shape, _jitter(FETAL_SOFT, rng, 2.5))
        # a little internal structure: hypo- and hyperechoic patches
        for _k in range(int(rng.integers(0, 3))):
            u, v = rng.uniform(-0.5, 0.5, size=2)
            pose = Pose(cx, cz, angle)
            tissue = Tissue(float(rng.choice([-8.0, -4.0, 4.0])), atten=0.6, texture_db=2.0)
            scene.add(pose.ellipse(u * shape.a, v * shape.b, shape.a * float(rng.uniform(0.1, 0.3)),
                                   shape.b * float(rng.uniform(0.1, 0.3)), 0.0, _wobble(rng, 0.2)), tissue)


def _place(rng, probe: ProbeGeometry, cavity_top: float, extent: float) -> tuple[float, float]:
    """Centre for a structure of radius ``extent`` inside the fan, below the anterior wall."""
    half_w, _, depth = probe.extent_mm
    z_lo = cavity_top + extent * 0.9
    z_hi = depth - extent * 0.95
    if z_hi <= z_lo:  # too big to fit whole: centre it in the space below the wall
        z_lo = z_hi = 0.5 * (cavity_top + depth)
    cz = float(rng.uniform(z_lo, z_hi))
    lateral = (probe.radius_mm + cz) * math.sin(probe.half_fov) - extent * 0.8
    cx = float(rng.uniform(-1, 1) * max(lateral, 0.0) * 0.6)
    return cx, cz


def _depth_for(rng, extent_mm: float, lo=70.0, hi=200.0) -> float:
    """Depth so the structure fills a large share of the sector.

    The reference samples 10-20 cm for the probe (§1.1); biometry planes are magnified so
    the structure fills most of the screen (ISUOG biometry 2019, §2.3 sources), which on a
    sector display means reducing the depth, so the lower bound here is 7 cm.
    """
    return float(np.clip(extent_mm * rng.uniform(1.2, 1.9) + 15.0, lo, hi))


def _build_brain(rng) -> Anatomy:
    ga = _sample_ga(rng)
    bio = _sample_biometry(rng, ga)
    ci = float(rng.uniform(0.74, 0.83))  # cephalic index, reference §2.1 (Hadlock 1981)
    ofd = 2 * bio["hc"] / (math.pi * (1 + ci))  # HC ≈ π(BPD+OFD)/2
    bpd = ci * ofd
    probe = ProbeGeometry.sample_convex(rng, _depth_for(rng, ofd))
    scene = Scene(MYOMETRIUM)
    cavity = _maternal_wall(rng, probe, scene)
    a, b = ofd / 2, bpd / 2
    cx, cz = _place(rng, probe, cavity, a)
    pose = Pose(cx, cz, float(rng.uniform(-0.6, 0.6)) + (math.pi if rng.random() < 0.5 else 0.0), bool(rng.random() < 0.5))
    _fetal_parts(rng, scene, probe, int(rng.integers(0, 3)), (cx, cz, a), cavity)
    skull_t = float(np.clip(1.2 + 0.06 * ga + rng.normal(0, 0.3), 1.5, 4.0))
    scene.add(pose.ellipse(0, 0, a + skull_t / 2 + 3.0, b + skull_t / 2 + 3.0), _jitter(FETAL_SOFT, rng))
    scene.add(pose.ring(0, 0, a + skull_t / 2 + 3.0, b + skull_t / 2 + 3.0, 1.0), _jitter(SKIN, rng, 3))
    ia, ib = a - skull_t / 2, b - skull_t / 2
    scene.add(pose.ellipse(0, 0, ia, ib), _jitter(BRAIN, rng))
    # sylvian fissures / insula: short bright curves in both hemispheres
    for side in (-1, 1):
        scene.add(pose.ring(-0.05 * ofd, side * 0.25 * ib, 0.25 * ia, 0.45 * ib, 1.0,
                            phi_range=(side * 1.2, side * 2.4)), _jitter(BRIGHT_LINE, rng, 4))
    subtype = str(rng.choice(["trans-thalamic", "trans-ventricular", "trans-cerebellar"], p=[0.5, 0.25, 0.25]))
    # falx: bright midline along the OFD, anterior end at u = -a
    scene.add(pose.capsule(-ia * 0.95, 0, ia * 0.95, 0, 0.6), _jitter(BRIGHT_LINE, rng, 2))
    csp_w = max(csp_width_mm(ga) + rng.normal(0, 0.6), 2.0)
    csp_u = -a + ofd / 3.0  # CSP interrupts the falx at ~1/3 of the OFD (§2.3)
    scene.add(pose.ellipse(csp_u, 0, csp_w * 1.2, csp_w / 2), FLUID)
    scene.add(pose.ring(csp_u, 0, csp_w * 1.2, csp_w / 2, 0.8), _jitter(BRIGHT_LINE, rng, 3))
    th_u = -a + float(rng.uniform(0.45, 0.6)) * ofd  # thalami at 0.45-0.6 OFD
    for side in (-1, 1):
        scene.add(pose.ellipse(th_u, side * 0.14 * ib, 0.11 * ofd, 0.13 * ib, side * 0.3, _wobble(rng, 0.08)),
                  _jitter(THALAMUS, rng))
    scene.add(pose.capsule(th_u - 0.08 * ofd, 0, th_u + 0.08 * ofd, 0, 0.7), FLUID)
    if subtype == "trans-ventricular":
        for side in (-1, 1):
            scene.add(pose.ellipse(-a + 0.25 * ofd, side * 0.12 * ib, 0.06 * ofd, 0.05 * ib, side * 0.5), FLUID)
        atrium_u = -a + float(rng.uniform(0.7, 0.8)) * ofd
        side = 1 if rng.random() < 0.5 else -1
        scene.add(pose.ellipse(atrium_u, side * 0.35 * ib, 0.09 * ofd, 0.13 * ib, side * 0.4), FLUID)
        scene.add(pose.ellipse(atrium_u, side * 0.35 * ib, 0.07 * ofd, 0.10 * ib, side * 0.4, _wobble(rng, 0.1)),
                  Tissue(12.0, atten=0.6, texture_db=1.5))
    elif subtype == "trans-cerebellar":
        tcd = float(ga + rng.normal(0, 1.5))  # transcerebellar diameter ≈ GA in mm (§2.2)
        cu = -a + float(rng.uniform(0.75, 0.85)) * ofd
        for side in (-1, 1):
            scene.add(pose.ellipse(cu, side * tcd * 0.27, tcd * 0.16, tcd * 0.26, 0.0, _wobble(rng, 0.06)),
                      _jitter(THALAMUS, rng))
        scene.add(pose.ellipse(cu, 0, tcd * 0.14, tcd * 0.08), Tissue(10.0, atten=0.6, texture_db=1.0))
        cm = 0.535 + 0.208 * ga  # cisterna magna depth, §2.2
        scene.add(pose.ellipse(cu + tcd * 0.18 + cm / 2, 0, cm / 2, tcd * 0.3), FLUID)
    scene.add(pose.ring(0, 0, a, b, skull_t), _jitter(SKULL, rng, 2))
    return Anatomy(scene, probe, {"ga_weeks": ga, "hc_mm": bio["hc"], "bpd_mm": bpd, "ofd_mm": ofd,
                                  "subtype": subtype}, reverb_depth_mm=cavity)


def _spine_axial(pose: Pose, scene: Scene, rng, r: float, v_body: float, label_aorta: int | None, aorta_r: float):
    """Vertebra in axial section: body + two posterior laminae (3 ossification centres, §2.3), and the aorta."""
    scene.add(pose.ellipse(0, v_body - 0.12 * r, 0.22 * r, 0.16 * r), _jitter(MUSCLE, rng))
    body_r = max(0.065 * r, 1.2)
    scene.add(pose.ellipse(0, v_body, body_r, body_r * 0.9), _jitter(BONE, rng, 2))
    for side in (-1, 1):
        scene.add(pose.capsule(side * 0.07 * r, v_body - 0.13 * r, side * 0.12 * r, v_body - 0.22 * r,
                               max(0.025 * r, 0.8)), _jitter(BONE, rng, 2))
    ax, av = 0.07 * r, v_body + body_r + aorta_r + 0.6
    scene.add(pose.ellipse(ax, av, aorta_r + 0.5, aorta_r + 0.5), _jitter(BRIGHT_LINE, rng, 4))
    scene.add(pose.ellipse(ax, av, aorta_r, aorta_r), BLOOD, label_aorta)


def _build_abdomen(rng, with_labels: bool = True) -> Anatomy:
    ga = _sample_ga(rng)
    bio = _sample_biometry(rng, ga)
    r = bio["ac"] / (2 * math.pi)
    probe = ProbeGeometry.sample_convex(rng, _depth_for(rng, 2 * r))
    scene = Scene(MYOMETRIUM)
    cavity = _maternal_wall(rng, probe, scene)
    cx, cz = _place(rng, probe, cavity, r)
    pose = Pose(cx, cz, float(rng.uniform(0, 2 * math.pi)), bool(rng.random() < 0.5))
    _fetal_parts(rng, scene, probe, int(rng.integers(0, 3)), (cx, cz, r), cavity)
    ell = float(rng.uniform(0.0, 0.08))
    a, b = r * (1 + ell), r * (1 - ell)
    L = FASS_LABELS if with_labels else {k: None for k in FASS_LABELS}
    scene.add(pose.ellipse(0, 0, a + 2.0, b + 2.0), _jitter(MUSCLE, rng))
    scene.add(pose.ring(0, 0, a + 2.0, b + 2.0, 0.9), _jitter(SKIN, rng, 3))
    scene.add(pose.ellipse(0, 0, a, b), _jitter(BOWEL, rng))
    # local frame: +v anterior, +u fetal left; the liver fills most of the section (§2.3)
    liver_shape = Intersection([pose.ellipse(-0.12 * r, 0.12 * r, 0.92 * r, 0.82 * r, 0.2, _wobble(rng, 0.06)),
                                pose.ellipse(0, 0, a * 0.97, b * 0.97)])
    scene.add(liver_shape, _jitter(LIVER, rng, 1.0), L["liver"])
    # stomach in the left upper quadrant; circumference 20.4 ± 3.9 % of AC (§2.2)
    stomach_d = bio["ac"] * float(np.clip(rng.normal(0.204, 0.039), 0.12, 0.3)) / math.pi
    su, sv = 0.42 * r, float(rng.uniform(0.0, 0.2)) * r
    scene.add(pose.ellipse(su, sv, stomach_d * 0.65, stomach_d * 0.42, float(rng.uniform(-0.6, 0.6)),
                           _wobble(rng, 0.12)), FLUID, L["stomach"])
    # umbilical vein: J-shaped course from the anterior wall to the portal sinus
    vein_r = float(np.clip(0.035 * r + rng.normal(0, 0.2), 1.0, 3.0))
    pts = _bezier((-0.02 * r, 0.78 * r), (-0.3 * r, 0.25 * r), (0.12 * r, 0.08 * r), n=9)
    scene.add(pose.tube([(u, v) for u, v in pts], vein_r), BLOOD, L["vein"])
    # short rib on each side (§2.3) with its shadow
    for side in (-1, 1):
        centre = side * float(rng.uniform(0.45, 0.75)) - math.pi / 2
        scene.add(pose.ring(0, 0, a * 0.93, b * 0.93, 1.6, phi_range=(centre - 0.22, centre + 0.22)),
                  _jitter(BONE, rng, 2))
    _spine_axial(pose, scene, rng, r, -0.72 * r, L["artery"], float(np.clip(0.04 * r, 0.9, 2.5)))
    return Anatomy(scene, probe, {"ga_weeks": ga, "ac_mm": bio["ac"], "stomach_diameter_mm": stomach_d},
                   reverb_depth_mm=cavity)


def _build_femur(rng) -> Anatomy:
    ga = _sample_ga(rng)
    bio = _sample_biometry(rng, ga)
    fl = bio["fl"]
    probe = ProbeGeometry.sample_convex(rng, _depth_for(rng, fl * 1.3))
    scene = Scene(MYOMETRIUM)
    cavity = _maternal_wall(rng, probe, scene)
    cx, cz = _place(rng, probe, cavity, fl * 0.7)
    # beam ideally 45-90 deg to the shaft (§2.3): shaft within ±35 deg of horizontal
    pose = Pose(cx, cz, float(rng.uniform(-0.6, 0.6)), bool(rng.random() < 0.5))
    _fetal_parts(rng, scene, probe, int(rng.integers(2, 6)), (cx, cz, fl * 0.7), cavity, size_range=(15, 40))
    # the thigh and, beyond the knee, the lower leg (soft tissue only)
    thigh_w = fl * float(rng.uniform(0.22, 0.32))
    scene.add(pose.ellipse(0, 0, fl * 0.68, thigh_w, 0.0, _wobble(rng, 0.06)), _jitter(FETAL_SOFT, rng))
    knee_angle = float(rng.uniform(0.6, 1.4)) * (1 if rng.random() < 0.5 else -1)
    ku, kv = fl * 0.62, 0.0
    lu, lv = ku + math.cos(knee_angle) * fl * 0.5, kv + math.sin(knee_angle) * fl * 0.5
    scene.add(pose.capsule(ku, kv, lu, lv, thigh_w * 0.8, thigh_w * 0.6), _jitter(FETAL_SOFT, rng))
    scene.add(pose.ring(0, 0, fl * 0.68, thigh_w, 1.0), _jitter(SKIN, rng, 3))
    shaft_r = float(np.clip(0.9 + 0.045 * ga + rng.normal(0, 0.2), 1.1, 3.0))
    # epiphyseal cartilage caps (hypoechoic); distal ossification centre from ~32 wk (§2.3)
    for end in (-1, 1):
        scene.add(pose.ellipse(end * (fl / 2 + shaft_r * 1.4), 0, shaft_r * 1.8, shaft_r * 2.0), _jitter(CARTILAGE, rng))
    if ga >= 32:
        scene.add(pose.ellipse(fl / 2 + shaft_r * 1.4, 0, shaft_r * 0.7, shaft_r * 0.7), _jitter(BONE, rng, 2))
    curvature = float(rng.uniform(-0.03, 0.03)) * fl
    pts = _bezier((-fl / 2, 0), (0, curvature), (fl / 2, 0), n=6)
    scene.add(pose.tube(pts, shaft_r), _jitter(BONE, rng, 2))
    for end in (-1, 1):  # metaphyseal flare
        scene.add(pose.capsule(end * fl / 2, 0, end * (fl / 2 - 0.12 * fl), 0, shaft_r * 1.25, shaft_r), _jitter(BONE, rng, 2))
    return Anatomy(scene, probe, {"ga_weeks": ga, "fl_mm": fl}, reverb_depth_mm=cavity)


def _build_thorax(rng) -> Anatomy:
    ga = _sample_ga(rng)
    bio = _sample_biometry(rng, ga)
    r = 0.89 * bio["ac"] / (2 * math.pi)  # thoracic circumference / AC = 0.89 (§2.2)
    probe = ProbeGeometry.sample_convex(rng, _depth_for(rng, 2 * r))
    scene = Scene(MYOMETRIUM)
    cavity = _maternal_wall(rng, probe, scene)
    cx, cz = _place(rng, probe, cavity, r)
    pose = Pose(cx, cz, float(rng.uniform(0, 2 * math.pi)), bool(rng.random() < 0.5))
    _fetal_parts(rng, scene, probe, int(rng.integers(0, 3)), (cx, cz, r), cavity)
    scene.add(pose.ellipse(0, 0, r + 2.0, r + 2.0), _jitter(MUSCLE, rng))
    scene.add(pose.ring(0, 0, r + 2.0, r + 2.0, 0.9), _jitter(SKIN, rng, 3))
    scene.add(pose.ellipse(0, 0, r, r), _jitter(LUNG, rng))
    # heart: ~1/3 of the thorax, mostly in the left chest, axis 45 ± 20 deg to the left (§2.2)
    cc = cardiac_circumference_mm(ga) * float(rng.uniform(0.92, 1.08))
    hr = cc / (2 * math.pi)
    axis = math.pi / 2 - math.radians(float(rng.normal(45, 12)))  # from the +u (left) axis
    hu, hv = 0.15 * r, 0.12 * r
    ca, sa = math.cos(axis), math.sin(axis)

    def heart_point(p, q):  # p along the base->apex axis, q across
        return hu + p * ca - q * sa, hv + p * sa + q * ca

    scene.add(pose.ellipse(hu, hv, hr * 1.12 + 1.0, hr * 0.9 + 1.0, axis), _jitter(BRIGHT_LINE, rng, 3))  # pericardium
    scene.add(pose.ellipse(hu, hv, hr * 1.12, hr * 0.9, axis), _jitter(MYOCARDIUM, rng))
    wall = float(np.clip(0.06 * hr, 0.8, 2.0))
    # four chambers: ventricles towards the apex, atria at the base, split by the septum
    # (along the axis) and the AV valve plane (across it); the crux is where they meet
    chambers = ((0.36, 0.45, 0.56, 0.42), (0.36, -0.45, 0.56, 0.42), (-0.52, 0.45, 0.38, 0.40), (-0.52, -0.45, 0.38, 0.40))
    for p_c, q_c, pa, qa in chambers:
        u, v = heart_point(p_c * hr, q_c * hr)
        scene.add(pose.ellipse(u, v, pa * hr - wall / 2, qa * hr - wall / 2, axis, _wobble(rng, 0.05)), BLOOD)
    u0, v0 = heart_point(-0.06 * hr, -0.8 * hr)
    u1, v1 = heart_point(-0.06 * hr, 0.8 * hr)
    scene.add(pose.capsule(u0, v0, u1, v1, 0.4), Tissue(8.0, atten=0.52, texture_db=1.0))
    u0, v0 = heart_point(-0.9 * hr, 0.0)
    u1, v1 = heart_point(0.85 * hr, 0.0)
    scene.add(pose.capsule(u0, v0, u1, v1, wall / 2), _jitter(MYOCARDIUM, rng))
    # one complete rib on each side (§2.3)
    for side in (-1, 1):
        centre = -math.pi / 2 + side * float(rng.uniform(0.9, 1.2))
        scene.add(pose.ring(0, 0, r * 0.97, r * 0.97, 1.8, phi_range=(centre - 0.6, centre + 0.6)),
                  _jitter(BONE, rng, 2))
    _spine_axial(pose, scene, rng, r, -0.74 * r, None, float(np.clip(0.045 * r, 0.9, 2.5)))
    return Anatomy(scene, probe, {"ga_weeks": ga, "thoracic_circumference_mm": 2 * math.pi * r,
                                  "cardiac_circumference_mm": cc}, reverb_depth_mm=cavity)


def _build_cervix(rng) -> Anatomy:
    probe = ProbeGeometry.sample_endocavity(rng)
    scene = Scene(Tissue(-3.0, atten=0.7, texture_db=4.5))
    # cervical length, Iams NEJM 1996: 35.2 ± 8.3 mm at 24 wk (§2.2)
    length = float(np.clip(rng.normal(35.2, 8.3), 15, 50))
    width = float(rng.uniform(20, 30))
    mirror = bool(rng.random() < 0.5)
    angle = math.radians(float(rng.uniform(10, 45)))
    # external os near the probe, canal running to the internal os deeper and to one side
    ex, ez = float(rng.uniform(-8, 8)), float(rng.uniform(6, 18))
    sign = -1 if mirror else 1
    ix, iz = ex + sign * length * math.cos(angle), ez + length * math.sin(angle)
    if rng.random() < 0.7:  # bladder anterior to the cervix
        scene.add(Ellipse(ix - sign * 18, iz - 22, float(rng.uniform(15, 30)), float(rng.uniform(8, 16)),
                          float(rng.uniform(-0.4, 0.4)), _wobble(rng, 0.08)), FLUID)
    # amniotic cavity beyond the internal os, with the lower uterine segment wall around it
    sac = Ellipse(ix + sign * 30, iz + 28, float(rng.uniform(40, 60)), float(rng.uniform(30, 45)),
                  float(rng.uniform(-0.5, 0.5)), _wobble(rng, 0.05))
    scene.add(Ellipse(sac.cx, sac.cz, sac.a + 8, sac.b + 8, sac.angle), _jitter(MYOMETRIUM, rng))
    scene.add(sac, FLUID)
    if rng.random() < 0.6:  # presenting fetal part in the cavity
        hx, hz = sac.cx + float(rng.uniform(-10, 10)), sac.cz + float(rng.uniform(5, 20))
        scene.add(EllipseRing(hx, hz, 35, 30, 2.0, float(rng.uniform(0, math.pi)), (-1.2, 1.2)), _jitter(SKULL, rng, 3))
    stroma = Capsule(ex, ez, ix, iz, width / 2, width / 2 * float(rng.uniform(0.8, 1.1)))
    scene.add(stroma, _jitter(Tissue(2.0, atten=0.7, texture_db=2.0), rng))
    # endocervical canal (§2.3): hypoechoic glandular zone around an echogenic mucosa line
    gland_w = float(rng.uniform(3.0, 5.5))
    scene.add(Capsule(ex, ez, ix, iz, gland_w), _jitter(Tissue(-7.0, atten=0.7, texture_db=2.0), rng))
    mucosa_w = float(rng.uniform(0.9, 1.6))
    scene.add(Capsule(ex, ez, ix, iz, mucosa_w), _jitter(Tissue(11.0, atten=0.7, specular=0.3, texture_db=1.5, angle_db=4.0), rng))
    # Nabothian cysts: small anechoic retention cysts in the stroma, common and harmless
    for _ in range(int(rng.integers(0, 4))):
        t = float(rng.uniform(0.15, 0.85))
        off = float(rng.uniform(0.35, 0.8)) * width / 2 * (1 if rng.random() < 0.5 else -1)
        px, pz = ex + t * (ix - ex) - off * math.sin(angle) * sign, ez + t * (iz - ez) + off * math.cos(angle)
        radius = float(rng.uniform(1.5, 5.0))
        scene.add(Ellipse(px, pz, radius, radius * float(rng.uniform(0.7, 1.0)), float(rng.uniform(0, math.pi))), FLUID)
    # external os lips and vaginal fornices near the probe face
    scene.add(Capsule(ex - sign * 5, ez - 5, ex + sign * 3, ez - 1, 1.5), _jitter(BRIGHT_LINE, rng, 3))
    scene.add(Ellipse(ex, ez, 3.0, 2.0), _jitter(Tissue(-10.0, atten=0.7), rng))
    return Anatomy(scene, probe, {"cervical_length_mm": length, "ga_weeks": float(rng.uniform(18, 30))})


def _build_other(rng) -> Anatomy:
    """Views without brain/abdomen/femur/thorax/cervix landmarks (spine, face, kidneys, cord, placenta, limbs)."""
    subtype = str(rng.choice(["spine-sagittal", "profile", "kidneys", "cord", "placenta", "hand-foot"]))
    ga = _sample_ga(rng)
    bio = _sample_biometry(rng, ga)
    size = {"spine-sagittal": bio["ac"] / 2.2, "profile": bio["hc"] / 3.2, "kidneys": bio["ac"] / math.pi,
            "cord": 50.0, "placenta": 80.0, "hand-foot": bio["fl"] * 1.2}[subtype]
    probe = ProbeGeometry.sample_convex(rng, _depth_for(rng, size))
    scene = Scene(MYOMETRIUM)
    cavity = _maternal_wall(rng, probe, scene)
    cx, cz = _place(rng, probe, cavity, size / 2)
    pose = Pose(cx, cz, float(rng.uniform(-0.5, 0.5)) + (math.pi if rng.random() < 0.5 else 0.0), bool(rng.random() < 0.5))
    _fetal_parts(rng, scene, probe, int(rng.integers(0, 3)), (cx, cz, size / 2), cavity)
    if subtype == "spine-sagittal":
        length = size
        scene.add(pose.ellipse(0, -6, length * 0.6, length * 0.22, 0.0, _wobble(rng, 0.05)), _jitter(FETAL_SOFT, rng))
        scene.add(pose.ring(0, -6, length * 0.6, length * 0.22, 1.0, phi_range=(0.3, 2.8)), _jitter(SKIN, rng, 3))
        n = int(length / 3.2)
        for i in range(n):
            u = -length / 2 + i * length / max(n - 1, 1)
            for row, rad in ((0.0, 1.0), (3.6, 0.9)):
                scene.add(pose.ellipse(u, row + 0.02 * u * u / length, rad * 1.2, rad), _jitter(BONE, rng, 3))
    elif subtype == "profile":
        r = size / 2
        scene.add(pose.ellipse(0, 0, r * 1.1, r, 0.0, _wobble(rng, 0.04)), _jitter(FETAL_SOFT, rng))
        scene.add(pose.ring(0, 0, r * 1.1, r, 1.0), _jitter(SKIN, rng, 3))
        for u, v, rr in ((r * 1.05, -0.1 * r, 0.16 * r), (r * 0.95, -0.45 * r, 0.1 * r), (r * 0.9, -0.65 * r, 0.1 * r)):
            scene.add(pose.ellipse(u, v, rr, rr * 0.8), _jitter(FETAL_SOFT, rng))  # nose, lips
        scene.add(pose.ring(0.1 * r, -0.2 * r, r * 0.8, r * 0.7, 1.5, phi_range=(-0.6, 0.4)), _jitter(BRIGHT_LINE, rng, 3))
        scene.add(pose.ellipse(0.55 * r, 0.2 * r, 0.1 * r, 0.08 * r), FLUID)  # orbit
    elif subtype == "kidneys":
        r = size / 2
        scene.add(pose.ellipse(0, 0, r * 1.2, r * 0.55, 0.0, _wobble(rng, 0.05)), _jitter(BOWEL, rng))
        scene.add(pose.ring(0, 0, r * 1.2, r * 0.55, 1.0), _jitter(SKIN, rng, 3))
        scene.add(pose.ellipse(0, 0, r * 0.55, r * 0.3), Tissue(-6.0, atten=0.6, texture_db=1.0))  # kidney cortex
        scene.add(pose.ellipse(0, 0, r * 0.35, r * 0.08), Tissue(8.0, atten=0.6, texture_db=2.0))  # renal sinus
        scene.add(pose.ellipse(0, 0, r * 0.12, r * 0.05), FLUID)  # pelvis
    elif subtype == "cord":
        for _ in range(int(rng.integers(3, 7))):
            u, v = float(rng.uniform(-size / 2, size / 2)), float(rng.uniform(-size / 3, size / 3))
            rr = float(rng.uniform(3, 6))
            scene.add(pose.ellipse(u, v, rr * 1.4, rr), _jitter(Tissue(-4.0, atten=0.5, texture_db=1.0), rng))
            for du in (-0.5, 0.5):
                scene.add(pose.ellipse(u + du * rr, v, rr * 0.35, rr * 0.35), BLOOD)
    elif subtype == "placenta":
        # a thick placenta on the anterior wall with venous lakes and the cord insertion
        thick = float(rng.uniform(25, 45))
        span = (-probe.half_fov * float(rng.uniform(0.6, 1.1)), probe.half_fov * float(rng.uniform(0.6, 1.1)))
        top = (cavity - 1.0, ((1.0, 3.0, float(rng.uniform(0, 6))),))
        bottom = (cavity + thick, ((float(rng.uniform(2, 6)), float(rng.uniform(2, 5)), float(rng.uniform(0, 6))),))
        scene.add(RadialBand(probe.radius_mm, top, bottom, span), _jitter(PLACENTA, rng))
        for _ in range(int(rng.integers(1, 4))):  # venous lakes
            th = float(rng.uniform(*span))
            d = cavity + thick * float(rng.uniform(0.3, 0.7))
            vx, vz = (probe.radius_mm + d) * math.sin(th), (probe.radius_mm + d) * math.cos(th) - probe.radius_mm
            scene.add(Ellipse(vx, vz, float(rng.uniform(3, 8)), float(rng.uniform(2, 4)), th + math.pi / 2), FLUID)
        th = float(rng.uniform(*span)) * 0.7
        d = cavity + thick
        cx0, cz0 = (probe.radius_mm + d) * math.sin(th), (probe.radius_mm + d) * math.cos(th) - probe.radius_mm
        scene.add(Capsule(cx0, cz0, cx0 + float(rng.uniform(-15, 15)), cz0 + float(rng.uniform(15, 30)), 5.0),
                  _jitter(Tissue(-4.0, atten=0.5, texture_db=1.0), rng))
    else:  # hand or foot: a soft-tissue paddle with small ossified phalanges/metatarsals
        r = size / 2
        scene.add(pose.ellipse(0, 0, r, r * 0.45, 0.0, _wobble(rng, 0.1)), _jitter(FETAL_SOFT, rng))
        scene.add(pose.ring(0, 0, r, r * 0.45, 1.0), _jitter(SKIN, rng, 3))
        for k in range(int(rng.integers(3, 6))):
            v = (k - 2) * 0.16 * r
            scene.add(pose.capsule(-0.2 * r, v, 0.25 * r, v * 1.2, 0.7), _jitter(BONE, rng, 4))
    return Anatomy(scene, probe, {"ga_weeks": ga, "subtype": subtype}, reverb_depth_mm=cavity)


def _build_intrapartum(rng, with_labels: bool = True) -> Anatomy:
    """Transperineal mid-sagittal view (§2.3, JNU-IFM): symphysis upper-left, fetal head lower-right."""
    L = JNU_LABELS if with_labels else {k: None for k in JNU_LABELS}
    ga = float(rng.uniform(37, 41))
    bio = _sample_biometry(rng, ga)
    ci = float(rng.uniform(0.74, 0.83))
    ofd = 2 * bio["hc"] / (math.pi * (1 + ci))
    bpd = ci * ofd
    probe = ProbeGeometry(float(rng.uniform(40, 60)), float(rng.uniform(70, 85)), float(rng.uniform(90, 130)),
                          float(rng.uniform(2.5, 4.0)), int(rng.integers(160, 257)))
    half_w, _, depth = probe.extent_mm
    background = Tissue(-4.0, atten=0.7, texture_db=3.5)
    sp_len, sp_w = float(rng.uniform(28, 40)), float(rng.uniform(9, 14))
    sp_angle = math.radians(float(rng.uniform(30, 50)))  # long axis slopes down to the right
    spx, spz = -half_w * float(rng.uniform(0.25, 0.4)), depth * float(rng.uniform(0.14, 0.24))
    apex = (spx + math.cos(sp_angle) * sp_len / 2, spz + math.sin(sp_angle) * sp_len / 2)  # inferior apex
    # angle of progression: the reference samples 90-160 deg (§2.2); a video starts at 95-135 and the
    # head descends from there, which keeps the head lower-right of the symphysis as in JNU-IFM
    aop0 = float(rng.uniform(95, 130))
    head_a, head_b = ofd / 2, bpd / 2
    head_rot = float(rng.uniform(-0.6, 0.6))
    gap = float(rng.uniform(20, 35))

    def scene_for(aop_deg: float) -> Scene:
        scene = Scene(background)
        scene.add(RadialBand(probe.radius_mm, (-5, ()), (1.2, ())), SKIN)
        scene.add(RadialBand(probe.radius_mm, (1.2, ()), (float(rng_layers[0]), ())), _jitter(FAT, layer_rng))
        # symphysis: echogenic rim, hypoechoic fibrocartilage inside
        scene.add(Ellipse(spx, spz, sp_len / 2, sp_w / 2, sp_angle), Tissue(-9.0, atten=0.9, texture_db=1.0), L["pubic_symphysis"])
        scene.add(EllipseRing(spx, spz, sp_len / 2 - 1.0, sp_w / 2 - 1.0, 2.0, sp_angle), SKULL)
        # tangent from the inferior apex at AoP from the symphysis axis (pointing back to its upper end)
        back = sp_angle + math.pi
        t_dir = back - math.radians(aop_deg)
        tx, tz = math.cos(t_dir), math.sin(t_dir)
        if tz < 0:  # keep the tangent heading into the body
            t_dir = back + math.radians(aop_deg)
            tx, tz = math.cos(t_dir), math.sin(t_dir)
        # the head lies on the side of the tangent away from the symphysis
        nx, nz = -tz, tx
        if nx * math.cos(back) + nz * math.sin(back) > 0:
            nx, nz = -nx, -nz
        rho = 0.5 * (head_a + head_b)
        hx = apex[0] + tx * gap + nx * rho
        hz = apex[1] + tz * gap + nz * rho
        scene.add(Ellipse(hx, hz, head_a, head_b, head_rot), _jitter(BRAIN, layer_rng), L["head"])
        skull_t = float(rng_layers[1])
        scene.add(EllipseRing(hx, hz, head_a - skull_t / 2, head_b - skull_t / 2, skull_t, head_rot), SKULL, L["head"])
        scene.add(Capsule(*Pose(hx, hz, head_rot).point(-head_a * 0.85, 0), *Pose(hx, hz, head_rot).point(head_a * 0.85, 0), 0.6),
                  BRIGHT_LINE, L["head"])
        return scene

    rng_layers = (float(rng.uniform(4, 12)), float(rng.uniform(2.5, 4.0)))
    layer_seed = int(rng.integers(0, 2**31))
    layer_rng = np.random.default_rng(layer_seed)

    def rebuild(aop_deg: float) -> Scene:
        nonlocal layer_rng
        layer_rng = np.random.default_rng(layer_seed)  # same tissue jitter in every frame
        return scene_for(aop_deg)

    scene = rebuild(aop0)
    return Anatomy(scene, probe, {"ga_weeks": ga, "aop_deg": aop0, "hc_mm": bio["hc"]}, rebuild=rebuild)


_BUILDERS = {
    "Other": _build_other,
    "Maternal cervix": _build_cervix,
    "Fetal abdomen": _build_abdomen,
    "Fetal brain": _build_brain,
    "Fetal femur": _build_femur,
    "Fetal thorax": _build_thorax,
    INTRAPARTUM: _build_intrapartum,
}
_LABELLED = {"Fetal abdomen": FASS_LABELS, INTRAPARTUM: JNU_LABELS}


def label_scheme(plane: str) -> dict[str, int] | None:
    """Segmentation label scheme of a plane (FASS for the abdomen, JNU-IFM for intrapartum), else None."""
    return _LABELLED.get(canonical_plane(plane))


# --------------------------------------------------------------------------------------
# Public rendering API
# --------------------------------------------------------------------------------------


@dataclass
class PlaneImage:
    """One rendered frame.

    Attributes:
        image: uint8 (H, W) B-mode display, 0 outside the fan.
        label: uint8 (H, W) index map in the plane's scheme (:func:`label_scheme`), or None.
        info: JSON-serialisable metadata (plane, probe, mm_per_px, apex, fan bbox, biometry, settings).
    """

    image: np.ndarray
    label: np.ndarray | None
    info: dict


def _json_value(value):
    if isinstance(value, (np.floating, float)):
        return float(value)
    if isinstance(value, (np.integer,)):
        return int(value)
    return value


def _label_map(scene: Scene, layout: FanLayout, fan: np.ndarray, theta_shift: float) -> np.ndarray:
    """Labels evaluated exactly at display pixels (no interpolation), zero outside the fan."""
    return np.where(fan, scene.label_map(layout, theta_shift), 0).astype(np.uint8)


def render_sequence(
    plane: str,
    rng: np.random.Generator,
    n_frames: int,
    shape: tuple[int, int] = (240, 320),
    fan_box: tuple[int, int, int, int] | None = None,
    with_label: bool = True,
    max_rock_lines: int = 6,
) -> list[PlaneImage]:
    """Render a cine loop of one anatomy with slight probe motion.

    The probe rocks about its apex by whole scan lines, which is exactly a shift of the
    beam angle, so the speckle moves with the tissue; the speckle also decorrelates slowly
    (out-of-plane motion). Display gain and dynamic range are set on the first frame and
    kept. In the intrapartum view the fetal head also descends: the angle of progression
    grows by 0.5-2 degrees per frame and the scene is re-simulated for each frame.

    Args:
        plane: one of :data:`PLANE_CLASSES`, :data:`INTRAPARTUM` or a short alias ("brain", ...).
        rng: the only source of randomness.
        n_frames: number of frames (1 = a still image).
        shape: display (H, W) in pixels.
        fan_box: (top, left, height, width) box the fan must fit in (default: whole display).
        with_label: compute label maps for planes with a scheme (abdomen: FASS, intrapartum: JNU).
        max_rock_lines: largest probe rocking, in scan lines.

    Returns:
        ``n_frames`` :class:`PlaneImage` objects.
    """
    plane = canonical_plane(plane)
    if n_frames < 1:
        raise ValueError(f"n_frames must be >= 1, got {n_frames}")
    if len(shape) != 2 or min(shape) < 32:
        raise ValueError(f"shape must be (H, W) with both sides >= 32 px, got {shape}")
    if max_rock_lines < 0:
        raise ValueError(f"max_rock_lines must be >= 0, got {max_rock_lines}")
    shape = (int(shape[0]), int(shape[1]))
    builder = _BUILDERS[plane]
    anatomy = builder(rng, with_labels=with_label) if plane in _LABELLED else builder(rng)
    layout = FanLayout.fit(anatomy.probe, shape, fan_box)
    pad = max_rock_lines if n_frames > 1 else 0
    grid = PolarGrid.for_layout(layout, pad=pad)
    params = ImagingParams.sample(rng)
    tgc = tgc_curve(grid, params, rng)
    texture = tissue_texture(rng, grid)
    converter = ScanConverter.build(layout, grid)
    scheme = _LABELLED.get(plane) if with_label else None
    n_real = 2 if n_frames > 1 else 1
    rock = float(rng.uniform(0.3, 1.0)) * max_rock_lines
    phase = float(rng.uniform(0, 2 * math.pi))
    decorrelation = float(rng.uniform(0.03, 0.08))  # rad of speckle mixing per frame
    aop_rate = float(rng.uniform(0.5, 2.0))
    aop0 = anatomy.info.get("aop_deg")
    noise = draw_speckle(rng, grid, n_real)
    acquisition = None
    frames = []
    smoothing_px = params.smoothing_mm / layout.mm_per_px
    fan_box_px = tuple(int(v) for v in _bbox(converter.fan))
    for k in range(n_frames):
        shift = 0
        if k > 0:
            shift = int(round(rock * (math.sin(phase + 2 * math.pi * k / max(n_frames, 4)) - math.sin(phase))))
            shift = int(np.clip(shift, -pad, pad))
        scene = anatomy.scene
        if anatomy.rebuild is not None and k > 0:
            scene = anatomy.rebuild(aop0 + aop_rate * k)
        if acquisition is None or anatomy.rebuild is not None:
            # the same speckle draw for every re-simulated frame: tissue keeps its speckle
            acquisition = acquire(scene, grid, params, noise, tgc, texture, anatomy.reverb_depth_mm)
        polar = envelope_db(acquisition, params, shift, decorrelation * k)
        image_db = converter(polar, fill=-300.0)
        if smoothing_px > 0.3:  # speckle reduction / persistence on the display, inside the fan's box
            r0, c0, r1, c1 = fan_box_px
            box = image_db[r0:r1 + 1, c0:c1 + 1]
            smoothed = ndimage.gaussian_filter(box, smoothing_px, mode="nearest", truncate=3.0)
            box[converter.fan[r0:r1 + 1, c0:c1 + 1]] = smoothed[converter.fan[r0:r1 + 1, c0:c1 + 1]]
        if k == 0:
            ref, dynamic_range = auto_optimise(image_db, converter.fan, params.target_mean, params.target_std)
        image = log_compress(image_db, converter.fan, dynamic_range, ref)
        label = _label_map(scene, layout, converter.fan, shift * grid.d_theta) if scheme is not None else None
        info = {
            "plane": plane,
            "frame": k,
            "probe": {"radius_mm": anatomy.probe.radius_mm, "fov_deg": anatomy.probe.fov_deg,
                      "depth_mm": anatomy.probe.depth_mm, "frequency_mhz": anatomy.probe.frequency_mhz,
                      "n_lines": anatomy.probe.n_lines},
            "mm_per_px": layout.mm_per_px,
            "apex_row": layout.apex_row,
            "apex_col": layout.apex_col,
            "rock_lines": shift,
            "dynamic_range_db": float(dynamic_range),
            "gain_ref_db": float(ref),
            "focus_depth_mm": params.focus_depth * anatomy.probe.depth_mm,
            **{key: _json_value(value) for key, value in anatomy.info.items()},
        }
        if aop0 is not None:
            info["aop_deg"] = float(aop0 + aop_rate * k)
        frames.append(PlaneImage(image, label, info))
    for frame in frames:
        frame.info["fan_bbox"] = list(fan_box_px)
    logger.debug("rendered %s: %d frame(s) %s, depth %.0f mm, %.3f mm/px, DR %.1f dB", plane, n_frames, shape,
                 anatomy.probe.depth_mm, layout.mm_per_px, dynamic_range)
    return frames


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return rows[0], cols[0], rows[-1], cols[-1]


def render_plane(
    plane: str,
    rng: np.random.Generator,
    shape: tuple[int, int] = (240, 320),
    fan_box: tuple[int, int, int, int] | None = None,
    with_label: bool = True,
) -> PlaneImage:
    """Render one synthetic B-mode image of ``plane`` (see :func:`render_sequence` for arguments).

    Returns:
        :class:`PlaneImage`: uint8 (H, W) image (0 outside the fan) and, for the abdomen
        (FASS scheme) and intrapartum (JNU scheme) planes, a uint8 label map; else None.
    """
    return render_sequence(plane, rng, 1, shape, fan_box, with_label)[0]
