"""Score nnU-Net predictions with THE project metric and write result records (docs/design.md contracts 3, 5).

The ground truth is re-derived from the split file, not read from ``labelsTs``: every
label map of the scored section goes through the label half of the shared preprocessing
(:func:`ultradino_monai.transforms.ultrasound.ultrasound_preprocessing`: load, nearest-exact
resize to the network grid, int64), which is exactly what the segmentation bundle's
evaluator compares its predictions with. The predictions are nnU-Net's index PNGs
(``CASE.png``, written at the exported size), and the score is
:class:`ultradino_monai.evaluation.metrics.PooledDice` (split-pooled Dice, the
foreground mean as headline; ``docs/datasets.md`` §1.4, §2.7). nnU-Net's
own per-case evaluator is deliberately not used for the headline number.

Result records are built like ``ultradino_monai.engines.segmentation.results.write_segmentation_result``
(same ``task``, ``dataset`` / ``split_kind`` / ``draw`` / ``split_sha256`` from
``split_info``, ``metrics`` from ``segmentation_metrics``): ``method`` is ``"nnUNet"``,
``backbone`` the planned architecture (e.g. ``PlainConvUNet_2d``), ``checkpoint`` null
(nnU-Net starts from random weights; the bundle's ``checkpoint`` is the *pretrained
backbone*) and ``model`` / ``model_sha256`` the nnU-Net checkpoint that predicted.

Budget (:func:`budget_label`): ``"paper"`` only for nnU-Net's default schedule,
``nnUNetTrainer`` for 1000 epochs (the setting the paper's nnU-Net baseline names); any other
trainer or epoch count is ``"<trainer>/<epochs>ep"``, e.g. ``nnUNetTrainer_UltraDINOShort/2ep``,
which :mod:`ultradino_monai.evaluation.aggregate` labels "reduced budget" and never averages
with full runs. ``budget_detail`` always holds ``"<trainer>/<epochs>ep"``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nnunet_baselines.export import FILE_ENDING, case_id
from ultradino_monai.data.datalist import DatalistError, load_datalist
from ultradino_monai.utils.files import sha256_file

logger = logging.getLogger(__name__)

__all__ = [
    "METHOD",
    "DEFAULT_TRAINER",
    "DEFAULT_EPOCHS",
    "ScoreError",
    "budget_label",
    "read_prediction",
    "score_folder",
    "build_record",
]

METHOD = "nnUNet"
DEFAULT_TRAINER = "nnUNetTrainer"
#: nnU-Net's default schedule (docs/datasets.md §2.4: 1,000 epochs).
DEFAULT_EPOCHS = 1000


class ScoreError(DatalistError):
    """Predictions are missing, mis-sized or hold values outside the label set."""


def budget_label(trainer: str, epochs: int) -> str:
    """``"paper"`` for ``nnUNetTrainer`` x 1000 epochs, else ``"<trainer>/<epochs>ep"`` (module docstring)."""
    if trainer == DEFAULT_TRAINER and int(epochs) == DEFAULT_EPOCHS:
        return "paper"
    return f"{trainer}/{int(epochs)}ep"


def read_prediction(path: str | os.PathLike) -> np.ndarray:
    """An index-map PNG as an integer ``[H, W]`` array (what ``NaturalImage2DIO.write_seg`` writes)."""
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise ScoreError(f"prediction not found: {path}")
    with Image.open(path) as image:
        image.load()
        if image.mode not in ("L", "P", "I;16", "I;16B", "I;16L", "I", "1"):
            raise ScoreError(f"{path}: prediction PNG mode {image.mode!r} is not a single-channel index map")
        array = np.asarray(image)
    if array.ndim != 2:
        raise ScoreError(f"{path}: expected a 2D index map, got shape {array.shape}")
    return array.astype(np.int64)


def score_folder(
    prediction_dir: str | os.PathLike,
    split_file: str | os.PathLike,
    section: str,
    image_size: Sequence[int] | int,
    num_classes: int,
    *,
    ignore_index: int | None = 255,
) -> dict[str, Any]:
    """Pooled Dice of the predictions in ``prediction_dir`` against ``section`` of ``split_file``.

    Args:
        prediction_dir: holds ``CASE.png`` for every item of the section (case ids as
            :func:`nnunet_baselines.export.case_id`).
        split_file: split file (or datalist) naming the cases and their label maps.
        section: ``"test"`` (reported) or ``"validation"`` (checkpoint selection).
        image_size: the exported network grid ``(H, W)``; predictions must have it.
        num_classes: K including background.
        ignore_index: as :class:`PooledDice` (255, mmseg's padding value, by default).

    Returns:
        :func:`ultradino_monai.evaluation.metrics.pooled_dice` output plus ``cases`` (ids scored).

    Raises:
        ScoreError: a prediction is missing, has the wrong shape, or values >= K.
    """
    from ultradino_monai.evaluation.metrics import PooledDice
    from ultradino_monai.transforms.ultrasound import ultrasound_preprocessing

    if isinstance(image_size, (int, np.integer)):
        image_size = (int(image_size), int(image_size))
    size = tuple(int(v) for v in image_size)
    prediction_dir = Path(prediction_dir)
    items = load_datalist(split_file, section)
    if not items:
        raise ScoreError(f"{split_file}: section {section!r} is empty; nothing to score")
    ids = [case_id(item) for item in items]
    missing = [i for i in ids if not (prediction_dir / f"{i}{FILE_ENDING}").is_file()]
    if missing:
        raise ScoreError(f"{prediction_dir}: {len(missing)} of {len(ids)} predictions missing, e.g. {missing[:3]}")
    label_chain = ultrasound_preprocessing(image_key=None, label_key="label", spatial_size=size, normalization="none")
    dice = PooledDice(num_classes, ignore_index=ignore_index)
    for identifier, item in zip(ids, items):
        prediction = read_prediction(prediction_dir / f"{identifier}{FILE_ENDING}")
        if prediction.shape != size:
            raise ScoreError(f"{identifier}: prediction shape {prediction.shape} != exported grid {size}")
        if prediction.min() < 0 or prediction.max() >= num_classes:
            raise ScoreError(
                f"{identifier}: prediction values {sorted(np.unique(prediction).tolist())} outside 0..{num_classes - 1}"
            )
        label = label_chain({"label": item["label"]})["label"]
        dice.update_sample(prediction[None], label)
    result = dice.compute()
    result["cases"] = ids
    logger.info(
        "scored %d %s predictions in %s: foreground pooled Dice %.4f",
        len(ids),
        section,
        prediction_dir,
        result["foreground_mean"],
    )
    return result


def build_record(
    dice: Mapping[str, Any],
    labels: Mapping[str, int],
    split_file: str | os.PathLike,
    *,
    section: str = "test",
    seed: int = 0,
    trainer: str = DEFAULT_TRAINER,
    epochs: int = DEFAULT_EPOCHS,
    backbone: str = "PlainConvUNet_2d",
    model: str | os.PathLike | None = None,
    image_size: Sequence[int] | None = None,
    dataset: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A validated result record (docs/design.md contract 5) for an nnU-Net evaluation.

    Args:
        dice: :func:`score_folder` output.
        labels: class name -> index (the datalist's ``labels``).
        split_file: the scored split file (provenance via ``split_info``, as the bundle).
        section: the scored section.
        seed: training seed (the bundle's convention; nnU-Net's own training is not seeded
            bit-exactly, see the README).
        trainer, epochs: give ``budget`` (:func:`budget_label`) and ``budget_detail``.
        backbone: the row name's architecture part.
        model: the nnU-Net checkpoint that made the predictions (hashed), or None.
        image_size: exported grid.
        dataset: fallback dataset name when the split file names none.
        extra: more keys stored in the record (nnU-Net provenance).
    """
    from ultradino_monai.evaluation.aggregate import make_record, segmentation_metrics
    from ultradino_monai.evaluation.provenance import split_info

    split = split_info(split_file)
    metric_input = {
        key: dice[key]
        for key in ("per_class", "foreground_mean", "mean_with_background", "per_image_mean", "num_images")
    }
    return make_record(
        task="segmentation",
        dataset=split.get("dataset") or dataset or "unknown",
        split_file=str(split_file),
        split_kind=split["kind"],
        seed=int(seed),
        backbone=backbone,
        method=METHOD,
        metrics=segmentation_metrics(metric_input, labels),
        checkpoint=None,
        budget=budget_label(trainer, epochs),
        section=section,
        draw=split.get("draw"),
        split_sha256=split["sha256"],
        model=None if model is None else str(model),
        model_sha256=None if model is None else sha256_file(model),
        backbone_source="scratch",
        image_size=None if image_size is None else [int(v) for v in image_size],
        budget_detail=f"{trainer}/{int(epochs)}ep",
        per_image_per_class=list(dice.get("per_image_per_class", [])),
        **dict(extra or {}),
    )
