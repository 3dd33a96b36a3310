"""Fast rendering of square views from one grey image: crop, antialiased resize, flip, jitter, blur, solarize.

The renderer behind :class:`~ultradino_monai.transforms.multicrop.DinoMultiCrop`.

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
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["render_views", "resize_taps"]


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
