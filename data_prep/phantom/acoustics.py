"""Echo formation on the polar grid: speckle, attenuation, time-gain compensation and the point-spread function.

Follows the convolution speckle model and the per-ray attenuation described in docs/phantom.md ("Speckle",
"Attenuation, time-gain compensation and artifacts").
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .geometry import FanLayout, ProbeGeometry
from .scene import Scene


@dataclass(frozen=True)
class ImagingParams:
    """Per-image system settings (docs/phantom.md, "Speckle" and "Attenuation").

    Attributes:
        target_mean, target_std: the whole-frame grey mean and std that the auto-optimised
            gain and dynamic range aim for (:func:`auto_optimise`); drawn independently of the anatomy.
        pulse_cycles: transmit pulse length in cycles; axial cell = 0.77 * cycles / f mm
            (half the spatial pulse length: 0.45-0.65 mm at 3.5 MHz with 2-3 cycles).
        lateral_sigma_lines: lateral PSF sigma in scan-line spacings. Line spacing grows with
            depth, so the lateral FWHM goes from about 1-2 mm at 10 cm to 2.5-4 mm at 20 cm
            (clinically 0.8-1.5 mm at focus, 2-3 mm deep or off focus), with a lateral:axial grain
            ratio of about 2-4.
        tgc_residual_db_per_cm: TGC error slope (±0.2 dB/cm).
        tgc_wiggle_db: amplitude of the smooth slider-shaped TGC curve error.
        noise_floor_db: receiver noise relative to a parenchyma echo from the maximum depth (dB).
        tgc_follow: how much of the scene's actual median loss the TGC sliders follow (0..1).
        interface_db: level of a strong specular interface relative to parenchyma (dB).
        focus_depth, focus_gain_db: transmit focus as a fraction of depth and its brightening (dB).
        edge_loss_db: darkening at the sector edges from element directivity (dB).
        reverb_db: level of the first reverberation copy of the near-field wall (dB; each bounce 6-20 dB weaker).
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
    def sample(rng: np.random.Generator) -> ImagingParams:
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
    def for_layout(layout: FanLayout, pad: int = 0) -> PolarGrid:
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


def draw_speckle(
    rng: np.random.Generator, grid: PolarGrid, n_realisations: int = 1
) -> list[tuple[np.ndarray, np.ndarray]]:
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
        part = _bilinear(
            part, np.arange(n_r, dtype=np.float32) / factor[0], np.arange(n_lines, dtype=np.float32) / factor[1]
        )
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
    """Form the received echo field of ``scene`` on ``grid`` (convolution speckle model, per-ray attenuation).

    * backscatter: echo level (blurred over ~1 resolution cell so boundaries soften) plus
      tissue texture; interfaces facing the beam add a coherent echo proportional to the
      echo-level step along the ray (reflection is strongest at normal incidence);
    * reverberation: weaker copies of the near-field wall at multiples of its depth;
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
    axial_fwhm_mm = 0.77 * params.pulse_cycles / probe.frequency_mhz  # half the spatial pulse length
    sigma_axial = max(axial_fwhm_mm / 2.355 / grid.dr_mm, 0.6)
    sigma_lateral = params.lateral_sigma_lines
    level_db = ndimage.gaussian_filter(
        props.echo_db, (max(2.0 * sigma_axial, 0.7 / grid.dr_mm), 1.0), mode="nearest", truncate=2.5
    )
    level_db += props.texture_db * texture
    step = max(1, int(round(0.8 / grid.dr_mm)))
    jump = np.zeros_like(level_db)
    jump[step:-step] = np.abs(level_db[2 * step :] - level_db[: -2 * step])
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
        blurred.real = ndimage.gaussian_filter(
            received.real, (sigma_axial, sigma_lateral), mode="nearest", truncate=3.0
        )
        blurred.imag = ndimage.gaussian_filter(
            received.imag, (sigma_axial, sigma_lateral), mode="nearest", truncate=3.0
        )
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
    field_ = acq.fields[0][:, lo : lo + n_lines]
    if mix and len(acq.fields) > 1:
        field_ = np.float32(math.cos(mix)) * field_ + np.float32(math.sin(mix)) * acq.fields[1][:, lo : lo + n_lines]
    theta = grid.theta[grid.pad : grid.pad + n_lines]
    edge_db = -params.edge_loss_db * (theta / grid.probe.half_fov) ** 4
    display_db = acq.gain_db[:, None] + edge_db[None, :].astype(np.float32)
    return (20.0 * np.log10(np.abs(field_) + np.float32(1e-6)) + display_db).astype(np.float32)


def tgc_curve(grid: PolarGrid, params: ImagingParams, rng: np.random.Generator) -> np.ndarray:
    """TGC in dB per depth sample: nominal 2*0.5*f*d plus residual slope and a smooth slider error."""
    depth_cm = (grid.r - grid.probe.radius_mm) / 10.0
    nominal = 2.0 * 0.5 * grid.probe.frequency_mhz * depth_cm
    residual = params.tgc_residual_db_per_cm * depth_cm
    knots = rng.uniform(-1.0, 1.0, size=8) * params.tgc_wiggle_db
    wiggle = np.interp(depth_cm, np.linspace(0, depth_cm[-1] + 1e-6, 8), knots)
    return (nominal + residual + wiggle).astype(np.float32)
