"""Dictionary versions of the ultrasound array transforms, and the image / label shape check."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform
from monai.transforms.inverse import InvertibleTransform
from monai.utils import ensure_tuple_rep

from ultradino_monai.transforms.ultrasound.array import (
    AntialiasedResize,
    LoadUltrasoundImage,
    ScaleIntensityByDtype,
    ToSingleChannel,
)


class LoadUltrasoundImaged(MapTransform):
    """Dictionary version of :class:`LoadUltrasoundImage`.

    Args:
        keys: keys whose values are file paths (or arrays) to load.
        as_label: one bool per key (or one for all): load that key as a label map.
        channel_dim: channel axis for ``.npy`` / array inputs (see :class:`LoadUltrasoundImage`).
        allow_missing_keys: skip keys absent from the dictionary.
    """

    def __init__(
        self,
        keys: KeysCollection,
        as_label: bool | Sequence[bool] = False,
        channel_dim: int | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        flags = ensure_tuple_rep(as_label, len(self.keys))
        self.loaders = {
            key: LoadUltrasoundImage(as_label=flag, channel_dim=channel_dim) for key, flag in zip(self.keys, flags)
        }

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.loaders[key](d[key])
        return d


class ScaleIntensityByDtyped(MapTransform):
    """Dictionary version of :class:`ScaleIntensityByDtype`."""

    def __init__(
        self,
        keys: KeysCollection,
        max_value: float | None = None,
        clip_float: bool = True,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.scaler = ScaleIntensityByDtype(max_value=max_value, clip_float=clip_float)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.scaler(d[key])
        return d


class ToSingleChanneld(MapTransform):
    """Dictionary version of :class:`ToSingleChannel`."""

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.reducer = ToSingleChannel()

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.reducer(d[key])
        return d


class AntialiasedResized(MapTransform, InvertibleTransform):
    """Dictionary version of :class:`AntialiasedResize`; one ``mode`` per key.

    Args:
        keys: keys to resize.
        spatial_size: target ``(H, W)``.
        mode: one mode per key (or one for all), e.g. ``("bilinear", "nearest-exact")``
            for ``("image", "label")``.
        antialias: antialias when downsampling in bilinear / bicubic mode.
    """

    def __init__(
        self,
        keys: KeysCollection,
        spatial_size: Sequence[int] | int,
        mode: str | Sequence[str] = "bilinear",
        antialias: bool = True,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.mode = ensure_tuple_rep(mode, len(self.keys))
        self.resizer = AntialiasedResize(spatial_size=spatial_size, antialias=antialias)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key, mode in self.key_iterator(d, self.mode):
            d[key] = self.resizer(d[key], mode=mode)
        return d

    def inverse(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.resizer.inverse(d[key])
        return d


class CheckSpatialShapesd(MapTransform):
    """Fail loudly when an image and its label map do not have the same ``(H, W)``.

    A silent resize of mismatched pairs would misalign labels; the error names the files.
    """

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        shapes = {}
        for key in self.key_iterator(d):
            shapes[key] = tuple(int(s) for s in d[key].shape[1:])
        if len(set(shapes.values())) > 1:
            names = {
                key: (d[key].meta.get("filename_or_obj", "?") if isinstance(d[key], MetaTensor) else "array")
                for key in shapes
            }
            raise ValueError(f"image / label spatial shapes differ: {shapes} (files: {names})")
        return d
