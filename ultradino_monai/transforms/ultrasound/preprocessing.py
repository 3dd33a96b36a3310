"""THE preprocessing chain (package docstring) as a MONAI ``Compose``, and its image half for in-memory arrays."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from monai.transforms import CastToTyped, Compose
from monai.utils import convert_to_tensor

from ultradino_monai.transforms.ultrasound.array import (
    AntialiasedResize,
    LoadUltrasoundImage,
    ScaleIntensityByDtype,
    ToSingleChannel,
)
from ultradino_monai.transforms.ultrasound.dictionary import (
    AntialiasedResized,
    CheckSpatialShapesd,
    LoadUltrasoundImaged,
    ScaleIntensityByDtyped,
    ToSingleChanneld,
)
from ultradino_monai.transforms.ultrasound.normalization import normalization_stats, normalization_transforms


def ultrasound_preprocessing(
    image_key: str | None = "image",
    label_key: str | None = "label",
    spatial_size: Sequence[int] | int = (224, 224),
    normalization: str = "fus",
    in_chans: int = 1,
    label_is_map: bool = True,
    *,
    channel_dim: int | None = None,
    max_value: float | None = None,
    label_dtype: torch.dtype = torch.int64,
    allow_missing_label: bool = False,
) -> Compose:
    """Build THE deterministic preprocessing chain (docs/design.md contract 2).

    Input: a dictionary whose ``image_key`` / ``label_key`` values are paths (``.png`` or
    ``.npy``) or arrays. Output dictionary values:

    * ``image_key``: float32 MetaTensor ``[in_chans, *spatial_size]``; with
      ``normalization="none"`` the values are in [0, 1] (use this for the nnU-Net export
      and for training chains that augment before normalising); with ``"fus"`` or
      ``"imagenet"`` they are ``(x - mean) / std``.
    * ``label_key`` when ``label_is_map``: ``label_dtype`` MetaTensor ``[1, *spatial_size]``
      holding only class ids present in the file (nearest-exact resize).
      When ``label_is_map`` is False (classification) the label is left untouched.

    Args:
        image_key: key of the image; ``None`` builds a label-only chain (e.g. for scoring).
        label_key: key of the label; ``None`` for unlabelled data.
        spatial_size: the network grid ``(H, W)``.
        normalization: ``"fus"``, ``"imagenet"`` or ``"none"`` (see :func:`normalization_stats`).
        in_chans: 1, or 3 to repeat grey for natural-image backbones.
        label_is_map: the label is a segmentation map file (True) or a class id (False).
        channel_dim: channel axis of ``.npy`` inputs (None = infer).
        max_value: intensity range override for integer images (e.g. 4095 for 12-bit).
        label_dtype: dtype of resized label maps.
        allow_missing_label: do not fail when a dictionary has no ``label_key``.
    """
    if image_key is None and (label_key is None or not label_is_map):
        raise ValueError("ultrasound_preprocessing needs an image_key, a label map key, or both")
    normalization_stats(normalization, in_chans)  # validate early, with the clear error
    map_key = label_key if (label_key is not None and label_is_map) else None
    load_keys = [k for k in (image_key, map_key) if k is not None]
    as_label = [k == map_key for k in load_keys]
    modes = ["nearest-exact" if k == map_key else "bilinear" for k in load_keys]
    transforms: list = [
        LoadUltrasoundImaged(
            keys=load_keys, as_label=as_label, channel_dim=channel_dim, allow_missing_keys=allow_missing_label
        )
    ]
    if image_key is not None:
        transforms += [ScaleIntensityByDtyped(keys=image_key, max_value=max_value), ToSingleChanneld(keys=image_key)]
    if image_key is not None and map_key is not None:
        transforms.append(CheckSpatialShapesd(keys=[image_key, map_key], allow_missing_keys=allow_missing_label))
    transforms.append(
        AntialiasedResized(
            keys=load_keys, spatial_size=spatial_size, mode=modes, allow_missing_keys=allow_missing_label
        )
    )
    if map_key is not None:
        transforms.append(CastToTyped(keys=map_key, dtype=label_dtype, allow_missing_keys=allow_missing_label))
    if image_key is not None:
        transforms += normalization_transforms(image_key, normalization, in_chans)
    return Compose(transforms)


def preprocess_image_array(
    array: np.ndarray | torch.Tensor,
    spatial_size: Sequence[int] | int = (224, 224),
    normalization: str = "fus",
    in_chans: int = 1,
    *,
    channel_dim: int | None = None,
    max_value: float | None = None,
) -> torch.Tensor:
    """Run the image half of :func:`ultrasound_preprocessing` on one in-memory array.

    For inference on decoded DICOM frames. ``array``: ``[H, W]``, ``[H, W, C]`` or
    ``[C, H, W]`` (C <= 4), uint8 / uint16 / bool, or float in [0, 1]; pass ``max_value``
    for integer data that does not use the full dtype range (e.g. 12-bit in uint16).

    Returns:
        a plain float32 tensor ``[in_chans, *spatial_size]``, normalised as requested.
    """
    mean, std = normalization_stats(normalization, in_chans)
    image = LoadUltrasoundImage(channel_dim=channel_dim)(array)
    image = ScaleIntensityByDtype(max_value=max_value)(image)
    image = ToSingleChannel()(image)
    image = AntialiasedResize(spatial_size=spatial_size, mode="bilinear")(image)
    image = convert_to_tensor(image, track_meta=False, dtype=torch.float32)
    if in_chans == 3:
        image = image.repeat(3, 1, 1)
    mean_t = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
    return (image - mean_t) / std_t
