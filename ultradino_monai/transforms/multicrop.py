"""DINOv2 / UltraDINO multi-crop augmentation for self-supervised pretraining.

One grey ultrasound image ``[1, H, W]`` becomes 2 global and ``n_local_crops`` local views,
each a float32 ``[1, S, S]`` tensor normalised with the FUS statistics. The recipe is
UltraDINO's ``DataAugmentationDINUS`` (reference brief §1.3 item 3 and §2.4):

* global crops (2): RandomResizedCrop(``global_size``=224, scale (0.32, 1.0), ratio
  (3/4, 4/3), bicubic) + **vertical** flip p=0.5 (UltraDINO replaced DINOv2's horizontal
  flip; ``flip="horizontal"`` restores DINOv2);
* local crops (8): RandomResizedCrop(``local_size``=96, scale (0.05, 0.32)) + the same flip;
* ColorJitter(brightness 0.4, contrast 0.4) with p=0.8, the two factors applied in random
  order, as torchvision does. UltraDINO sets hue 0 and drops RandomGrayscale; its
  saturation 0.2 is a no-op on a one-channel image (torchvision and Pillow both return the
  image unchanged), so neither appears here;
* Gaussian blur, kernel 9, sigma ~ U(0.1, 2.0), reflect border, with the *effective*
  probabilities (see below);
* solarize (x >= 128/255 -> 1 - x) with p=0.2 on the second global crop only;
* normalise ``(x - mean) / std`` with the FUS13M statistics (§1.3 item 2).

Blur probabilities (``blur_probabilities``): DINOv2's ``GaussianBlur(p)`` wrapper passes
``1 - p`` to ``torchvision.transforms.RandomApply`` (the comment says "torchvision is
applying 1 - probability", which it is not), so the nominal schedule 1.0 / 0.1 / 0.5
(global_0 / global_1 / local) is *effectively* 0.0 / 0.9 / 0.5: the first global crop is
never blurred and the second almost always (dinov2 PR #411, dinov3 #286/#342; reference
§2.4). UltraDINO inherited the bug and its released models were trained with it, so
``"effective"`` (0.0, 0.9, 0.5) is the default; ``"nominal"`` (1.0, 0.1, 0.5) gives the
schedule the DINOv2 authors intended; a ``(g0, g1, local)`` tuple sets them explicitly.

Speed. The transform is written for one DataLoader worker thread (PyTorch sets
``torch.set_num_threads(1)`` inside workers; do the same when timing it in the main
process) and works on float32 tensors only, with no PIL round trip:

* every crop is cut from the source *before* resampling, and the resize is the exact
  PyTorch / Pillow antialiased bicubic kernel written as two separable sparse weighted row
  gathers (``torch.embedding_bag`` with per-sample weights), so the cost is ~taps x pixels
  touched, not a dense resample; the tap tables are cached per (source length, output
  length) and the flips and the uint8 -> [0, 1] scale are folded into them;
* the first pass runs per view; the second pass, the jitter, the blur (again a separable
  gather, only on the views that are blurred), the solarisation and the normalisation run
  once on the stack of all views of one size (2 global, then all locals), so the Python /
  dispatch overhead is paid per group, not per view;
* each view goes through exactly one transposing copy per separable stage.

``benchmarks/multicrop.py`` measures it against a torchvision reference pipeline with
identical parameters in the same run.

The output of the resize matches ``torch.nn.functional.interpolate(crop, (S, S),
mode="bicubic", antialias=True, align_corners=False)`` to float32 rounding; bicubic
overshoot is clipped to [0, 1] (as the uint8 PIL pipeline of DINOv2 saturates).

Determinism: all randomness comes from ``self.R`` (MONAI ``Randomizable``), so
``set_random_state(seed)`` fixes the crops, and MONAI's ``DataLoader`` (which seeds every
``Randomizable`` in the dataset's transform through ``set_rnd`` from the torch seed, in
the main process and in each worker) plus ``monai.utils.set_determinism(seed)`` makes
whole runs reproducible.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Randomizable, Transform

from .ultrasound import FUS_MEAN, FUS_STD

logger = logging.getLogger(__name__)

__all__ = [
    "BLUR_PROBABILITIES",
    "CropParams",
    "DinoMultiCrop",
    "DinoMultiCropd",
    "resize_taps",
    "render_views",
]

# (global_0, global_1, local) blur probabilities, reference §2.4.
BLUR_PROBABILITIES = {"effective": (0.0, 0.9, 0.5), "nominal": (1.0, 0.1, 0.5)}


def _cubic(x: np.ndarray, a: float = -0.5) -> np.ndarray:
    """Keys' cubic convolution kernel with a = -0.5 (Pillow's and PyTorch's antialiased bicubic)."""
    x = np.abs(x)
    return np.where(
        x < 1.0,
        ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0,
        np.where(x < 2.0, (((x - 5.0) * x + 8.0) * x - 4.0) * a, 0.0),
    )


def _triangle(x: np.ndarray) -> np.ndarray:
    return np.clip(1.0 - np.abs(x), 0.0, None)


@functools.lru_cache(maxsize=8192)
def resize_taps(
    in_size: int, out_size: int, interpolation: str = "bicubic", reverse: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Tap table of a 1D antialiased resize from ``in_size`` to ``out_size`` samples.

    Mirrors PyTorch's ``antialias=True`` kernels (``align_corners=False``): scale
    ``s = in/out``, support ``(2 if bicubic else 1) * max(s, 1)``, kernel evaluated at
    ``(j - centre + 0.5) / max(s, 1)`` for source pixels ``j`` in the support clipped to
    the image, weights normalised to sum 1.

    Returns:
        ``(index, weight)``: read-only int64 ``[out_size, K]`` source indices and float64
        ``[out_size, K]`` weights (padding taps have weight 0), so that
        ``out[i] = sum_k weight[i, k] * src[index[i, k]]``. ``reverse=True`` returns the
        table of the flipped output (output sample ``i`` <- ``out_size - 1 - i``).
    """
    if in_size < 1 or out_size < 1:
        raise ValueError(f"resize sizes must be positive, got {in_size} -> {out_size}")
    if interpolation == "bicubic":
        half_width, kernel = 2.0, _cubic
    elif interpolation == "bilinear":
        half_width, kernel = 1.0, _triangle
    else:
        raise ValueError(f"interpolation must be 'bicubic' or 'bilinear', got {interpolation!r}")
    scale = in_size / out_size
    support = half_width * scale if scale >= 1.0 else half_width
    inv_scale = 1.0 / scale if scale >= 1.0 else 1.0
    centre = scale * (np.arange(out_size, dtype=np.float64) + 0.5)
    # PyTorch truncates towards zero before clamping; identical to floor after the clamp at 0.
    first = np.maximum(np.trunc(centre - support + 0.5), 0.0)
    last = np.minimum(np.trunc(centre + support + 0.5), float(in_size))
    taps = int((last - first).max())
    index = first[:, None] + np.arange(taps, dtype=np.float64)[None]
    valid = index < last[:, None]
    weight = kernel((index - centre[:, None] + 0.5) * inv_scale) * valid
    weight /= weight.sum(axis=1, keepdims=True)
    index = np.where(valid, index, first[:, None]).astype(np.int64)
    if reverse:
        index, weight = index[::-1], weight[::-1]
    index, weight = np.ascontiguousarray(index), np.ascontiguousarray(weight)
    index.setflags(write=False)
    weight.setflags(write=False)
    return index, weight


@functools.lru_cache(maxsize=8192)
def _row_pass_tables(
    in_size: int, out_size: int, interpolation: str, reverse: bool, value_scale: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Flat ``(indices, offsets, weights)`` tensors of :func:`resize_taps` for ``torch.embedding_bag``.

    ``value_scale`` is folded into the weights (1/255 turns uint8 levels into [0, 1]).
    """
    index, weight = resize_taps(in_size, out_size, interpolation, reverse)
    taps = index.shape[1]
    return (
        torch.from_numpy(index.reshape(-1).copy()),
        torch.arange(0, out_size * taps, taps, dtype=torch.int64),
        torch.from_numpy((weight * value_scale).astype(np.float32).reshape(-1)),
    )


@functools.lru_cache(maxsize=64)
def _reflect_taps(size: int, kernel_size: int, n_views: int) -> torch.Tensor:
    """int64 ``[n_views * size * kernel_size]`` indices of centred windows with reflect borders.

    View ``v`` of a stack of ``n_views`` images of ``size`` rows reads rows ``v * size + ...``.
    """
    half = kernel_size // 2
    if size <= half:
        raise ValueError(f"blur kernel {kernel_size} needs an image larger than {half} pixels, got {size}")
    pos = np.abs(np.arange(size)[:, None] + np.arange(-half, half + 1)[None])
    pos = np.where(pos > size - 1, 2 * (size - 1) - pos, pos)
    stacked = pos[None] + (np.arange(n_views) * size)[:, None, None]
    return torch.from_numpy(np.ascontiguousarray(stacked.reshape(-1), dtype=np.int64))


@functools.lru_cache(maxsize=64)
def _bag_offsets(n_bags: int, bag_size: int) -> torch.Tensor:
    return torch.arange(0, n_bags * bag_size, bag_size, dtype=torch.int64)


def _gaussian_kernels(kernel_size: int, sigmas: Sequence[float | None]) -> np.ndarray:
    """torchvision's ``_get_gaussian_kernel1d`` per view (exp(-x^2 / 2 sigma^2), sum 1), float64 ``[n, k]``.

    ``None`` gives the identity (delta) kernel, so unblurred views pass through exactly.
    """
    half = (kernel_size - 1) * 0.5
    x = np.linspace(-half, half, kernel_size)
    kernels = np.zeros((len(sigmas), kernel_size))
    for i, sigma in enumerate(sigmas):
        if sigma is None:
            kernels[i, kernel_size // 2] = 1.0
        else:
            pdf = np.exp(-0.5 * (x / sigma) ** 2)
            kernels[i] = pdf / pdf.sum()
    return kernels


def _embedding_bag_sum(rows: torch.Tensor, indices: torch.Tensor, offsets: torch.Tensor, weights: torch.Tensor):
    """``out[b] = sum_{t in bag b} weights[t] * rows[indices[t]]`` (one fused sparse gather)."""
    return torch.embedding_bag(rows, indices, offsets, False, 0, False, weights, False)[0]


def render_views(
    image: torch.Tensor,
    boxes: Sequence[tuple[int, int, int, int]],
    size: int,
    *,
    interpolation: str = "bicubic",
    flip_rows: Sequence[bool] | None = None,
    flip_cols: Sequence[bool] | None = None,
    value_scale: float = 1.0,
    jitter: Sequence[tuple[float, float, bool] | None] | None = None,
    blur_sigmas: Sequence[float | None] | None = None,
    blur_kernel_size: int = 9,
    solarize: Sequence[bool] | None = None,
    solarize_threshold: float = 128.0 / 255.0,
    mean: float = 0.0,
    std: float = 1.0,
) -> torch.Tensor:
    """Render ``n`` square views of one grey image: crop, resize, flip, jitter, blur, solarize, normalise.

    Every step follows torchvision's semantics (checked numerically in the tests):

    1. crop ``box = (top, left, height, width)`` and resize to ``size`` with the antialiased
       bicubic / bilinear kernel of ``F.interpolate(..., antialias=True)``; clip to [0, 1];
    2. flip rows (vertical) / columns (horizontal);
    3. jitter ``(brightness, contrast, brightness_first)``: brightness ``clip(x * b)``,
       contrast ``clip(c * x + (1 - c) * mean(x))``, in the given order;
    4. Gaussian blur (reflect border) with the view's sigma (``None``: not blurred);
    5. solarize ``x >= threshold -> 1 - x``;
    6. ``(x - mean) / std``.

    Args:
        image: float32 ``[H, W]`` source; multiplied by ``value_scale`` on the fly
            (``1/255`` for uint8 levels converted with ``.float()``).

    Returns:
        float32 ``[n, size, size]``.

    Implementation: the separable resize is two sparse weighted gathers
    (``torch.embedding_bag``) with cached tap tables; pass 1 runs per view on the crop's
    rows, pass 2, the point-wise steps and the blur run once on the stack of all views.
    """
    n = len(boxes)
    if n == 0:
        return torch.empty((0, size, size), dtype=torch.float32)
    flip_rows = flip_rows or [False] * n
    flip_cols = flip_cols or [False] * n
    height_src, width_src = image.shape

    # Pass 1 (rows), per view. Narrow crops read only their columns (cheaper than full-width rows).
    transposed_bands = []
    col_indices, col_weights, col_offsets = [], [], []
    base = 0
    for (top, left, height, width), flip_r, flip_c in zip(boxes, flip_rows, flip_cols):
        idx, off, wts = _row_pass_tables(height, size, interpolation, bool(flip_r), value_scale)
        if 2 * width < width_src:
            band = _embedding_bag_sum(image[top : top + height, left : left + width], idx, off, wts)
        else:
            band = _embedding_bag_sum(image[top : top + height], idx, off, wts)[:, left : left + width]
        transposed_bands.append(band.numpy().T)
        c_idx, c_wts = resize_taps(width, size, interpolation, bool(flip_c))
        col_indices.append(c_idx.reshape(-1) + base)
        col_weights.append(c_wts.reshape(-1))
        col_offsets.append(np.arange(size) * c_idx.shape[1])
        base += width
    # The one transposing copy of the resize; embedding_bag needs C-contiguous rows (np.concatenate
    # alone would return a Fortran-ordered array here, which embedding_bag handles ~30x slower).
    stacked_np = np.empty((base, size), dtype=np.float32)
    np.concatenate(transposed_bands, out=stacked_np)
    stacked = torch.from_numpy(stacked_np)  # [sum(width), size_rows]
    starts = np.concatenate([[0], np.cumsum([len(c) for c in col_indices])[:-1]])
    # Pass 2 (columns), all views at once -> [n * size_cols, size_rows]: each view TRANSPOSED.
    views_t = _embedding_bag_sum(
        stacked,
        torch.from_numpy(np.concatenate(col_indices)),
        torch.from_numpy(np.concatenate([o + s for o, s in zip(col_offsets, starts)])),
        torch.from_numpy(np.concatenate(col_weights).astype(np.float32)),
    ).view(n, size, size)
    views_t.clamp_(0.0, 1.0)  # bicubic overshoot; the uint8 PIL pipeline saturates the same way

    if jitter is not None and any(j is not None for j in jitter):
        # Two blend steps cover both orders: brightness blends with 0, contrast with the view mean;
        # views without jitter get factor 1 (an exact no-op, the values are already in [0, 1]).
        for step in (0, 1):
            factor = np.ones((n, 1, 1), dtype=np.float32)
            contrast_step = np.zeros((n, 1, 1), dtype=np.float32)
            for i, j in enumerate(jitter):
                if j is None:
                    continue
                brightness, contrast, brightness_first = j
                use_brightness = brightness_first == (step == 0)
                factor[i] = brightness if use_brightness else contrast
                contrast_step[i] = 0.0 if use_brightness else 1.0
            if contrast_step.any():
                target = views_t.mean(dim=(1, 2), keepdim=True).mul_(torch.from_numpy(contrast_step * (1.0 - factor)))
                views_t.mul_(torch.from_numpy(factor)).add_(target).clamp_(0.0, 1.0)
            else:
                views_t.mul_(torch.from_numpy(factor)).clamp_(0.0, 1.0)

    # Back to [rows, cols]. Blurred views: blur along columns in the transposed layout, transpose,
    # blur along rows. The others: just transpose. Each view is transposed exactly once.
    out = torch.empty((n, size, size), dtype=torch.float32)  # torch-owned storage (shareable by workers)
    views = out.numpy()
    views_t_np = views_t.numpy()
    blurred = [i for i in range(n) if blur_sigmas is not None and blur_sigmas[i] is not None]
    for i in range(n):
        if i not in blurred:
            views[i] = views_t_np[i].T
    if blurred:
        m = len(blurred)
        kernels = _gaussian_kernels(blur_kernel_size, [blur_sigmas[i] for i in blurred])
        weights = torch.from_numpy(np.repeat(kernels, size, axis=0).astype(np.float32).reshape(-1))
        taps = _reflect_taps(size, blur_kernel_size, m)
        offsets = _bag_offsets(m * size, blur_kernel_size)
        if m == n or blurred == list(range(blurred[0], blurred[0] + m)):
            source = views_t[blurred[0] : blurred[0] + m]  # contiguous block: no gather copy
        else:
            source = views_t[blurred]
        along_cols = _embedding_bag_sum(source.reshape(m * size, size), taps, offsets, weights).numpy()
        upright = torch.from_numpy(np.ascontiguousarray(along_cols.reshape(m, size, size).transpose(0, 2, 1)))
        blurred_views = _embedding_bag_sum(upright.view(m * size, size), taps, offsets, weights).numpy()
        for k, i in enumerate(blurred):
            views[i] = blurred_views[k * size : (k + 1) * size]

    if solarize is not None:
        for i, flag in enumerate(solarize):
            if flag:
                view = out[i]
                view.copy_(torch.where(view >= solarize_threshold, 1.0 - view, view))
    return out.sub_(mean).div_(std)


@dataclass(frozen=True)
class CropParams:
    """The random draw of one view.

    Attributes:
        name: output key (``global_0``, ``global_1``, ``local_<i>``).
        size: output side length in pixels.
        box: ``(top, left, height, width)`` of the crop in source pixels.
        flip: whether the view is flipped (vertical or horizontal per the transform).
        jitter: ``(brightness_factor, contrast_factor, brightness_first)`` or ``None``.
        blur_sigma: Gaussian sigma, or ``None`` when the view is not blurred.
        solarize: whether the view is solarised.
    """

    name: str
    size: int
    box: tuple[int, int, int, int]
    flip: bool
    jitter: tuple[float, float, bool] | None
    blur_sigma: float | None
    solarize: bool


def _pair(value: Sequence[float], name: str) -> tuple[float, float]:
    lo, hi = (float(v) for v in value)
    if lo > hi:
        raise ValueError(f"{name}: lower bound {lo} > upper bound {hi}")
    return lo, hi


class DinoMultiCrop(Randomizable, Transform):
    """DINOv2 / UltraDINO multi-crop views of one grey image (see the module docstring).

    Args:
        global_size: side of the global crops (224; reference §1.3 item 4).
        local_size: side of the local crops (96).
        n_local_crops: number of local crops (8).
        global_scale: RandomResizedCrop area fraction of the global crops ((0.32, 1.0)).
        local_scale: area fraction of the local crops ((0.05, 0.32)).
        ratio: aspect-ratio range of the crops ((3/4, 4/3), torchvision's default).
        flip: ``"vertical"`` (UltraDINO) or ``"horizontal"`` (DINOv2).
        flip_prob: flip probability (0.5).
        jitter_prob: probability of the brightness/contrast jitter (0.8).
        brightness: factor range ``[1 - b, 1 + b]`` (0.4).
        contrast: factor range ``[1 - c, 1 + c]`` (0.4).
        blur_probabilities: ``"effective"`` (0.0, 0.9, 0.5), ``"nominal"`` (1.0, 0.1, 0.5)
            or a ``(global_0, global_1, local)`` tuple.
        blur_kernel_size: Gaussian kernel size (9).
        blur_sigma: sigma range ((0.1, 2.0)).
        solarize_prob: solarisation probability of ``global_1`` (0.2); other views never.
        solarize_threshold: threshold on the [0, 1] scale (128/255).
        mean: normalisation mean (FUS13M, 0.1842924807).
        std: normalisation std (FUS13M, 0.2187705424).
        interpolation: ``"bicubic"`` (DINOv2) or ``"bilinear"``.

    Call: ``img`` is ``[1, H, W]`` or ``[H, W]``, float in [0, 1] or uint8 (torch or numpy).
    Returns ``{"global_0", "global_1", "local_0", ..., "local_{n-1}"}`` -> float32
    ``[1, S, S]`` tensors with values in ``[(0 - mean) / std, (1 - mean) / std]``.
    ``self.params`` holds the :class:`CropParams` of the last draw.
    """

    def __init__(
        self,
        global_size: int = 224,
        local_size: int = 96,
        n_local_crops: int = 8,
        global_scale: Sequence[float] = (0.32, 1.0),
        local_scale: Sequence[float] = (0.05, 0.32),
        ratio: Sequence[float] = (3.0 / 4.0, 4.0 / 3.0),
        flip: str = "vertical",
        flip_prob: float = 0.5,
        jitter_prob: float = 0.8,
        brightness: float = 0.4,
        contrast: float = 0.4,
        blur_probabilities: str | Sequence[float] = "effective",
        blur_kernel_size: int = 9,
        blur_sigma: Sequence[float] = (0.1, 2.0),
        solarize_prob: float = 0.2,
        solarize_threshold: float = 128.0 / 255.0,
        mean: float | Sequence[float] = FUS_MEAN,
        std: float | Sequence[float] = FUS_STD,
        interpolation: str = "bicubic",
    ) -> None:
        if flip not in ("vertical", "horizontal"):
            raise ValueError(f"flip must be 'vertical' or 'horizontal', got {flip!r}")
        if interpolation not in ("bicubic", "bilinear"):
            raise ValueError(f"interpolation must be 'bicubic' or 'bilinear', got {interpolation!r}")
        if isinstance(blur_probabilities, str):
            if blur_probabilities not in BLUR_PROBABILITIES:
                raise ValueError(
                    f"blur_probabilities must be one of {tuple(BLUR_PROBABILITIES)} or a 3-tuple, "
                    f"got {blur_probabilities!r}"
                )
            blur_p = BLUR_PROBABILITIES[blur_probabilities]
        else:
            blur_p = tuple(float(p) for p in blur_probabilities)
            if len(blur_p) != 3:
                raise ValueError(f"blur_probabilities tuple must be (global_0, global_1, local), got {blur_p}")
        probs = {"flip_prob": flip_prob, "jitter_prob": jitter_prob, "solarize_prob": solarize_prob}
        probs.update({f"blur_probabilities[{i}]": p for i, p in enumerate(blur_p)})
        for name, p in probs.items():
            if not 0.0 <= float(p) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {p}")
        if blur_kernel_size % 2 != 1 or blur_kernel_size < 1:
            raise ValueError(f"blur_kernel_size must be a positive odd number, got {blur_kernel_size}")
        if min(global_size, local_size) <= blur_kernel_size // 2:
            raise ValueError("crop sizes must exceed half the blur kernel size")
        if n_local_crops < 0:
            raise ValueError(f"n_local_crops must be >= 0, got {n_local_crops}")
        mean_v = np.atleast_1d(np.asarray(mean, dtype=np.float64))
        std_v = np.atleast_1d(np.asarray(std, dtype=np.float64))
        if mean_v.size != 1 or std_v.size != 1:
            raise ValueError("DinoMultiCrop works on one grey channel: give one mean and one std value")
        if not std_v[0] > 0:
            raise ValueError(f"std must be positive, got {std}")

        self.global_size = int(global_size)
        self.local_size = int(local_size)
        self.n_local_crops = int(n_local_crops)
        self.global_scale = _pair(global_scale, "global_scale")
        self.local_scale = _pair(local_scale, "local_scale")
        self.ratio = _pair(ratio, "ratio")
        self.flip = flip
        self.flip_prob = float(flip_prob)
        self.jitter_prob = float(jitter_prob)
        self.brightness = (max(0.0, 1.0 - brightness), 1.0 + brightness)
        self.contrast = (max(0.0, 1.0 - contrast), 1.0 + contrast)
        self.blur_probabilities = blur_p
        self.blur_kernel_size = int(blur_kernel_size)
        self.blur_sigma = _pair(blur_sigma, "blur_sigma")
        self.solarize_prob = float(solarize_prob)
        self.solarize_threshold = float(solarize_threshold)
        self.mean = float(mean_v[0])
        self.std = float(std_v[0])
        self.interpolation = interpolation
        self.params: list[CropParams] = []

    @property
    def crop_names(self) -> list[str]:
        """Output keys in order: ``global_0``, ``global_1``, ``local_0`` ... (view-major collation order)."""
        return ["global_0", "global_1"] + [f"local_{i}" for i in range(self.n_local_crops)]

    # --- randomness -------------------------------------------------------------------------

    def _sample_box(self, height: int, width: int, scale: tuple[float, float]) -> tuple[int, int, int, int]:
        """torchvision ``RandomResizedCrop.get_params``: (top, left, h, w)."""
        area = height * width
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target_area = area * self.R.uniform(scale[0], scale[1])
            aspect = math.exp(self.R.uniform(log_ratio[0], log_ratio[1]))
            w = int(round(math.sqrt(target_area * aspect)))
            h = int(round(math.sqrt(target_area / aspect)))
            if 0 < w <= width and 0 < h <= height:
                top = int(self.R.randint(0, height - h + 1))
                left = int(self.R.randint(0, width - w + 1))
                return top, left, h, w
        in_ratio = width / height  # fallback: central crop
        if in_ratio < self.ratio[0]:
            w, h = width, int(round(width / self.ratio[0]))
        elif in_ratio > self.ratio[1]:
            h, w = height, int(round(height * self.ratio[1]))
        else:
            w, h = width, height
        return (height - h) // 2, (width - w) // 2, h, w

    def _sample_view(
        self,
        name: str,
        size: int,
        height: int,
        width: int,
        scale: tuple[float, float],
        blur_p: float,
        solarize_p: float | None,
    ) -> CropParams:
        box = self._sample_box(height, width, scale)
        flip = bool(self.R.rand() < self.flip_prob)
        jitter = None
        if self.R.rand() < self.jitter_prob:
            b = float(self.R.uniform(*self.brightness))
            c = float(self.R.uniform(*self.contrast))
            jitter = (b, c, bool(self.R.rand() < 0.5))
        sigma = float(self.R.uniform(*self.blur_sigma)) if self.R.rand() < blur_p else None
        # Views that can be solarised always consume the draw, so the probability does not shift the stream.
        solarize = bool(self.R.rand() < solarize_p) if solarize_p is not None else False
        return CropParams(name, size, box, flip, jitter, sigma, solarize)

    def randomize(self, data: Sequence[int]) -> None:
        """Draw all views for an image of spatial shape ``data = (H, W)``; stored in ``self.params``."""
        height, width = (int(v) for v in data)
        g0, g1, loc = self.blur_probabilities
        gs, ls = self.global_scale, self.local_scale
        params = [
            self._sample_view("global_0", self.global_size, height, width, gs, g0, None),
            self._sample_view("global_1", self.global_size, height, width, gs, g1, self.solarize_prob),
        ]
        params += [
            self._sample_view(f"local_{i}", self.local_size, height, width, ls, loc, None)
            for i in range(self.n_local_crops)
        ]
        self.params = params

    # --- rendering --------------------------------------------------------------------------

    @staticmethod
    def _as_grey(img: Any) -> tuple[torch.Tensor, float]:
        """``[1, H, W]`` / ``[H, W]`` uint8 or float -> (contiguous float32 ``[H, W]``, value scale)."""
        if isinstance(img, np.ndarray):
            img = torch.from_numpy(np.ascontiguousarray(img))
        if not isinstance(img, torch.Tensor):
            raise TypeError(f"expected a torch tensor or numpy array, got {type(img).__name__}")
        img = img.as_tensor() if hasattr(img, "as_tensor") else img  # MetaTensor -> plain tensor
        if img.ndim == 3:
            if img.shape[0] != 1:
                raise ValueError(
                    f"DinoMultiCrop expects one grey channel [1, H, W], got {tuple(img.shape)}; "
                    "reduce the image with ToSingleChannel first"
                )
            img = img[0]
        elif img.ndim != 2:
            raise ValueError(f"DinoMultiCrop expects [1, H, W] or [H, W], got {tuple(img.shape)}")
        if img.dtype == torch.uint8:
            return img.to(torch.float32), 1.0 / 255.0  # the 1/255 is folded into the resize weights
        if not img.dtype.is_floating_point:
            raise ValueError(f"DinoMultiCrop expects uint8 or float in [0, 1], got {img.dtype}")
        return img.to(torch.float32).contiguous(), 1.0

    def _render_group(self, image: torch.Tensor, value_scale: float, params: list[CropParams]) -> torch.Tensor:
        vertical = self.flip == "vertical"
        return render_views(
            image,
            [p.box for p in params],
            params[0].size,
            interpolation=self.interpolation,
            flip_rows=[p.flip and vertical for p in params],
            flip_cols=[p.flip and not vertical for p in params],
            value_scale=value_scale,
            jitter=[p.jitter for p in params],
            blur_sigmas=[p.blur_sigma for p in params],
            blur_kernel_size=self.blur_kernel_size,
            solarize=[p.solarize for p in params],
            solarize_threshold=self.solarize_threshold,
            mean=self.mean,
            std=self.std,
        )

    def __call__(self, img: Any, randomize: bool = True) -> dict[str, torch.Tensor]:
        image, value_scale = self._as_grey(img)
        if randomize or not self.params:
            self.randomize(image.shape)
        out: dict[str, torch.Tensor] = {}
        with torch.no_grad():
            for group in (self.params[:2], self.params[2:]):  # globals, locals: one size each
                if group:
                    stack = self._render_group(image, value_scale, group)
                    out.update({p.name: stack[i : i + 1] for i, p in enumerate(group)})
        return out


class DinoMultiCropd(Randomizable, MapTransform):
    """Dictionary version of :class:`DinoMultiCrop`.

    Replaces ``data[key]`` (``[1, H, W]`` grey image, float [0, 1] or uint8) with the views
    ``global_0``, ``global_1``, ``local_0`` ... (float32 ``[1, S, S]``); the source image is
    dropped unless ``keep_source=True`` (it would otherwise be collated for nothing).
    Other keys are left alone. All other keyword arguments go to :class:`DinoMultiCrop`.
    """

    def __init__(
        self, keys: KeysCollection = "image", keep_source: bool = False, allow_missing_keys: bool = False, **kwargs: Any
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        if len(self.keys) != 1:
            raise ValueError(f"DinoMultiCropd takes exactly one image key, got {self.keys}")
        self.keep_source = keep_source
        self.cropper = DinoMultiCrop(**kwargs)

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> DinoMultiCropd:
        super().set_random_state(seed, state)
        self.cropper.set_random_state(seed, state)
        return self

    def randomize(self, data: Any = None) -> None:
        self.cropper.randomize(data)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            views = self.cropper(d[key])
            clash = set(views) & (set(d) - {key})
            if clash:
                raise KeyError(f"DinoMultiCropd would overwrite existing keys {sorted(clash)}")
            if not self.keep_source:
                del d[key]
            d.update(views)
        return d
