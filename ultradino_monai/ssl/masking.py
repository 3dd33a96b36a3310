"""iBOT block masking and the multi-crop collate (docs/recipe.md §2.5, §2.4 last bullet, §4).

:class:`MaskingGenerator` draws BEiT-style block masks on the ``h x w`` patch grid:
rectangles are added until the target count is reached or a block makes no progress.
Each block:

* area ``a ~ U(min_num_patches, min(remaining, max_num_patches))``;
* aspect ``r = exp(U(log min_aspect, log max_aspect))`` (``max_aspect = 1 / min_aspect``
  by default, i.e. [0.3, 3.33]); ``bh = round(sqrt(a r))``, ``bw = round(sqrt(a / r))``;
* top-left corner uniform; accepted only if it adds between 1 and
  ``min(remaining, max_num_patches)`` new patches; up to 10 attempts.

So a mask never exceeds its target, and no single block adds more than
``max_num_patches`` (0.5 N in DINOv2).

:class:`MultiCropMaskCollate` stacks multi-crop samples view-major and draws the masks
of the 2B global crops: ``n_masked = int(2B * mask_probability)`` crops get a mask, with
mask ratios stratified over ``mask_ratio`` (crop i draws its ratio uniformly within the
i-th of ``n_masked`` equal sub-intervals, target ``int(N * ratio)``); masks are shuffled
over the crops and the remaining crops get empty masks.

All randomness comes from an explicit :class:`numpy.random.Generator`, so masks are
reproducible from a seed (see :class:`MultiCropMaskCollate` for how the collate seeds it).
"""

from __future__ import annotations

import itertools
import logging
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.utils.data

__all__ = ["MaskingGenerator", "MultiCropMaskCollate", "collate_multicrop_with_masks"]

logger = logging.getLogger(__name__)

_MAX_ATTEMPTS_PER_BLOCK = 10  # DINOv2 / BEiT value (docs/recipe.md §2.5)


class MaskingGenerator:
    """BEiT-style block mask generator on an ``h x w`` patch grid.

    Args:
        input_size: patch grid ``(h, w)`` or a single int for a square grid
            (14 for 224-px crops with 16-px patches).
        max_num_patches: cap on the patches a single block may add; default ``0.5 h w``
            as in DINOv2 (docs/recipe.md §2.5).
        min_num_patches: lower bound of the block area draw (4).
        min_aspect: smallest block aspect ratio (0.3).
        max_aspect: largest block aspect ratio; default ``1 / min_aspect``.

    Call with ``(num_masking_patches, rng)`` to get a ``[h, w]`` bool numpy mask with at
    most ``num_masking_patches`` True entries.
    """

    def __init__(
        self,
        input_size: int | tuple[int, int],
        max_num_patches: float | None = None,
        min_num_patches: int = 4,
        min_aspect: float = 0.3,
        max_aspect: float | None = None,
    ) -> None:
        if isinstance(input_size, int):
            input_size = (input_size, input_size)
        if len(input_size) != 2 or any(int(s) != s or s < 1 for s in input_size):
            raise ValueError(f"input_size must be a positive int or (h, w) of positive ints, got {input_size!r}")
        self.height, self.width = int(input_size[0]), int(input_size[1])
        self.num_patches = self.height * self.width
        self.max_num_patches = 0.5 * self.num_patches if max_num_patches is None else float(max_num_patches)
        if self.max_num_patches <= 0:
            raise ValueError(f"max_num_patches must be > 0, got {max_num_patches}")
        if min_num_patches < 0:
            raise ValueError(f"min_num_patches must be >= 0, got {min_num_patches}")
        self.min_num_patches = min_num_patches
        if min_aspect <= 0:
            raise ValueError(f"min_aspect must be > 0, got {min_aspect}")
        max_aspect = 1.0 / min_aspect if max_aspect is None else max_aspect
        if max_aspect < min_aspect:
            raise ValueError(f"max_aspect ({max_aspect}) must be >= min_aspect ({min_aspect})")
        self.log_aspect_range = (math.log(min_aspect), math.log(max_aspect))

    def __repr__(self) -> str:
        lo, hi = (math.exp(v) for v in self.log_aspect_range)
        return (
            f"{type(self).__name__}(input_size=({self.height}, {self.width}), max_num_patches={self.max_num_patches}, "
            f"min_num_patches={self.min_num_patches}, aspect=[{lo:.3f}, {hi:.3f}])"
        )

    @property
    def shape(self) -> tuple[int, int]:
        return self.height, self.width

    def add_block(self, mask: np.ndarray, max_new_patches: float, rng: np.random.Generator) -> int:
        """Try (up to 10 times) to add one rectangle to ``mask`` in place.

        A rectangle is accepted only if it adds between 1 and ``max_new_patches``
        not-yet-masked patches. Returns the number of patches added (0 on failure).
        """
        low, high = sorted((float(self.min_num_patches), float(max_new_patches)))
        for _ in range(_MAX_ATTEMPTS_PER_BLOCK):
            area = rng.uniform(low, high)
            aspect = math.exp(rng.uniform(*self.log_aspect_range))
            block_h = int(round(math.sqrt(area * aspect)))
            block_w = int(round(math.sqrt(area / aspect)))
            # Strict inequality as in BEiT/DINOv2: a block never spans the whole grid side.
            if not (block_w < self.width and block_h < self.height):
                continue
            top = int(rng.integers(0, self.height - block_h + 1))
            left = int(rng.integers(0, self.width - block_w + 1))
            window = mask[top : top + block_h, left : left + block_w]
            new_patches = block_h * block_w - int(window.sum())
            if 0 < new_patches <= max_new_patches:
                window[...] = True
                return new_patches
        return 0

    def __call__(self, num_masking_patches: int, rng: np.random.Generator) -> np.ndarray:
        """A ``[h, w]`` bool mask with at most ``num_masking_patches`` masked patches."""
        if not isinstance(rng, np.random.Generator):
            raise TypeError(f"rng must be a numpy.random.Generator (for reproducible masks), got {type(rng).__name__}")
        if num_masking_patches < 0:
            raise ValueError(f"num_masking_patches must be >= 0, got {num_masking_patches}")
        mask = np.zeros(self.shape, dtype=bool)
        count = 0
        while count < num_masking_patches:
            added = self.add_block(mask, min(num_masking_patches - count, self.max_num_patches), rng)
            if added == 0:
                break  # no progress within 10 attempts: accept a mask below target
            count += added
        return mask


def _as_plain_tensor(value: Any, key: str) -> torch.Tensor:
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(value)
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"sample[{key!r}] must be a tensor [C, H, W], got {type(value).__name__}")
    if value.ndim != 3:
        raise ValueError(f"sample[{key!r}] must be [C, H, W], got shape {tuple(value.shape)}")
    # MONAI MetaTensor (and other subclasses) would drag per-item metadata through stack().
    return value.as_subclass(torch.Tensor) if type(value) is not torch.Tensor else value


def _crop_keys(sample: Mapping[str, Any], prefix: str) -> list[str]:
    pattern = re.compile(rf"^{prefix}_(\d+)$")
    indices = sorted(int(m.group(1)) for m in (pattern.match(k) for k in sample) if m)
    if indices != list(range(len(indices))):
        raise ValueError(f"{prefix} crop keys must be {prefix}_0..{prefix}_{{n-1}} without gaps, got indices {indices}")
    return [f"{prefix}_{i}" for i in indices]


def _stack_view_major(samples: Sequence[Mapping[str, Any]], keys: list[str]) -> torch.Tensor:
    """``[len(keys) * B, C, H, W]``: all samples' first view, then all second views, ..."""
    tensors = [_as_plain_tensor(sample[key], key) for key in keys for sample in samples]
    shapes = {tuple(t.shape) for t in tensors}
    if len(shapes) != 1:
        raise ValueError(f"crops {keys} must all have the same shape within a batch, got {sorted(shapes)}")
    return torch.stack(tensors)


def collate_multicrop_with_masks(
    samples: Sequence[Mapping[str, Any]],
    mask_ratio_tuple: tuple[float, float],
    mask_probability: float,
    n_tokens: int,
    mask_generator: MaskingGenerator,
    generator: np.random.Generator,
) -> dict[str, Any]:
    """Stack multi-crop samples view-major and draw the iBOT masks of the global crops.

    Args:
        samples: B dicts with keys ``global_0..global_{G-1}`` and ``local_0..local_{L-1}``,
            each a ``[C, H, W]`` tensor (global and local sizes may differ). Other keys
            are ignored. Every sample must have the same keys.
        mask_ratio_tuple: ``(lo, hi)`` range of per-crop mask ratios ((0.1, 0.5), docs/recipe.md §2.5).
        mask_probability: fraction of global crops that get a mask (0.5).
        n_tokens: N, patch tokens per global crop (196 for 224 px / patch 16); must equal
            ``mask_generator.num_patches``.
        mask_generator: the block generator for the ``h x w`` grid.
        generator: numpy Generator that drives all random draws of this batch.

    Returns:
        dict with
        ``global_crops`` ``[G*B, C, Hg, Wg]`` (all crop-0 images, then all crop-1 ...),
        ``local_crops`` ``[L*B, C, Hl, Wl]`` (``None`` when L == 0),
        ``masks`` ``[G*B, N]`` bool,
        ``mask_indices`` ``[M]`` long, flat indices into ``masks.flatten()``,
        ``masks_weight`` ``[M]`` float32, ``1 / |M_i|`` for each masked patch of crop i,
        ``n_masked_patches`` ``[1]`` long tensor holding M,
        ``upperbound`` int, ``sum_i int(N * hi_i)`` over the masked strata (>= M; the size
        of a fixed-size buffer that can hold every masked patch),
        ``n_global_crops`` G and ``n_local_crops`` L.
    """
    if len(samples) == 0:
        raise ValueError("cannot collate an empty batch")
    lo, hi = mask_ratio_tuple
    if not 0.0 <= lo <= hi <= 1.0:
        raise ValueError(f"mask_ratio_tuple must satisfy 0 <= lo <= hi <= 1, got {mask_ratio_tuple}")
    if not 0.0 <= mask_probability <= 1.0:
        raise ValueError(f"mask_probability must be in [0, 1], got {mask_probability}")
    if n_tokens != mask_generator.num_patches:
        raise ValueError(
            f"n_tokens={n_tokens} does not match the mask generator grid "
            f"{mask_generator.shape} ({mask_generator.num_patches} patches)"
        )
    global_keys = _crop_keys(samples[0], "global")
    local_keys = _crop_keys(samples[0], "local")
    if not global_keys:
        raise ValueError(f"samples need global_0, global_1, ... crop keys; got keys {sorted(samples[0])}")
    for i, sample in enumerate(samples[1:], start=1):
        if _crop_keys(sample, "global") != global_keys or _crop_keys(sample, "local") != local_keys:
            raise ValueError(f"sample {i} has different crop keys than sample 0 ({global_keys + local_keys})")

    global_crops = _stack_view_major(samples, global_keys)
    local_crops = _stack_view_major(samples, local_keys) if local_keys else None

    n_crops = global_crops.shape[0]
    n_masked_crops = int(n_crops * mask_probability)
    strata = np.linspace(lo, hi, n_masked_crops + 1)
    mask_list: list[np.ndarray] = []
    upperbound = 0
    for i in range(n_masked_crops):
        ratio = generator.uniform(strata[i], strata[i + 1])
        mask_list.append(mask_generator(int(n_tokens * ratio), generator))
        upperbound += int(n_tokens * strata[i + 1])
    mask_list.extend(np.zeros(mask_generator.shape, dtype=bool) for _ in range(n_crops - n_masked_crops))
    order = generator.permutation(n_crops)
    masks = torch.from_numpy(np.stack([mask_list[j] for j in order]).reshape(n_crops, n_tokens))

    mask_indices = masks.flatten().nonzero().flatten()
    masks_weight = (1.0 / masks.sum(dim=-1).clamp(min=1).float()).unsqueeze(-1).expand_as(masks)[masks]
    return {
        "global_crops": global_crops,
        "local_crops": local_crops,
        "masks": masks,
        "mask_indices": mask_indices,
        "masks_weight": masks_weight,
        "n_masked_patches": torch.tensor([mask_indices.numel()], dtype=torch.long),
        "upperbound": upperbound,
        "n_global_crops": len(global_keys),
        "n_local_crops": len(local_keys),
    }


class MultiCropMaskCollate:
    """``collate_fn`` for multi-crop SSL batches with iBOT masks (DataLoader-ready, picklable).

    Args:
        n_tokens: N, patch tokens per global crop (e.g. 196).
        mask_ratio: ``(lo, hi)`` mask-ratio range ((0.1, 0.5), docs/recipe.md §2.5).
        mask_probability: fraction of global crops that are masked (0.5, docs/recipe.md §2.5).
        seed: base seed of the mask RNG. In multi-process training pass a different seed
            per rank (e.g. ``seed + rank``) so ranks draw different masks.
        mask_generator: block generator; default a square ``sqrt(N) x sqrt(N)`` grid
            :class:`MaskingGenerator` with the docs/recipe.md §2.5 settings. Required if N is not a
            perfect square.

    Determinism: each call builds a fresh ``numpy.random.Generator`` from the seed
    sequence ``(seed, worker_seed, call_index)``:

    * ``call_index`` counts the calls made by *this copy* of the collate. In the main
      process (``num_workers=0``) it keeps growing across epochs.
    * ``worker_seed`` is ``torch.utils.data.get_worker_info().seed`` inside a DataLoader
      worker and 0 in the main process. PyTorch derives it from the main process's RNG
      (or the DataLoader's ``generator``) each time an iterator is created, so workers
      and epochs get distinct streams while the run stays reproducible under
      ``torch.manual_seed``. Each worker holds its own copy of the collate, whose counter
      restarts with the worker.

    So two runs with the same seed, the same torch seed and the same ``num_workers`` see
    the same masks, independently of wall-clock timing. No global RNG (``random``,
    ``np.random``) is read or advanced.
    """

    def __init__(
        self,
        n_tokens: int,
        mask_ratio: tuple[float, float] = (0.1, 0.5),
        mask_probability: float = 0.5,
        seed: int = 0,
        mask_generator: MaskingGenerator | None = None,
    ) -> None:
        if n_tokens < 1:
            raise ValueError(f"n_tokens must be >= 1, got {n_tokens}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0 (numpy SeedSequence entropy), got {seed}")
        if mask_generator is None:
            side = math.isqrt(n_tokens)
            if side * side != n_tokens:
                raise ValueError(f"n_tokens={n_tokens} is not a square grid; pass mask_generator for an h x w grid")
            mask_generator = MaskingGenerator((side, side))
        if mask_generator.num_patches != n_tokens:
            raise ValueError(f"mask_generator has {mask_generator.num_patches} patches but n_tokens={n_tokens}")
        lo, hi = mask_ratio
        if not 0.0 <= lo <= hi <= 1.0:
            raise ValueError(f"mask_ratio must satisfy 0 <= lo <= hi <= 1, got {mask_ratio}")
        if not 0.0 <= mask_probability <= 1.0:
            raise ValueError(f"mask_probability must be in [0, 1], got {mask_probability}")
        self.n_tokens = n_tokens
        self.mask_ratio = (float(lo), float(hi))
        self.mask_probability = float(mask_probability)
        self.seed = int(seed)
        self.mask_generator = mask_generator
        self._calls = itertools.count()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_calls"] = None  # itertools.count does not pickle; workers restart at 0
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._calls = itertools.count()

    def _rng_for_next_call(self) -> np.random.Generator:
        worker = torch.utils.data.get_worker_info()
        worker_seed = 0 if worker is None else int(worker.seed)
        return np.random.default_rng([self.seed, worker_seed, next(self._calls)])

    def __call__(self, samples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        return collate_multicrop_with_masks(
            samples,
            mask_ratio_tuple=self.mask_ratio,
            mask_probability=self.mask_probability,
            n_tokens=self.n_tokens,
            mask_generator=self.mask_generator,
            generator=self._rng_for_next_call(),
        )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(n_tokens={self.n_tokens}, mask_ratio={self.mask_ratio}, "
            f"mask_probability={self.mask_probability}, seed={self.seed}, mask_generator={self.mask_generator!r})"
        )
