"""Supervised-training augmentation (segmentation and classification) as MONAI dictionary transforms.

Where it goes in the chain (see :func:`ultrasound_train_transforms`)::

    ultrasound_preprocessing(normalization="none")   # load, [0, 1], grey, resize to the grid
      -> segmentation_augmentation / classification_augmentation   # on [0, 1] float images
      -> label map back to int64
      -> normalization_transforms (repeat to 3 channels, (x - mean) / std)

The augmentations run on [0, 1] float images *before* normalisation, because their
parameters are defined on that scale (brightness shift in units of the maximum value,
gamma on [0, 1], Gaussian-noise variance on the 0-255 scale converted to [0, 1]), exactly
as the albumentations pipelines of UltraDINO ran them on uint8 images before ``Normalize``.
Spatial transforms move image and label map together (one random draw per sample); label
maps are resampled with nearest-neighbour interpolation so they keep their class ids.

Parameters are the UltraDINO ones (docs/recipe.md §1.5 segmentation ``AlbuGray`` list,
docs/recipe.md §1.4 classification list; albumentations 1.3.1 semantics):

====================  =========================================================  ==========
transform             parameters                                                 p
====================  =========================================================  ==========
affine (seg only)     scale 0.8-1.2 (isotropic), translate +-20 %, rotate +-30     0.5
                      deg, shear +-15 deg (x and y), zero border
horizontal flip       -                                                          0.5
brightness/contrast   x * (1 + U(-0.3, 0.3)) + U(-0.3, 0.3), clipped to [0, 1]   0.5
gamma                 x ** U(0.8, 1.2)                                           0.5
Gaussian noise        var ~ U(10, 50) on 0-255, i.e. sigma = sqrt(var) / 255     0.5
grid distortion       5 cells, steps 1 + U(-0.3, 0.3); zero border (seg),        0.5
                      reflection border (classification)
====================  =========================================================  ==========

Paper-fidelity switch ``translate``: UltraDINO's config passes
``translate_percent=(0.2, 0.2)`` to albumentations 1.3.1, which samples from the interval
[0.2, 0.2], i.e. a *fixed* shift of +20 % of the width and height whenever the affine fires.
The brief's intent is "+-20 %": ``translate="symmetric"`` (default) samples U(-0.2, 0.2)
per axis; ``translate="repo"`` reproduces the fixed shift.

Differences from albumentations kept on purpose (documented, not hidden): the affine is
composed as T . R . Shear . S about the image centre (albumentations composes the same
factors with its own sign conventions; the ranges are symmetric so the distributions
match); classification augmentation runs at the network grid after the resize, while
UltraDINO ran it at the native resolution before ``Resize`` (segmentation data were
already 224 x 224, so there it is identical); noise is not quantised back to uint8.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data.meta_obj import get_track_meta
from monai.transforms import (
    Affine,
    CastToTyped,
    Compose,
    MapTransform,
    RandFlipd,
    RandGridDistortiond,
    RandomizableTransform,
)
from monai.utils import convert_to_tensor, ensure_tuple, ensure_tuple_rep

from .ultrasound import normalization_transforms, ultrasound_preprocessing

__all__ = [
    "RandBrightnessContrast",
    "RandBrightnessContrastd",
    "RandGamma",
    "RandGammad",
    "RandGaussianNoiseVar",
    "RandGaussianNoiseVard",
    "RandUltrasoundAffined",
    "RandGridDistortionKeysd",
    "segmentation_augmentation",
    "classification_augmentation",
    "ultrasound_train_transforms",
]


def _as_range(value: float | Sequence[float], name: str) -> tuple[float, float]:
    """``0.3`` -> ``(-0.3, 0.3)``; ``(a, b)`` -> ``(a, b)``."""
    if isinstance(value, (int, float)):
        return -float(value), float(value)
    lo, hi = (float(v) for v in value)
    if lo > hi:
        raise ValueError(f"{name}: lower bound {lo} > upper bound {hi}")
    return lo, hi


# ----------------------------------------------------------------------------------------------
# Intensity augmentations (image only, [0, 1] float in and out)
# ----------------------------------------------------------------------------------------------


class RandBrightnessContrast(RandomizableTransform):
    """albumentations ``RandomBrightnessContrast`` (brightness_by_max=True) on [0, 1] images.

    ``x -> clip(x * alpha + beta, 0, 1)`` with ``alpha = 1 + U(contrast_limit)`` and
    ``beta = U(brightness_limit)`` (in units of the maximum value, 1.0).
    Input / output: float ``[C, H, W]`` in [0, 1].
    """

    def __init__(
        self,
        prob: float = 0.5,
        brightness_limit: float | Sequence[float] = 0.3,
        contrast_limit: float | Sequence[float] = 0.3,
    ) -> None:
        super().__init__(prob)
        self.brightness_limit = _as_range(brightness_limit, "brightness_limit")
        self.contrast_limit = _as_range(contrast_limit, "contrast_limit")
        self.alpha, self.beta = 1.0, 0.0

    def randomize(self, data: Any = None) -> None:
        super().randomize(None)
        if self._do_transform:
            self.alpha = 1.0 + self.R.uniform(*self.contrast_limit)
            self.beta = self.R.uniform(*self.brightness_limit)

    def __call__(self, img: torch.Tensor, randomize: bool = True) -> torch.Tensor:
        if randomize:
            self.randomize()
        img = convert_to_tensor(img, track_meta=get_track_meta(), dtype=torch.float32)
        if not self._do_transform:
            return img
        return (img * self.alpha + self.beta).clamp(0.0, 1.0)


class RandGamma(RandomizableTransform):
    """albumentations ``RandomGamma(gamma_limit=(80, 120))``: ``x -> x ** U(0.8, 1.2)`` on [0, 1].

    Unlike MONAI's ``RandAdjustContrast`` there is no per-image min-max rescaling.
    Input / output: float ``[C, H, W]`` in [0, 1].
    """

    def __init__(self, prob: float = 0.5, gamma_range: Sequence[float] = (0.8, 1.2)) -> None:
        super().__init__(prob)
        lo, hi = (float(v) for v in gamma_range)
        if not 0 < lo <= hi:
            raise ValueError(f"gamma_range must satisfy 0 < low <= high, got {gamma_range}")
        self.gamma_range = (lo, hi)
        self.gamma = 1.0

    def randomize(self, data: Any = None) -> None:
        super().randomize(None)
        if self._do_transform:
            self.gamma = self.R.uniform(*self.gamma_range)

    def __call__(self, img: torch.Tensor, randomize: bool = True) -> torch.Tensor:
        if randomize:
            self.randomize()
        img = convert_to_tensor(img, track_meta=get_track_meta(), dtype=torch.float32)
        if not self._do_transform:
            return img
        return img.clamp(0.0, 1.0).pow(self.gamma)


class RandGaussianNoiseVar(RandomizableTransform):
    """albumentations ``GaussNoise(var_limit=(10, 50))`` expressed on the [0, 1] scale.

    The variance is drawn on the 0-``value_scale`` (255) scale, as UltraDINO applied it to
    uint8 images: ``sigma = sqrt(U(var_limit)) / value_scale``; then
    ``x -> clip(x + N(0, sigma^2), 0, 1)`` independently per pixel.
    Input / output: float ``[C, H, W]`` in [0, 1].
    """

    def __init__(
        self, prob: float = 0.5, var_limit: Sequence[float] = (10.0, 50.0), value_scale: float = 255.0
    ) -> None:
        super().__init__(prob)
        lo, hi = (float(v) for v in var_limit)
        if not 0 <= lo <= hi:
            raise ValueError(f"var_limit must satisfy 0 <= low <= high, got {var_limit}")
        self.var_limit = (lo, hi)
        self.value_scale = float(value_scale)
        self.sigma = 0.0
        self._noise: np.ndarray | None = None

    def randomize(self, data: Any = None, shape: Sequence[int] | None = None) -> None:
        super().randomize(None)
        self._noise = None
        if self._do_transform:
            self.sigma = math.sqrt(self.R.uniform(*self.var_limit)) / self.value_scale
            if shape is not None:
                self._noise = self.R.standard_normal(size=tuple(shape)).astype(np.float32)

    def __call__(self, img: torch.Tensor, randomize: bool = True) -> torch.Tensor:
        img = convert_to_tensor(img, track_meta=get_track_meta(), dtype=torch.float32)
        if randomize:
            self.randomize(shape=img.shape)
        if not self._do_transform:
            return img
        if self._noise is None or tuple(self._noise.shape) != tuple(img.shape):
            raise RuntimeError("RandGaussianNoiseVar: call randomize(shape=img.shape) before randomize=False")
        noise = torch.from_numpy(self._noise).to(img.device)
        return (img + noise * self.sigma).clamp(0.0, 1.0)


class _RandIntensityd(RandomizableTransform, MapTransform):
    """Apply one array intensity transform with ONE random draw to every key."""

    def __init__(self, keys: KeysCollection, transform: RandomizableTransform, allow_missing_keys: bool) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob=1.0)
        self.transform = transform

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None):
        super().set_random_state(seed, state)
        self.transform.set_random_state(seed, state)
        return self

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        first = self.first_key(d)
        if first == ():
            return d
        if isinstance(self.transform, RandGaussianNoiseVar):
            self.transform.randomize(shape=d[first].shape)
        else:
            self.transform.randomize()
        for key in self.key_iterator(d):
            d[key] = self.transform(d[key], randomize=False)
        return d


class RandBrightnessContrastd(_RandIntensityd):
    """Dictionary version of :class:`RandBrightnessContrast` (for image keys only)."""

    def __init__(
        self,
        keys: KeysCollection,
        prob: float = 0.5,
        brightness_limit: float | Sequence[float] = 0.3,
        contrast_limit: float | Sequence[float] = 0.3,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, RandBrightnessContrast(prob, brightness_limit, contrast_limit), allow_missing_keys)


class RandGammad(_RandIntensityd):
    """Dictionary version of :class:`RandGamma` (for image keys only)."""

    def __init__(
        self,
        keys: KeysCollection,
        prob: float = 0.5,
        gamma_range: Sequence[float] = (0.8, 1.2),
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, RandGamma(prob, gamma_range), allow_missing_keys)


class RandGaussianNoiseVard(_RandIntensityd):
    """Dictionary version of :class:`RandGaussianNoiseVar` (for image keys only)."""

    def __init__(
        self,
        keys: KeysCollection,
        prob: float = 0.5,
        var_limit: Sequence[float] = (10.0, 50.0),
        value_scale: float = 255.0,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, RandGaussianNoiseVar(prob, var_limit, value_scale), allow_missing_keys)


# ----------------------------------------------------------------------------------------------
# Joint affine
# ----------------------------------------------------------------------------------------------


class RandUltrasoundAffined(RandomizableTransform, MapTransform):
    """albumentations-style random affine applied jointly to images and label maps.

    One draw per sample: isotropic scale ``U(scale_range)``, rotation ``U(-rotate, rotate)``
    degrees, shear ``U(-shear, shear)`` degrees on x and on y independently, translation
    ``U(-translate, translate)`` of the width / height per axis (``translate_mode="symmetric"``)
    or a fixed ``+translate`` on both axes (``translate_mode="repo"``, albumentations 1.3.1
    semantics of UltraDINO's ``translate_percent=(0.2, 0.2)``). Forward map, in pixel
    coordinates centred on the image centre: ``p_out = T . R . Shear . S . p_in``.

    Resampling with MONAI ``Affine`` (grid_sample): ``mode`` per key, e.g.
    ``("bilinear", "nearest")`` for ``("image", "label")``; outside the image ``padding_mode``
    (``"zeros"`` = albumentations constant border 0). Input / output ``[C, H, W]`` float32.
    """

    def __init__(
        self,
        keys: KeysCollection,
        prob: float = 0.5,
        scale_range: Sequence[float] = (0.8, 1.2),
        translate: float = 0.2,
        translate_mode: str = "symmetric",
        rotate: float = 30.0,
        shear: float = 15.0,
        mode: str | Sequence[str] = "bilinear",
        padding_mode: str = "zeros",
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        if translate_mode not in ("symmetric", "repo"):
            raise ValueError(f"translate_mode must be 'symmetric' or 'repo', got {translate_mode!r}")
        self.scale_range = tuple(float(v) for v in scale_range)
        self.translate = float(translate)
        self.translate_mode = translate_mode
        self.rotate = float(rotate)
        self.shear = float(shear)
        self.mode = ensure_tuple_rep(mode, len(self.keys))
        self.padding_mode = padding_mode
        self.params: dict[str, float] = {}

    def randomize(self, data: Any = None) -> None:
        super().randomize(None)
        if not self._do_transform:
            return
        if self.translate_mode == "symmetric":
            tx, ty = self.R.uniform(-self.translate, self.translate, size=2)
        else:
            tx = ty = self.translate
        self.params = {
            "scale": self.R.uniform(*self.scale_range),
            "rotate": self.R.uniform(-self.rotate, self.rotate),
            "shear_x": self.R.uniform(-self.shear, self.shear),
            "shear_y": self.R.uniform(-self.shear, self.shear),
            "translate_x": float(tx),
            "translate_y": float(ty),
        }

    def forward_matrix(self, height: int, width: int) -> np.ndarray:
        """3x3 forward map in centred (row, col) pixel coordinates for the last draw."""
        p = self.params
        s = p["scale"]
        theta = math.radians(p["rotate"])
        scale = np.diag([s, s, 1.0])
        shear = np.array(
            [
                [1.0, math.tan(math.radians(p["shear_x"])), 0.0],
                [math.tan(math.radians(p["shear_y"])), 1.0, 0.0],
                [0, 0, 1],
            ]
        )
        rot = np.array([[math.cos(theta), -math.sin(theta), 0], [math.sin(theta), math.cos(theta), 0], [0, 0, 1]])
        trans = np.eye(3)
        trans[0, 2], trans[1, 2] = p["translate_x"] * width, p["translate_y"] * height
        forward_xy = trans @ rot @ shear @ scale
        swap = np.array([[0, 1, 0], [1, 0, 0], [0, 0, 1]], dtype=float)  # (x, y) <-> (row, col)
        return swap @ forward_xy @ swap

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        first = self.first_key(d)
        if first == ():
            return d
        self.randomize()
        if not self._do_transform:
            for key in self.key_iterator(d):
                d[key] = convert_to_tensor(d[key], track_meta=get_track_meta(), dtype=torch.float32)
            return d
        height, width = (int(v) for v in d[first].shape[1:3])
        # MONAI's Affine maps OUTPUT coordinates to INPUT coordinates, hence the inverse.
        inverse = torch.as_tensor(np.linalg.inv(self.forward_matrix(height, width)), dtype=torch.float32)
        for key, mode in self.key_iterator(d, self.mode):
            warp = Affine(affine=inverse, mode=mode, padding_mode=self.padding_mode, image_only=True)
            d[key] = warp(convert_to_tensor(d[key], track_meta=get_track_meta(), dtype=torch.float32))
        return d


class RandGridDistortionKeysd(RandGridDistortiond):
    """MONAI ``RandGridDistortiond`` that leaves the values of other keys alone.

    When it does not fire, MONAI 1.6's ``RandGridDistortiond`` converts *every* value of the
    dictionary to a tensor, so an ``int`` class label would become a 0-d MetaTensor for some
    samples only (and collate inconsistently). Parameters as ``RandGridDistortiond``.
    """

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        others = {key: value for key, value in data.items() if key not in self.keys}
        out = super().__call__(data)
        out.update(others)
        return out


# ----------------------------------------------------------------------------------------------
# Factories
# ----------------------------------------------------------------------------------------------


def segmentation_augmentation(
    keys: Sequence[str] = ("image", "label"),
    *,
    prob: float = 0.5,
    translate_mode: str = "symmetric",
    grid_padding_mode: str = "zeros",
) -> Compose:
    """UltraDINO segmentation augmentation (docs/recipe.md §1.5 ``AlbuGray`` list, same order).

    Args:
        keys: ``keys[0]`` is the image, the remaining keys are label maps that follow the
            image through the spatial transforms (nearest-neighbour).
        prob: probability of each of the six transforms (0.5 in UltraDINO).
        translate_mode: ``"symmetric"`` (+-20 %) or ``"repo"`` (fixed +20 %), see module doc.
        grid_padding_mode: border of the grid distortion (albumentations constant 0 -> ``"zeros"``).

    Input: ``image`` float ``[C, H, W]`` in [0, 1], label maps ``[1, H, W]``.
    Output: image float32 in [0, 1]; label maps float32 with the original class ids (cast
    them back to an integer dtype, as :func:`ultrasound_train_transforms` does).
    """
    keys = tuple(ensure_tuple(keys))
    if not keys:
        raise ValueError("segmentation_augmentation needs at least the image key")
    image_key = keys[0]
    spatial_modes = ["bilinear"] + ["nearest"] * (len(keys) - 1)
    return Compose(
        [
            RandUltrasoundAffined(
                keys=keys, prob=prob, translate_mode=translate_mode, mode=spatial_modes, padding_mode="zeros"
            ),
            RandFlipd(keys=keys, prob=prob, spatial_axis=1),  # axis 1 of (H, W): horizontal flip
            RandBrightnessContrastd(keys=image_key, prob=prob),
            RandGammad(keys=image_key, prob=prob),
            RandGaussianNoiseVard(keys=image_key, prob=prob),
            RandGridDistortionKeysd(
                keys=keys,
                num_cells=5,
                prob=prob,
                distort_limit=(-0.3, 0.3),
                mode=spatial_modes,
                padding_mode=grid_padding_mode,
            ),
        ]
    )


def classification_augmentation(
    keys: Sequence[str] = ("image",),
    *,
    prob: float = 0.5,
    grid_padding_mode: str = "reflection",
) -> Compose:
    """UltraDINO classification augmentation (docs/recipe.md §1.4, same order, without Resize/Normalize).

    RandomBrightnessContrast -> RandomGamma -> GaussNoise -> GridDistortion
    (albumentations' default reflect-101 border -> ``"reflection"``) -> HorizontalFlip,
    each with probability ``prob``. ``keys``: image keys, float ``[C, H, W]`` in [0, 1].
    """
    keys = tuple(ensure_tuple(keys))
    return Compose(
        [
            RandBrightnessContrastd(keys=keys, prob=prob),
            RandGammad(keys=keys, prob=prob),
            RandGaussianNoiseVard(keys=keys, prob=prob),
            RandGridDistortionKeysd(
                keys=keys,
                num_cells=5,
                prob=prob,
                distort_limit=(-0.3, 0.3),
                mode="bilinear",
                padding_mode=grid_padding_mode,
            ),
            RandFlipd(keys=keys, prob=prob, spatial_axis=1),
        ]
    )


def ultrasound_train_transforms(
    task: str,
    image_key: str = "image",
    label_key: str | None = "label",
    spatial_size: Sequence[int] | int = (224, 224),
    normalization: str = "fus",
    in_chans: int = 1,
    *,
    prob: float = 0.5,
    translate_mode: str = "symmetric",
    channel_dim: int | None = None,
    max_value: float | None = None,
    label_dtype: torch.dtype = torch.int64,
) -> Compose:
    """Training chain: preprocessing (no normalisation) -> augmentation -> normalisation.

    Args:
        task: ``"segmentation"`` (label is a map, augmented jointly) or ``"classification"``
            (label is a class id, left untouched).
        image_key, label_key, spatial_size, normalization, in_chans, channel_dim, max_value:
            as in :func:`~ultradino_monai.transforms.ultrasound.ultrasound_preprocessing`.
        prob, translate_mode: as in :func:`segmentation_augmentation`.
        label_dtype: dtype of the label map after augmentation.

    Output: ``image`` float32 ``[in_chans, *spatial_size]`` normalised; for segmentation
    ``label`` ``label_dtype`` ``[1, *spatial_size]``.
    """
    if task not in ("segmentation", "classification"):
        raise ValueError(f"task must be 'segmentation' or 'classification', got {task!r}")
    is_seg = task == "segmentation"
    if is_seg and label_key is None:
        raise ValueError("segmentation training needs a label_key")
    transforms = list(
        ultrasound_preprocessing(
            image_key=image_key,
            label_key=label_key,
            spatial_size=spatial_size,
            normalization="none",
            in_chans=1,
            label_is_map=is_seg,
            channel_dim=channel_dim,
            max_value=max_value,
            label_dtype=label_dtype,
        ).transforms
    )
    if is_seg:
        transforms += list(
            segmentation_augmentation((image_key, label_key), prob=prob, translate_mode=translate_mode).transforms
        )
        transforms.append(CastToTyped(keys=label_key, dtype=label_dtype))
    else:
        transforms += list(classification_augmentation((image_key,), prob=prob).transforms)
    transforms += normalization_transforms(image_key, normalization, in_chans)
    return Compose(transforms)
