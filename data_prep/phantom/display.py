"""From polar echo field to display pixels: scan conversion, log compression, auto gain and dynamic range."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .acoustics import PolarGrid
from .geometry import FanLayout


@dataclass
class ScanConverter:
    """Precomputed inverse mapping from display pixels to polar samples (docs/phantom.md, "Scan conversion").

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
    def build(layout: FanLayout, grid: PolarGrid) -> ScanConverter:
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
    """I = 255 * clip((L - ref + DR) / DR, 0, 1) inside the fan, 0 outside; uint8 (H, W)."""
    if dynamic_range_db <= 0:
        raise ValueError(f"dynamic range must be positive, got {dynamic_range_db}")
    grey = np.float32(255.0) * np.clip(
        (image_db - np.float32(ref_db - dynamic_range_db)) / np.float32(dynamic_range_db), 0.0, 1.0
    )
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
    plane information. The DR search range is wider than the clinical 50-60 dB because here
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
