"""The result record (DESIGN contract 5) of a classification evaluation, with its confusion-matrix PNG."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ultradino_monai.data.datalist import read_datalist
from ultradino_monai.evaluation.provenance import METHOD_NAMES
from ultradino_monai.utils.files import atomic_write

logger = logging.getLogger(__name__)

__all__ = ["write_confusion_matrix_png", "write_classification_result"]


def write_confusion_matrix_png(matrix, classes: Sequence[str], path: str | os.PathLike, title: str = "") -> str:
    """Confusion matrix as a labelled PNG (rows: true class, columns: predicted; counts and row %)."""
    from matplotlib.figure import Figure  # object API: no pyplot state, no GUI backend

    matrix = np.asarray(matrix, dtype=np.int64)
    row_sums = matrix.sum(axis=1, keepdims=True)
    fractions = np.divide(matrix, np.maximum(row_sums, 1))
    size = max(4.0, 0.9 * len(classes) + 2.0)
    figure = Figure(figsize=(size + 1.0, size))
    axis = figure.add_subplot()
    image = axis.imshow(fractions, cmap="Blues", vmin=0.0, vmax=1.0)
    axis.set_xticks(range(len(classes)), labels=classes, rotation=45, ha="right")
    axis.set_yticks(range(len(classes)), labels=classes)
    axis.set_xlabel("predicted class")
    axis.set_ylabel("true class")
    if title:
        axis.set_title(title)
    for row in range(matrix.shape[0]):
        for col in range(matrix.shape[1]):
            colour = "white" if fractions[row, col] > 0.5 else "black"
            axis.text(
                col,
                row,
                f"{matrix[row, col]}\n{100 * fractions[row, col]:.0f}%",
                ha="center",
                va="center",
                fontsize=8,
                color=colour,
            )
    figure.colorbar(image, ax=axis, fraction=0.046, pad=0.04, label="fraction of the true class")
    figure.tight_layout()
    return str(atomic_write(path, lambda temporary: figure.savefig(temporary, format="png", dpi=120)))


def write_classification_result(
    result_path: str | os.PathLike,
    labels,
    predictions,
    classes: Sequence[str],
    *,
    task: str,
    datalist: str | os.PathLike,
    section: str,
    backbone_info: Mapping[str, Any],
    seed: int,
    budget: str,
    method: str = "auto",
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Score predictions and write the result record ``result_path`` (DESIGN contract 5) and,
    next to it, ``<stem>_confusion.png``.

    The record (:func:`ultradino_monai.evaluation.aggregate.make_record`): ``task``
    (``classification_finetune`` / ``classification_linear_probe``), dataset and split kind
    from the datalist / split file, the starting backbone (``backbone_info`` from
    :func:`backbone_record`: its name, file and the sha256 recorded when it was loaded, which
    stays right even if the file was replaced since; ``None`` for a random init), ``method``
    (``auto``: UltraDINO / DINOv2 / iBOT / USFM / timm / scratch from the backbone source),
    seed, ``budget`` (``"paper"`` only for the paper's
    schedule) and metrics: ``macro_f1`` (headline), ``accuracy``, ``f1_per_class`` and the
    ``confusion_matrix`` (rows true, columns predicted), fractions in [0, 1]. Extra keys:
    ``section``, ``classes``, ``backbone_info`` and ``extra``.
    """
    from ultradino_monai.evaluation.aggregate import classification_metrics, make_record, write_result
    from ultradino_monai.evaluation.metrics import confusion_matrix

    result_path = Path(result_path)
    y_pred = np.asarray(torch.as_tensor(predictions).cpu()).reshape(-1).astype(np.int64)
    y_true = np.asarray(torch.as_tensor(labels).cpu()).reshape(-1).astype(np.int64)
    metrics = classification_metrics(y_pred, y_true, classes)
    metrics["confusion_matrix"] = confusion_matrix(y_pred, y_true, len(classes)).tolist()
    document = read_datalist(datalist)
    split_meta = document.get("split") if isinstance(document.get("split"), dict) else {}
    png = write_confusion_matrix_png(
        metrics["confusion_matrix"],
        classes,
        result_path.with_name(f"{result_path.stem}_confusion.png"),
        title=f"{task} ({section}): accuracy {100 * metrics['accuracy']:.1f}%, "
        f"macro F1 {100 * metrics['macro_f1']:.1f}",
    )
    source = str(backbone_info.get("source", "scratch"))
    record = make_record(
        task=task,
        dataset=str(document.get("dataset") or split_meta.get("dataset") or Path(datalist).parent.name),
        split_file=str(datalist),
        split_kind=str(split_meta.get("kind", "datalist")),
        seed=int(seed),
        backbone=str(backbone_info.get("name", "unknown")),
        method=METHOD_NAMES.get(source, source) if method == "auto" else method,
        metrics=metrics,
        budget=str(budget),
        section=section,
        classes=list(classes),
        backbone_info=dict(backbone_info),
        confusion_matrix_png=Path(png).name,
        **dict(extra or {}),
    )
    if source != "scratch":
        record["checkpoint"] = str(backbone_info["path"])
        record["checkpoint_sha256"] = str(backbone_info["sha256"])
    path = write_result(result_path, record)
    logger.info(
        "%s on %s (%d images): accuracy %.2f%%, macro F1 %.2f; result in %s",
        task,
        section,
        metrics["num_images"],
        100 * metrics["accuracy"],
        100 * metrics["macro_f1"],
        path,
    )
    return record
