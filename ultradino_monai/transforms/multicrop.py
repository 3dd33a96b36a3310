"""DINOv2 / UltraDINO multi-crop augmentation for self-supervised pretraining.

One grey ultrasound image ``[1, H, W]`` becomes 2 global and ``n_local_crops`` local views,
each a float32 ``[1, S, S]`` tensor normalised with the FUS statistics. The recipe is
UltraDINO's ``DataAugmentationDINUS`` (docs/recipe.md §1.3 item 3 and §2.4):

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
* normalise ``(x - mean) / std`` with the FUS13M statistics (docs/recipe.md §1.3 item 2).

Blur probabilities (``blur_probabilities``): DINOv2's ``GaussianBlur(p)`` wrapper passes
``1 - p`` to ``torchvision.transforms.RandomApply`` (the comment says "torchvision is
applying 1 - probability", which it is not), so the nominal schedule 1.0 / 0.1 / 0.5
(global_0 / global_1 / local) is *effectively* 0.0 / 0.9 / 0.5: the first global crop is
never blurred and the second almost always (dinov2 PR #411, dinov3 #286/#342; reference
docs/recipe.md §2.4). UltraDINO inherited the bug and its released models were trained with it, so
``"effective"`` (0.0, 0.9, 0.5) is the default; ``"nominal"`` (1.0, 0.1, 0.5) gives the
schedule the DINOv2 authors intended; a ``(g0, g1, local)`` tuple sets them explicitly.

Speed: the views of one size are rendered together by
:func:`~ultradino_monai.transforms.view_render.render_views` (cached separable tap tables,
one sparse gather per pass, no PIL round trip); ``benchmarks/multicrop.py`` measures it
against a torchvision reference pipeline with identical parameters in the same run.

Determinism: all randomness comes from ``self.R`` (MONAI ``Randomizable``), so
``set_random_state(seed)`` fixes the crops, and MONAI's ``DataLoader`` (which seeds every
``Randomizable`` in the dataset's transform through ``set_rnd`` from the torch seed, in
the main process and in each worker) plus ``monai.utils.set_determinism(seed)`` makes
whole runs reproducible.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Randomizable, Transform

from .ultrasound import FUS_MEAN, FUS_STD
from .view_render import render_views

__all__ = [
    "BLUR_PROBABILITIES",
    "CropParams",
    "DinoMultiCrop",
    "DinoMultiCropd",
]

# (global_0, global_1, local) blur probabilities, docs/recipe.md §2.4.
BLUR_PROBABILITIES = {"effective": (0.0, 0.9, 0.5), "nominal": (1.0, 0.1, 0.5)}


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
        global_size: side of the global crops (224; docs/recipe.md §1.3 item 4).
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
