"""The public rendering entry points: :func:`render_plane` and :func:`render_sequence` (cine loops)."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .acoustics import ImagingParams, PolarGrid, acquire, draw_speckle, envelope_db, tgc_curve, tissue_texture
from .classes import canonical_plane
from .display import ScanConverter, auto_optimise, log_compress
from .geometry import FanLayout
from .plane_scenes import BUILDERS, LABELLED
from .scene import Scene

logger = logging.getLogger(__name__)


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
    builder = BUILDERS[plane]
    anatomy = builder(rng, with_labels=with_label) if plane in LABELLED else builder(rng)
    layout = FanLayout.fit(anatomy.probe, shape, fan_box)
    pad = max_rock_lines if n_frames > 1 else 0
    grid = PolarGrid.for_layout(layout, pad=pad)
    params = ImagingParams.sample(rng)
    tgc = tgc_curve(grid, params, rng)
    texture = tissue_texture(rng, grid)
    converter = ScanConverter.build(layout, grid)
    scheme = LABELLED.get(plane) if with_label else None
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
            box = image_db[r0 : r1 + 1, c0 : c1 + 1]
            smoothed = ndimage.gaussian_filter(box, smoothing_px, mode="nearest", truncate=3.0)
            box[converter.fan[r0 : r1 + 1, c0 : c1 + 1]] = smoothed[converter.fan[r0 : r1 + 1, c0 : c1 + 1]]
        if k == 0:
            ref, dynamic_range = auto_optimise(image_db, converter.fan, params.target_mean, params.target_std)
        image = log_compress(image_db, converter.fan, dynamic_range, ref)
        label = _label_map(scene, layout, converter.fan, shift * grid.d_theta) if scheme is not None else None
        info = {
            "plane": plane,
            "frame": k,
            "probe": {
                "radius_mm": anatomy.probe.radius_mm,
                "fov_deg": anatomy.probe.fov_deg,
                "depth_mm": anatomy.probe.depth_mm,
                "frequency_mhz": anatomy.probe.frequency_mhz,
                "n_lines": anatomy.probe.n_lines,
            },
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
    logger.debug(
        "rendered %s: %d frame(s) %s, depth %.0f mm, %.3f mm/px, DR %.1f dB",
        plane,
        n_frames,
        shape,
        anatomy.probe.depth_mm,
        layout.mm_per_px,
        dynamic_range,
    )
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
