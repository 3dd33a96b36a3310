"""Segmentation data: the datalist and its label map, dataset items, and the image/label transforms."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.transforms import CastToTyped, Compose, NormalizeIntensityd, RepeatChanneld

from ultradino_monai.data.datalist import DatalistError, load_datalist, read_datalist
from ultradino_monai.engines.config_values import require_dataset_dir
from ultradino_monai.transforms.augment import segmentation_augmentation
from ultradino_monai.transforms.ultrasound import normalization_stats, ultrasound_preprocessing
from ultradino_monai.utils.errors import MissingInputError

__all__ = ["segmentation_datalist", "labels_of", "section_items", "resolve_normalization", "segmentation_transforms"]


def segmentation_datalist(dataset_dir: str | os.PathLike) -> str:
    """Return ``dataset_dir/datalist.json``, which must exist.

    Real datasets are converted beforehand (``python -m data_prep.fass`` / ``data_prep.jnu_ifm``);
    the bundle configs make the demo data first (``data_prep.demo``) when ``dataset_dir`` is the
    demo default. A missing datalist is an error that says so.
    """
    datalist = Path(require_dataset_dir(dataset_dir)) / "datalist.json"
    if datalist.is_file():
        return str(datalist)
    raise MissingInputError(
        f"{datalist} not found. Convert the dataset first, e.g. python -m data_prep.fass RAW_DIR {dataset_dir} "
        f"(or python -m data_prep.jnu_ifm), or pass --dataset_dir pointing at a converted dataset"
    )


def labels_of(*datalists: str | os.PathLike | None) -> dict[str, int]:
    """The ``"labels"`` mapping (name -> class index) of the first datalist / split file that has one.

    The indices must be exactly ``0 .. K-1`` (background 0), the layout the loss and the
    metric assume.
    """
    for path in datalists:
        if path is None:
            continue
        labels = read_datalist(path).get("labels")
        if labels:
            labels = {str(name): int(index) for name, index in labels.items()}
            if sorted(labels.values()) != list(range(len(labels))):
                raise DatalistError(f"{path}: label indices {sorted(labels.values())} are not 0..{len(labels) - 1}")
            return dict(sorted(labels.items(), key=lambda item: item[1]))
    raise DatalistError(f"none of {[str(p) for p in datalists if p]} has a top-level 'labels' mapping")


def section_items(datalist: str | os.PathLike, section: str) -> list[dict[str, Any]]:
    """Items of one section with absolute paths; a clear error when the section is empty."""
    items = load_datalist(datalist, section)
    if not items:
        raise DatalistError(f"{datalist}: section {section!r} is empty")
    return items


def image_size_hw(image_size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(image_size, (int, np.integer)):
        return int(image_size), int(image_size)
    size = tuple(int(v) for v in image_size)
    if len(size) != 2:
        raise ValueError(f"image_size must be an int or (H, W), got {image_size!r}")
    return size  # type: ignore[return-value]


def resolve_normalization(normalization: str, mean: Sequence[float], std: Sequence[float], in_chans: int):
    """``"auto"``: the backbone's own mean/std; ``"fus"`` / ``"imagenet"`` / ``"none"``: the named statistics."""
    if str(normalization).lower() == "auto":
        return [float(v) for v in mean], [float(v) for v in std]
    mean_n, std_n = normalization_stats(normalization, in_chans)
    return [float(v) for v in mean_n], [float(v) for v in std_n]


def segmentation_transforms(
    image_size: int | Sequence[int],
    mean: Sequence[float],
    std: Sequence[float],
    in_chans: int = 1,
    train: bool = False,
    image_key: str = "image",
    label_key: str | None = "label",
    augmentation: Mapping[str, Any] | None = None,
) -> Compose:
    """The shared preprocessing, the joint augmentation (train) and the backbone's normalisation.

    ``ultrasound_preprocessing(normalization="none")`` (load, [0, 1], grey, resize to
    ``image_size``; nearest for the label map) -> [train: ``segmentation_augmentation`` on the
    [0, 1] image and the label map together, label back to int64] -> [grey repeated to 3
    channels when ``in_chans == 3``] -> ``(x - mean) / std`` per channel.

    The list is flat (no nested ``Compose``), so ``CacheDataset`` caches everything before
    the first random transform.

    Args:
        image_size: network grid ``(H, W)`` (UltraDINO: 224, docs/recipe.md §1.5).
        mean, std: per-model-channel normalisation on [0, 1] (from the backbone checkpoint).
        in_chans: model input channels (1, or 3 for natural-image backbones).
        train: add the augmentation.
        label_key: ``None`` for unlabelled images (inference).
        augmentation: keyword arguments of :func:`segmentation_augmentation` (``prob``,
            ``translate_mode``, ``grid_padding_mode``).

    Output: ``image`` float32 ``[in_chans, H, W]``; ``label`` int64 ``[1, H, W]``.
    """
    size = image_size_hw(image_size)
    mean, std = [float(v) for v in mean], [float(v) for v in std]
    if len(mean) != in_chans or len(std) != in_chans:
        raise ValueError(f"mean/std need {in_chans} value(s) (one per model channel), got {mean} / {std}")
    chain = list(
        ultrasound_preprocessing(
            image_key=image_key, label_key=label_key, spatial_size=size, normalization="none", in_chans=1
        ).transforms
    )
    if train:
        if label_key is None:
            raise ValueError("training transforms need a label_key")
        chain += list(segmentation_augmentation((image_key, label_key), **dict(augmentation or {})).transforms)
        chain.append(CastToTyped(keys=label_key, dtype=torch.int64))
    if in_chans == 3:
        chain.append(RepeatChanneld(keys=image_key, repeats=3))
    elif in_chans != 1:
        raise ValueError(f"in_chans must be 1 or 3, got {in_chans}")
    chain.append(NormalizeIntensityd(keys=image_key, subtrahend=mean, divisor=std, channel_wise=True))
    return Compose(chain)
