"""Classification data: the datalist and its class names, and the shared preprocessing for a backbone."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ultradino_monai.data.datalist import DatalistError, read_datalist
from ultradino_monai.data.validate import check_datalist
from ultradino_monai.engines.config_values import as_bool, require_dataset_dir
from ultradino_monai.utils.errors import MissingInputError

__all__ = ["resolve_datalist", "class_names", "section_items", "normalization_name", "classification_transforms"]


def resolve_datalist(dataset_dir: str | os.PathLike, split_file: str | os.PathLike | None = None) -> str:
    """The datalist (or split file) the run reads.

    ``split_file`` wins when given (a file from :mod:`ultradino_monai.data.splits`). Otherwise
    ``dataset_dir/datalist.json``, which must exist: the bundle configs make the demo data
    first (``data_prep.demo``) when ``dataset_dir`` is the demo default.
    """
    if split_file not in (None, "", "None"):
        path = Path(split_file)
        if not path.is_file():
            raise MissingInputError(f"--split_file: split file not found: {path}")
        return str(path)
    datalist = Path(require_dataset_dir(dataset_dir)) / "datalist.json"
    if not datalist.is_file():
        raise MissingInputError(
            f"{datalist} not found. Convert FETAL_PLANES_DB first: "
            f"python -m data_prep.fetal_planes FETAL_PLANES_ZENODO.zip {dataset_dir}"
        )
    return str(datalist)


def class_names(datalist: str | os.PathLike) -> list[str]:
    """The top-level ``classes`` list of a classification datalist (DESIGN contract 1)."""
    classes = read_datalist(datalist).get("classes")
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        raise DatalistError(f"{datalist}: a classification datalist needs a top-level 'classes' list of names")
    return classes


def section_items(datalist: str | os.PathLike, section: str) -> list[dict]:
    """Entries of one section: paths absolute, labels class indices (class names mapped through ``classes``).

    Keys and label types are checked here (no file access, about a microsecond an entry); the bundles check
    the files once, first thing (:func:`ultradino_monai.engines.inputs.check_run_inputs`).
    """
    return check_datalist(datalist, [section], "classification", decode="none")[section]


def normalization_name(mean: Sequence[float], std: Sequence[float], requested: str = "auto") -> str:
    """Name of the shared-preprocessing normalisation to use with a backbone.

    ``requested="auto"`` picks the one matching the backbone's own ``mean``/``std``
    (``"fus"``, ``"imagenet"`` or ``"none"``); an explicit name is returned as given (e.g.
    ``"fus"`` to reproduce UltraDINO's test-time quirk (c), docs/recipe.md §1.4).

    Raises:
        ValueError: ``auto`` and the backbone's statistics match none of the named ones.
    """
    from ultradino_monai.transforms.ultrasound import NORMALIZATIONS, normalization_stats

    if requested != "auto":
        normalization_stats(requested, len(mean))
        return requested
    for name in NORMALIZATIONS:
        try:
            ref_mean, ref_std = normalization_stats(name, len(mean))
        except ValueError:
            continue
        if np.allclose(ref_mean, mean, atol=1e-6) and np.allclose(ref_std, std, atol=1e-6):
            return name
    raise ValueError(
        f"the backbone expects mean {list(mean)} / std {list(std)}, which is none of the shared preprocessing's "
        f"{NORMALIZATIONS}. Natural-image (ImageNet) weights: load them with in_chans=3 (the grey image is "
        "repeated, as UltraDINO's baselines did); otherwise set 'normalization' to the closest named one"
    )


def classification_transforms(
    train: bool,
    spatial_size: Sequence[int],
    normalization: str,
    in_chans: int = 1,
    augment: bool = True,
    prob: float = 0.5,
):
    """Shared preprocessing (DESIGN contract 2), with UltraDINO's augmentation for training.

    ``train and augment``: :func:`~ultradino_monai.transforms.augment.ultrasound_train_transforms`
    (load, [0, 1], grey, resize, brightness/contrast, gamma, noise, grid distortion, flip,
    normalise; docs/recipe.md §1.4); otherwise the deterministic
    :func:`~ultradino_monai.transforms.ultrasound.ultrasound_preprocessing`. The ``label``
    (a class index) passes through untouched. Output ``image``: float32 ``[in_chans, H, W]``.
    """
    from ultradino_monai.transforms.augment import ultrasound_train_transforms
    from ultradino_monai.transforms.ultrasound import ultrasound_preprocessing

    size = tuple(int(s) for s in spatial_size)
    if train and as_bool(augment):
        return ultrasound_train_transforms(
            "classification",
            image_key="image",
            label_key="label",
            spatial_size=size,
            normalization=normalization,
            in_chans=in_chans,
            prob=prob,
        )
    return ultrasound_preprocessing(
        image_key="image",
        label_key="label",
        spatial_size=size,
        normalization=normalization,
        in_chans=in_chans,
        label_is_map=False,
        allow_missing_label=True,
    )
