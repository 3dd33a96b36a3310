"""Building blocks shared by the plane scenes: local anatomical frames, the maternal wall, fetal context."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from .biometry import intergrowth_biometry
from .geometry import ProbeGeometry
from .scene import Scene
from .shapes import Capsule, Ellipse, EllipseRing, RadialBand, Tube
from .tissues import BRIGHT_LINE, FAT, FETAL_SOFT, FLUID, MUSCLE, MYOMETRIUM, PLACENTA, SKIN, Tissue


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


def wobble(rng: np.random.Generator, amount: float, orders=(2, 3, 4)) -> tuple:
    return tuple((k, float(rng.uniform(-amount, amount) / k), float(rng.uniform(0, 2 * math.pi))) for k in orders)


def jitter(tissue: Tissue, rng: np.random.Generator, db: float = 1.5) -> Tissue:
    return replace(tissue, echo_db=tissue.echo_db + float(rng.uniform(-db, db)))


def bezier(p0, p1, p2, n=8):
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


def sample_ga(rng, lo=20.0, hi=36.0) -> float:
    return float(rng.uniform(lo, hi))


def sample_biometry(rng, ga) -> dict:
    return intergrowth_biometry(ga, float(rng.normal(0, 1)), rng.normal(0, 0.4, size=4))


def maternal_wall(rng: np.random.Generator, probe: ProbeGeometry, scene: Scene, far_wall: bool = True) -> float:
    """Paint skin, fat, fascia, rectus, myometrium (parallel to the probe face), amniotic fluid and the
    far uterine wall. Returns the depth (mm) where the amniotic cavity starts.
    """
    R = probe.radius_mm

    def profile(depth, amp=1.5):
        return (
            depth,
            tuple((float(rng.uniform(0, amp)), float(rng.uniform(1, 6)), float(rng.uniform(0, 6.3))) for _ in range(2)),
        )

    d = 0.0
    fat = float(rng.uniform(3, 16))
    muscle = float(rng.uniform(4, 10))
    myo = float(rng.uniform(4, 10))
    scene.add(RadialBand(R, profile(-5, 0), profile(1.2, 0.2)), SKIN)
    d = 1.2
    scene.add(RadialBand(R, profile(d, 0.2), profile(d + fat)), jitter(FAT, rng))
    d += fat
    scene.add(RadialBand(R, profile(d), profile(d + 1.0)), jitter(BRIGHT_LINE, rng, 3))
    scene.add(RadialBand(R, profile(d + 1.0), profile(d + muscle)), jitter(MUSCLE, rng))
    d += muscle
    scene.add(RadialBand(R, profile(d), profile(d + 0.8)), jitter(BRIGHT_LINE, rng, 3))
    scene.add(RadialBand(R, profile(d + 0.8), profile(d + myo)), jitter(MYOMETRIUM, rng))
    d += myo
    cavity_top = d
    far = probe.depth_mm * float(rng.uniform(0.82, 1.15)) if far_wall else 1e6
    scene.add(RadialBand(R, profile(d, 1.0), profile(far, 6.0)), FLUID)
    if far < probe.depth_mm:
        scene.add(
            RadialBand(R, profile(far, 6.0), profile(far + float(rng.uniform(6, 12)), 4.0)), jitter(MYOMETRIUM, rng)
        )
    # placenta (anterior or posterior), common to all planes so it is no class cue
    placement = rng.choice(["none", "anterior", "posterior"], p=[0.35, 0.35, 0.30])
    if placement != "none":
        thick = float(rng.uniform(15, 35))
        lo = float(rng.uniform(-probe.half_fov, 0.2))
        span = (lo, lo + float(rng.uniform(0.5, 1.6)))
        start = cavity_top if placement == "anterior" else min(far, probe.depth_mm) - thick
        scene.add(RadialBand(R, profile(start, 1.0), profile(start + thick, 3.0), span), jitter(PLACENTA, rng))
        scene.add(
            RadialBand(
                R,
                profile(start + (thick if placement == "anterior" else 0) - 0.7, 0.5),
                profile(start + (thick if placement == "anterior" else 0) + 0.7, 0.5),
                span,
            ),
            jitter(BRIGHT_LINE, rng, 4),
        )
    return cavity_top


def fetal_parts(
    rng,
    scene: Scene,
    probe: ProbeGeometry,
    n: int,
    avoid: tuple[float, float, float] | None,
    cavity_top: float,
    size_range: tuple[float, float] = (12, 38),
):
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
        shape = Ellipse(cx, cz, size, size * float(rng.uniform(0.4, 0.85)), angle, wobble(rng, 0.12, (2, 3, 4)))
        scene.add(shape, jitter(FETAL_SOFT, rng, 2.5))
        # a little internal structure: hypo- and hyperechoic patches
        for _k in range(int(rng.integers(0, 3))):
            u, v = rng.uniform(-0.5, 0.5, size=2)
            pose = Pose(cx, cz, angle)
            tissue = Tissue(float(rng.choice([-8.0, -4.0, 4.0])), atten=0.6, texture_db=2.0)
            scene.add(
                pose.ellipse(
                    u * shape.a,
                    v * shape.b,
                    shape.a * float(rng.uniform(0.1, 0.3)),
                    shape.b * float(rng.uniform(0.1, 0.3)),
                    0.0,
                    wobble(rng, 0.2),
                ),
                tissue,
            )


def place(rng, probe: ProbeGeometry, cavity_top: float, extent: float) -> tuple[float, float]:
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


def depth_for(rng, extent_mm: float, lo=70.0, hi=200.0) -> float:
    """Depth so the structure fills a large share of the sector.

    Abdominal scans use 10-20 cm; biometry planes are magnified so the structure fills most
    of the screen (ISUOG biometry guideline 2019; docs/phantom.md), which on a
    sector display means reducing the depth, so the lower bound here is 7 cm.
    """
    return float(np.clip(extent_mm * rng.uniform(1.2, 1.9) + 15.0, lo, hi))
