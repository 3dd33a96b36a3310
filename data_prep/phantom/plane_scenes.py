"""One scene builder per plane class, laid out as the ISUOG guidelines describe (docs/phantom.md, "Plane layouts").

Each builder draws the gestational age, biometry and probe from ``rng`` and returns an :class:`Anatomy`.
"""

from __future__ import annotations

import math

import numpy as np

from .anatomy import (
    Anatomy,
    Pose,
    bezier,
    depth_for,
    fetal_parts,
    jitter,
    maternal_wall,
    place,
    sample_biometry,
    sample_ga,
    wobble,
)
from .biometry import cardiac_circumference_mm, csp_width_mm
from .classes import FASS_LABELS, INTRAPARTUM, JNU_LABELS, canonical_plane
from .geometry import ProbeGeometry
from .scene import Scene
from .shapes import Capsule, Ellipse, EllipseRing, Intersection, RadialBand
from .tissues import (
    BLOOD,
    BONE,
    BOWEL,
    BRAIN,
    BRIGHT_LINE,
    CARTILAGE,
    FAT,
    FETAL_SOFT,
    FLUID,
    LIVER,
    LUNG,
    MUSCLE,
    MYOCARDIUM,
    MYOMETRIUM,
    PLACENTA,
    SKIN,
    SKULL,
    THALAMUS,
    Tissue,
)


def _build_brain(rng) -> Anatomy:
    ga = sample_ga(rng)
    bio = sample_biometry(rng, ga)
    ci = float(rng.uniform(0.74, 0.83))  # cephalic index BPD/OFD, normal 74-83 % (Hadlock, AJR 1981)
    ofd = 2 * bio["hc"] / (math.pi * (1 + ci))  # HC ≈ π(BPD+OFD)/2
    bpd = ci * ofd
    probe = ProbeGeometry.sample_convex(rng, depth_for(rng, ofd))
    scene = Scene(MYOMETRIUM)
    cavity = maternal_wall(rng, probe, scene)
    a, b = ofd / 2, bpd / 2
    cx, cz = place(rng, probe, cavity, a)
    pose = Pose(
        cx, cz, float(rng.uniform(-0.6, 0.6)) + (math.pi if rng.random() < 0.5 else 0.0), bool(rng.random() < 0.5)
    )
    fetal_parts(rng, scene, probe, int(rng.integers(0, 3)), (cx, cz, a), cavity)
    skull_t = float(np.clip(1.2 + 0.06 * ga + rng.normal(0, 0.3), 1.5, 4.0))
    scene.add(pose.ellipse(0, 0, a + skull_t / 2 + 3.0, b + skull_t / 2 + 3.0), jitter(FETAL_SOFT, rng))
    scene.add(pose.ring(0, 0, a + skull_t / 2 + 3.0, b + skull_t / 2 + 3.0, 1.0), jitter(SKIN, rng, 3))
    ia, ib = a - skull_t / 2, b - skull_t / 2
    scene.add(pose.ellipse(0, 0, ia, ib), jitter(BRAIN, rng))
    # sylvian fissures / insula: short bright curves in both hemispheres
    for side in (-1, 1):
        scene.add(
            pose.ring(-0.05 * ofd, side * 0.25 * ib, 0.25 * ia, 0.45 * ib, 1.0, phi_range=(side * 1.2, side * 2.4)),
            jitter(BRIGHT_LINE, rng, 4),
        )
    subtype = str(rng.choice(["trans-thalamic", "trans-ventricular", "trans-cerebellar"], p=[0.5, 0.25, 0.25]))
    # falx: bright midline along the OFD, anterior end at u = -a
    scene.add(pose.capsule(-ia * 0.95, 0, ia * 0.95, 0, 0.6), jitter(BRIGHT_LINE, rng, 2))
    csp_w = max(csp_width_mm(ga) + rng.normal(0, 0.6), 2.0)
    csp_u = -a + ofd / 3.0  # CSP interrupts the falx at ~1/3 of the OFD
    scene.add(pose.ellipse(csp_u, 0, csp_w * 1.2, csp_w / 2), FLUID)
    scene.add(pose.ring(csp_u, 0, csp_w * 1.2, csp_w / 2, 0.8), jitter(BRIGHT_LINE, rng, 3))
    th_u = -a + float(rng.uniform(0.45, 0.6)) * ofd  # thalami at 0.45-0.6 OFD
    for side in (-1, 1):
        scene.add(
            pose.ellipse(th_u, side * 0.14 * ib, 0.11 * ofd, 0.13 * ib, side * 0.3, wobble(rng, 0.08)),
            jitter(THALAMUS, rng),
        )
    scene.add(pose.capsule(th_u - 0.08 * ofd, 0, th_u + 0.08 * ofd, 0, 0.7), FLUID)
    if subtype == "trans-ventricular":
        for side in (-1, 1):
            scene.add(pose.ellipse(-a + 0.25 * ofd, side * 0.12 * ib, 0.06 * ofd, 0.05 * ib, side * 0.5), FLUID)
        atrium_u = -a + float(rng.uniform(0.7, 0.8)) * ofd
        side = 1 if rng.random() < 0.5 else -1
        scene.add(pose.ellipse(atrium_u, side * 0.35 * ib, 0.09 * ofd, 0.13 * ib, side * 0.4), FLUID)
        scene.add(
            pose.ellipse(atrium_u, side * 0.35 * ib, 0.07 * ofd, 0.10 * ib, side * 0.4, wobble(rng, 0.1)),
            Tissue(12.0, atten=0.6, texture_db=1.5),
        )
    elif subtype == "trans-cerebellar":
        tcd = float(ga + rng.normal(0, 1.5))  # transcerebellar diameter ≈ GA in mm
        cu = -a + float(rng.uniform(0.75, 0.85)) * ofd
        for side in (-1, 1):
            scene.add(
                pose.ellipse(cu, side * tcd * 0.27, tcd * 0.16, tcd * 0.26, 0.0, wobble(rng, 0.06)),
                jitter(THALAMUS, rng),
            )
        scene.add(pose.ellipse(cu, 0, tcd * 0.14, tcd * 0.08), Tissue(10.0, atten=0.6, texture_db=1.0))
        cm = 0.535 + 0.208 * ga  # cisterna magna depth in mm (Childs Nerv Syst 2013)
        scene.add(pose.ellipse(cu + tcd * 0.18 + cm / 2, 0, cm / 2, tcd * 0.3), FLUID)
    scene.add(pose.ring(0, 0, a, b, skull_t), jitter(SKULL, rng, 2))
    return Anatomy(
        scene,
        probe,
        {"ga_weeks": ga, "hc_mm": bio["hc"], "bpd_mm": bpd, "ofd_mm": ofd, "subtype": subtype},
        reverb_depth_mm=cavity,
    )


def _spine_axial(pose: Pose, scene: Scene, rng, r: float, v_body: float, label_aorta: int | None, aorta_r: float):
    """Vertebra in axial section: body + two posterior laminae (3 ossification centres), and the aorta."""
    scene.add(pose.ellipse(0, v_body - 0.12 * r, 0.22 * r, 0.16 * r), jitter(MUSCLE, rng))
    body_r = max(0.065 * r, 1.2)
    scene.add(pose.ellipse(0, v_body, body_r, body_r * 0.9), jitter(BONE, rng, 2))
    for side in (-1, 1):
        scene.add(
            pose.capsule(side * 0.07 * r, v_body - 0.13 * r, side * 0.12 * r, v_body - 0.22 * r, max(0.025 * r, 0.8)),
            jitter(BONE, rng, 2),
        )
    ax, av = 0.07 * r, v_body + body_r + aorta_r + 0.6
    scene.add(pose.ellipse(ax, av, aorta_r + 0.5, aorta_r + 0.5), jitter(BRIGHT_LINE, rng, 4))
    scene.add(pose.ellipse(ax, av, aorta_r, aorta_r), BLOOD, label_aorta)


def _trunk_section(rng, r: float) -> tuple[ProbeGeometry, Scene, float, Pose]:
    """Probe, maternal wall and a freely rotated pose for an axial section of the fetal trunk, radius ``r`` mm.

    Returns (probe, scene with the wall and other fetal parts painted, amniotic cavity depth in mm, pose).
    """
    probe = ProbeGeometry.sample_convex(rng, depth_for(rng, 2 * r))
    scene = Scene(MYOMETRIUM)
    cavity = maternal_wall(rng, probe, scene)
    cx, cz = place(rng, probe, cavity, r)
    pose = Pose(cx, cz, float(rng.uniform(0, 2 * math.pi)), bool(rng.random() < 0.5))
    fetal_parts(rng, scene, probe, int(rng.integers(0, 3)), (cx, cz, r), cavity)
    return probe, scene, cavity, pose


def _build_abdomen(rng, with_labels: bool = True) -> Anatomy:
    ga = sample_ga(rng)
    bio = sample_biometry(rng, ga)
    r = bio["ac"] / (2 * math.pi)
    probe, scene, cavity, pose = _trunk_section(rng, r)
    ell = float(rng.uniform(0.0, 0.08))
    a, b = r * (1 + ell), r * (1 - ell)
    L = FASS_LABELS if with_labels else {k: None for k in FASS_LABELS}
    scene.add(pose.ellipse(0, 0, a + 2.0, b + 2.0), jitter(MUSCLE, rng))
    scene.add(pose.ring(0, 0, a + 2.0, b + 2.0, 0.9), jitter(SKIN, rng, 3))
    scene.add(pose.ellipse(0, 0, a, b), jitter(BOWEL, rng))
    # local frame: +v anterior, +u fetal left; the liver fills most of the section
    liver_shape = Intersection(
        [
            pose.ellipse(-0.12 * r, 0.12 * r, 0.92 * r, 0.82 * r, 0.2, wobble(rng, 0.06)),
            pose.ellipse(0, 0, a * 0.97, b * 0.97),
        ]
    )
    scene.add(liver_shape, jitter(LIVER, rng, 1.0), L["liver"])
    # stomach in the left upper quadrant; circumference 20.4 ± 3.9 % of AC (Yonsei Med J 1998)
    stomach_d = bio["ac"] * float(np.clip(rng.normal(0.204, 0.039), 0.12, 0.3)) / math.pi
    su, sv = 0.42 * r, float(rng.uniform(0.0, 0.2)) * r
    scene.add(
        pose.ellipse(su, sv, stomach_d * 0.65, stomach_d * 0.42, float(rng.uniform(-0.6, 0.6)), wobble(rng, 0.12)),
        FLUID,
        L["stomach"],
    )
    # umbilical vein: J-shaped course from the anterior wall to the portal sinus
    vein_r = float(np.clip(0.035 * r + rng.normal(0, 0.2), 1.0, 3.0))
    pts = bezier((-0.02 * r, 0.78 * r), (-0.3 * r, 0.25 * r), (0.12 * r, 0.08 * r), n=9)
    scene.add(pose.tube([(u, v) for u, v in pts], vein_r), BLOOD, L["vein"])
    # short rib on each side with its shadow
    for side in (-1, 1):
        centre = side * float(rng.uniform(0.45, 0.75)) - math.pi / 2
        scene.add(
            pose.ring(0, 0, a * 0.93, b * 0.93, 1.6, phi_range=(centre - 0.22, centre + 0.22)), jitter(BONE, rng, 2)
        )
    _spine_axial(pose, scene, rng, r, -0.72 * r, L["artery"], float(np.clip(0.04 * r, 0.9, 2.5)))
    return Anatomy(
        scene, probe, {"ga_weeks": ga, "ac_mm": bio["ac"], "stomach_diameter_mm": stomach_d}, reverb_depth_mm=cavity
    )


def _build_femur(rng) -> Anatomy:
    ga = sample_ga(rng)
    bio = sample_biometry(rng, ga)
    fl = bio["fl"]
    probe = ProbeGeometry.sample_convex(rng, depth_for(rng, fl * 1.3))
    scene = Scene(MYOMETRIUM)
    cavity = maternal_wall(rng, probe, scene)
    cx, cz = place(rng, probe, cavity, fl * 0.7)
    # beam ideally 45-90 deg to the shaft: shaft within ±35 deg of horizontal
    pose = Pose(cx, cz, float(rng.uniform(-0.6, 0.6)), bool(rng.random() < 0.5))
    fetal_parts(rng, scene, probe, int(rng.integers(2, 6)), (cx, cz, fl * 0.7), cavity, size_range=(15, 40))
    # the thigh and, beyond the knee, the lower leg (soft tissue only)
    thigh_w = fl * float(rng.uniform(0.22, 0.32))
    scene.add(pose.ellipse(0, 0, fl * 0.68, thigh_w, 0.0, wobble(rng, 0.06)), jitter(FETAL_SOFT, rng))
    knee_angle = float(rng.uniform(0.6, 1.4)) * (1 if rng.random() < 0.5 else -1)
    ku, kv = fl * 0.62, 0.0
    lu, lv = ku + math.cos(knee_angle) * fl * 0.5, kv + math.sin(knee_angle) * fl * 0.5
    scene.add(pose.capsule(ku, kv, lu, lv, thigh_w * 0.8, thigh_w * 0.6), jitter(FETAL_SOFT, rng))
    scene.add(pose.ring(0, 0, fl * 0.68, thigh_w, 1.0), jitter(SKIN, rng, 3))
    shaft_r = float(np.clip(0.9 + 0.045 * ga + rng.normal(0, 0.2), 1.1, 3.0))
    # epiphyseal cartilage caps (hypoechoic); distal ossification centre from ~32 wk
    for end in (-1, 1):
        scene.add(pose.ellipse(end * (fl / 2 + shaft_r * 1.4), 0, shaft_r * 1.8, shaft_r * 2.0), jitter(CARTILAGE, rng))
    if ga >= 32:
        scene.add(pose.ellipse(fl / 2 + shaft_r * 1.4, 0, shaft_r * 0.7, shaft_r * 0.7), jitter(BONE, rng, 2))
    curvature = float(rng.uniform(-0.03, 0.03)) * fl
    pts = bezier((-fl / 2, 0), (0, curvature), (fl / 2, 0), n=6)
    scene.add(pose.tube(pts, shaft_r), jitter(BONE, rng, 2))
    for end in (-1, 1):  # metaphyseal flare
        scene.add(
            pose.capsule(end * fl / 2, 0, end * (fl / 2 - 0.12 * fl), 0, shaft_r * 1.25, shaft_r), jitter(BONE, rng, 2)
        )
    return Anatomy(scene, probe, {"ga_weeks": ga, "fl_mm": fl}, reverb_depth_mm=cavity)


def _build_thorax(rng) -> Anatomy:
    ga = sample_ga(rng)
    bio = sample_biometry(rng, ga)
    r = 0.89 * bio["ac"] / (2 * math.pi)  # thoracic circumference / AC = 0.89 (Chitkara, AJOG 1987)
    probe, scene, cavity, pose = _trunk_section(rng, r)
    scene.add(pose.ellipse(0, 0, r + 2.0, r + 2.0), jitter(MUSCLE, rng))
    scene.add(pose.ring(0, 0, r + 2.0, r + 2.0, 0.9), jitter(SKIN, rng, 3))
    scene.add(pose.ellipse(0, 0, r, r), jitter(LUNG, rng))
    # heart: ~1/3 of the thorax, mostly in the left chest, axis 45 ± 20 deg to the left (ISUOG 2013)
    cc = cardiac_circumference_mm(ga) * float(rng.uniform(0.92, 1.08))
    hr = cc / (2 * math.pi)
    axis = math.pi / 2 - math.radians(float(rng.normal(45, 12)))  # from the +u (left) axis
    hu, hv = 0.15 * r, 0.12 * r
    ca, sa = math.cos(axis), math.sin(axis)

    def heart_point(p, q):  # p along the base->apex axis, q across
        return hu + p * ca - q * sa, hv + p * sa + q * ca

    scene.add(pose.ellipse(hu, hv, hr * 1.12 + 1.0, hr * 0.9 + 1.0, axis), jitter(BRIGHT_LINE, rng, 3))  # pericardium
    scene.add(pose.ellipse(hu, hv, hr * 1.12, hr * 0.9, axis), jitter(MYOCARDIUM, rng))
    wall = float(np.clip(0.06 * hr, 0.8, 2.0))
    # four chambers: ventricles towards the apex, atria at the base, split by the septum
    # (along the axis) and the AV valve plane (across it); the crux is where they meet
    chambers = (
        (0.36, 0.45, 0.56, 0.42),
        (0.36, -0.45, 0.56, 0.42),
        (-0.52, 0.45, 0.38, 0.40),
        (-0.52, -0.45, 0.38, 0.40),
    )
    for p_c, q_c, pa, qa in chambers:
        u, v = heart_point(p_c * hr, q_c * hr)
        scene.add(pose.ellipse(u, v, pa * hr - wall / 2, qa * hr - wall / 2, axis, wobble(rng, 0.05)), BLOOD)
    u0, v0 = heart_point(-0.06 * hr, -0.8 * hr)
    u1, v1 = heart_point(-0.06 * hr, 0.8 * hr)
    scene.add(pose.capsule(u0, v0, u1, v1, 0.4), Tissue(8.0, atten=0.52, texture_db=1.0))
    u0, v0 = heart_point(-0.9 * hr, 0.0)
    u1, v1 = heart_point(0.85 * hr, 0.0)
    scene.add(pose.capsule(u0, v0, u1, v1, wall / 2), jitter(MYOCARDIUM, rng))
    # one complete rib on each side
    for side in (-1, 1):
        centre = -math.pi / 2 + side * float(rng.uniform(0.9, 1.2))
        scene.add(
            pose.ring(0, 0, r * 0.97, r * 0.97, 1.8, phi_range=(centre - 0.6, centre + 0.6)), jitter(BONE, rng, 2)
        )
    _spine_axial(pose, scene, rng, r, -0.74 * r, None, float(np.clip(0.045 * r, 0.9, 2.5)))
    return Anatomy(
        scene,
        probe,
        {"ga_weeks": ga, "thoracic_circumference_mm": 2 * math.pi * r, "cardiac_circumference_mm": cc},
        reverb_depth_mm=cavity,
    )


def _build_cervix(rng) -> Anatomy:
    probe = ProbeGeometry.sample_endocavity(rng)
    scene = Scene(Tissue(-3.0, atten=0.7, texture_db=4.5))
    # cervical length, Iams NEJM 1996: 35.2 ± 8.3 mm at 24 wk
    length = float(np.clip(rng.normal(35.2, 8.3), 15, 50))
    width = float(rng.uniform(20, 30))
    mirror = bool(rng.random() < 0.5)
    angle = math.radians(float(rng.uniform(10, 45)))
    # external os near the probe, canal running to the internal os deeper and to one side
    ex, ez = float(rng.uniform(-8, 8)), float(rng.uniform(6, 18))
    sign = -1 if mirror else 1
    ix, iz = ex + sign * length * math.cos(angle), ez + length * math.sin(angle)
    if rng.random() < 0.7:  # bladder anterior to the cervix
        scene.add(
            Ellipse(
                ix - sign * 18,
                iz - 22,
                float(rng.uniform(15, 30)),
                float(rng.uniform(8, 16)),
                float(rng.uniform(-0.4, 0.4)),
                wobble(rng, 0.08),
            ),
            FLUID,
        )
    # amniotic cavity beyond the internal os, with the lower uterine segment wall around it
    sac = Ellipse(
        ix + sign * 30,
        iz + 28,
        float(rng.uniform(40, 60)),
        float(rng.uniform(30, 45)),
        float(rng.uniform(-0.5, 0.5)),
        wobble(rng, 0.05),
    )
    scene.add(Ellipse(sac.cx, sac.cz, sac.a + 8, sac.b + 8, sac.angle), jitter(MYOMETRIUM, rng))
    scene.add(sac, FLUID)
    if rng.random() < 0.6:  # presenting fetal part in the cavity
        hx, hz = sac.cx + float(rng.uniform(-10, 10)), sac.cz + float(rng.uniform(5, 20))
        scene.add(EllipseRing(hx, hz, 35, 30, 2.0, float(rng.uniform(0, math.pi)), (-1.2, 1.2)), jitter(SKULL, rng, 3))
    stroma = Capsule(ex, ez, ix, iz, width / 2, width / 2 * float(rng.uniform(0.8, 1.1)))
    scene.add(stroma, jitter(Tissue(2.0, atten=0.7, texture_db=2.0), rng))
    # endocervical canal: hypoechoic glandular zone around an echogenic mucosa line
    gland_w = float(rng.uniform(3.0, 5.5))
    scene.add(Capsule(ex, ez, ix, iz, gland_w), jitter(Tissue(-7.0, atten=0.7, texture_db=2.0), rng))
    mucosa_w = float(rng.uniform(0.9, 1.6))
    scene.add(
        Capsule(ex, ez, ix, iz, mucosa_w),
        jitter(Tissue(11.0, atten=0.7, specular=0.3, texture_db=1.5, angle_db=4.0), rng),
    )
    # Nabothian cysts: small anechoic retention cysts in the stroma, common and harmless
    for _ in range(int(rng.integers(0, 4))):
        t = float(rng.uniform(0.15, 0.85))
        off = float(rng.uniform(0.35, 0.8)) * width / 2 * (1 if rng.random() < 0.5 else -1)
        px, pz = ex + t * (ix - ex) - off * math.sin(angle) * sign, ez + t * (iz - ez) + off * math.cos(angle)
        radius = float(rng.uniform(1.5, 5.0))
        scene.add(Ellipse(px, pz, radius, radius * float(rng.uniform(0.7, 1.0)), float(rng.uniform(0, math.pi))), FLUID)
    # external os lips and vaginal fornices near the probe face
    scene.add(Capsule(ex - sign * 5, ez - 5, ex + sign * 3, ez - 1, 1.5), jitter(BRIGHT_LINE, rng, 3))
    scene.add(Ellipse(ex, ez, 3.0, 2.0), jitter(Tissue(-10.0, atten=0.7), rng))
    return Anatomy(scene, probe, {"cervical_length_mm": length, "ga_weeks": float(rng.uniform(18, 30))})


def _build_other(rng) -> Anatomy:
    """Views without brain/abdomen/femur/thorax/cervix landmarks (spine, face, kidneys, cord, placenta, limbs)."""
    subtype = str(rng.choice(["spine-sagittal", "profile", "kidneys", "cord", "placenta", "hand-foot"]))
    ga = sample_ga(rng)
    bio = sample_biometry(rng, ga)
    size = {
        "spine-sagittal": bio["ac"] / 2.2,
        "profile": bio["hc"] / 3.2,
        "kidneys": bio["ac"] / math.pi,
        "cord": 50.0,
        "placenta": 80.0,
        "hand-foot": bio["fl"] * 1.2,
    }[subtype]
    probe = ProbeGeometry.sample_convex(rng, depth_for(rng, size))
    scene = Scene(MYOMETRIUM)
    cavity = maternal_wall(rng, probe, scene)
    cx, cz = place(rng, probe, cavity, size / 2)
    pose = Pose(
        cx, cz, float(rng.uniform(-0.5, 0.5)) + (math.pi if rng.random() < 0.5 else 0.0), bool(rng.random() < 0.5)
    )
    fetal_parts(rng, scene, probe, int(rng.integers(0, 3)), (cx, cz, size / 2), cavity)
    if subtype == "spine-sagittal":
        length = size
        scene.add(pose.ellipse(0, -6, length * 0.6, length * 0.22, 0.0, wobble(rng, 0.05)), jitter(FETAL_SOFT, rng))
        scene.add(pose.ring(0, -6, length * 0.6, length * 0.22, 1.0, phi_range=(0.3, 2.8)), jitter(SKIN, rng, 3))
        n = int(length / 3.2)
        for i in range(n):
            u = -length / 2 + i * length / max(n - 1, 1)
            for row, rad in ((0.0, 1.0), (3.6, 0.9)):
                scene.add(pose.ellipse(u, row + 0.02 * u * u / length, rad * 1.2, rad), jitter(BONE, rng, 3))
    elif subtype == "profile":
        r = size / 2
        scene.add(pose.ellipse(0, 0, r * 1.1, r, 0.0, wobble(rng, 0.04)), jitter(FETAL_SOFT, rng))
        scene.add(pose.ring(0, 0, r * 1.1, r, 1.0), jitter(SKIN, rng, 3))
        for u, v, rr in ((r * 1.05, -0.1 * r, 0.16 * r), (r * 0.95, -0.45 * r, 0.1 * r), (r * 0.9, -0.65 * r, 0.1 * r)):
            scene.add(pose.ellipse(u, v, rr, rr * 0.8), jitter(FETAL_SOFT, rng))  # nose, lips
        scene.add(
            pose.ring(0.1 * r, -0.2 * r, r * 0.8, r * 0.7, 1.5, phi_range=(-0.6, 0.4)), jitter(BRIGHT_LINE, rng, 3)
        )
        scene.add(pose.ellipse(0.55 * r, 0.2 * r, 0.1 * r, 0.08 * r), FLUID)  # orbit
    elif subtype == "kidneys":
        r = size / 2
        scene.add(pose.ellipse(0, 0, r * 1.2, r * 0.55, 0.0, wobble(rng, 0.05)), jitter(BOWEL, rng))
        scene.add(pose.ring(0, 0, r * 1.2, r * 0.55, 1.0), jitter(SKIN, rng, 3))
        scene.add(pose.ellipse(0, 0, r * 0.55, r * 0.3), Tissue(-6.0, atten=0.6, texture_db=1.0))  # kidney cortex
        scene.add(pose.ellipse(0, 0, r * 0.35, r * 0.08), Tissue(8.0, atten=0.6, texture_db=2.0))  # renal sinus
        scene.add(pose.ellipse(0, 0, r * 0.12, r * 0.05), FLUID)  # pelvis
    elif subtype == "cord":
        for _ in range(int(rng.integers(3, 7))):
            u, v = float(rng.uniform(-size / 2, size / 2)), float(rng.uniform(-size / 3, size / 3))
            rr = float(rng.uniform(3, 6))
            scene.add(pose.ellipse(u, v, rr * 1.4, rr), jitter(Tissue(-4.0, atten=0.5, texture_db=1.0), rng))
            for du in (-0.5, 0.5):
                scene.add(pose.ellipse(u + du * rr, v, rr * 0.35, rr * 0.35), BLOOD)
    elif subtype == "placenta":
        # a thick placenta on the anterior wall with venous lakes and the cord insertion
        thick = float(rng.uniform(25, 45))
        span = (-probe.half_fov * float(rng.uniform(0.6, 1.1)), probe.half_fov * float(rng.uniform(0.6, 1.1)))
        top = (cavity - 1.0, ((1.0, 3.0, float(rng.uniform(0, 6))),))
        bottom = (cavity + thick, ((float(rng.uniform(2, 6)), float(rng.uniform(2, 5)), float(rng.uniform(0, 6))),))
        scene.add(RadialBand(probe.radius_mm, top, bottom, span), jitter(PLACENTA, rng))
        for _ in range(int(rng.integers(1, 4))):  # venous lakes
            th = float(rng.uniform(*span))
            d = cavity + thick * float(rng.uniform(0.3, 0.7))
            vx, vz = (probe.radius_mm + d) * math.sin(th), (probe.radius_mm + d) * math.cos(th) - probe.radius_mm
            scene.add(Ellipse(vx, vz, float(rng.uniform(3, 8)), float(rng.uniform(2, 4)), th + math.pi / 2), FLUID)
        th = float(rng.uniform(*span)) * 0.7
        d = cavity + thick
        cx0, cz0 = (probe.radius_mm + d) * math.sin(th), (probe.radius_mm + d) * math.cos(th) - probe.radius_mm
        scene.add(
            Capsule(cx0, cz0, cx0 + float(rng.uniform(-15, 15)), cz0 + float(rng.uniform(15, 30)), 5.0),
            jitter(Tissue(-4.0, atten=0.5, texture_db=1.0), rng),
        )
    else:  # hand or foot: a soft-tissue paddle with small ossified phalanges/metatarsals
        r = size / 2
        scene.add(pose.ellipse(0, 0, r, r * 0.45, 0.0, wobble(rng, 0.1)), jitter(FETAL_SOFT, rng))
        scene.add(pose.ring(0, 0, r, r * 0.45, 1.0), jitter(SKIN, rng, 3))
        for k in range(int(rng.integers(3, 6))):
            v = (k - 2) * 0.16 * r
            scene.add(pose.capsule(-0.2 * r, v, 0.25 * r, v * 1.2, 0.7), jitter(BONE, rng, 4))
    return Anatomy(scene, probe, {"ga_weeks": ga, "subtype": subtype}, reverb_depth_mm=cavity)


def _build_intrapartum(rng, with_labels: bool = True) -> Anatomy:
    """Transperineal mid-sagittal view (ISUOG 2018, JNU-IFM): symphysis upper-left, fetal head lower-right."""
    L = JNU_LABELS if with_labels else {k: None for k in JNU_LABELS}
    ga = float(rng.uniform(37, 41))
    bio = sample_biometry(rng, ga)
    ci = float(rng.uniform(0.74, 0.83))
    ofd = 2 * bio["hc"] / (math.pi * (1 + ci))
    bpd = ci * ofd
    probe = ProbeGeometry(
        float(rng.uniform(40, 60)),
        float(rng.uniform(70, 85)),
        float(rng.uniform(90, 130)),
        float(rng.uniform(2.5, 4.0)),
        int(rng.integers(160, 257)),
    )
    half_w, _, depth = probe.extent_mm
    background = Tissue(-4.0, atten=0.7, texture_db=3.5)
    sp_len, sp_w = float(rng.uniform(28, 40)), float(rng.uniform(9, 14))
    sp_angle = math.radians(float(rng.uniform(30, 50)))  # long axis slopes down to the right
    spx, spz = -half_w * float(rng.uniform(0.25, 0.4)), depth * float(rng.uniform(0.14, 0.24))
    apex = (spx + math.cos(sp_angle) * sp_len / 2, spz + math.sin(sp_angle) * sp_len / 2)  # inferior apex
    # angle of progression: 90-160 deg overall (120+ goes with easy delivery); a video starts at 95-135 and the
    # head descends from there, which keeps the head lower-right of the symphysis as in JNU-IFM
    aop0 = float(rng.uniform(95, 130))
    head_a, head_b = ofd / 2, bpd / 2
    head_rot = float(rng.uniform(-0.6, 0.6))
    gap = float(rng.uniform(20, 35))

    def scene_for(aop_deg: float) -> Scene:
        scene = Scene(background)
        scene.add(RadialBand(probe.radius_mm, (-5, ()), (1.2, ())), SKIN)
        scene.add(RadialBand(probe.radius_mm, (1.2, ()), (float(rng_layers[0]), ())), jitter(FAT, layer_rng))
        # symphysis: echogenic rim, hypoechoic fibrocartilage inside
        scene.add(
            Ellipse(spx, spz, sp_len / 2, sp_w / 2, sp_angle),
            Tissue(-9.0, atten=0.9, texture_db=1.0),
            L["pubic_symphysis"],
        )
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
        scene.add(Ellipse(hx, hz, head_a, head_b, head_rot), jitter(BRAIN, layer_rng), L["head"])
        skull_t = float(rng_layers[1])
        scene.add(EllipseRing(hx, hz, head_a - skull_t / 2, head_b - skull_t / 2, skull_t, head_rot), SKULL, L["head"])
        scene.add(
            Capsule(
                *Pose(hx, hz, head_rot).point(-head_a * 0.85, 0), *Pose(hx, hz, head_rot).point(head_a * 0.85, 0), 0.6
            ),
            BRIGHT_LINE,
            L["head"],
        )
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


BUILDERS = {
    "Other": _build_other,
    "Maternal cervix": _build_cervix,
    "Fetal abdomen": _build_abdomen,
    "Fetal brain": _build_brain,
    "Fetal femur": _build_femur,
    "Fetal thorax": _build_thorax,
    INTRAPARTUM: _build_intrapartum,
}
LABELLED = {"Fetal abdomen": FASS_LABELS, INTRAPARTUM: JNU_LABELS}


def label_scheme(plane: str) -> dict[str, int] | None:
    """Segmentation label scheme of a plane (FASS for the abdomen, JNU-IFM for intrapartum), else None."""
    return LABELLED.get(canonical_plane(plane))
