"""The result record (DESIGN contract 5) of a segmentation evaluation."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

from ultradino_monai.engines.segmentation.spec import spec_backbone_name
from ultradino_monai.evaluation.provenance import METHOD_NAMES, split_info
from ultradino_monai.utils.distributed import is_main_process
from ultradino_monai.utils.files import sha256_file

logger = logging.getLogger(__name__)

__all__ = ["write_segmentation_result"]


def write_segmentation_result(
    result_path: str | os.PathLike,
    evaluator,
    metric_name: str,
    spec: Mapping[str, Any],
    model_path: str | os.PathLike,
    split_file: str | os.PathLike,
    section: str,
    seed: int,
    dataset: str | None = None,
    method: str | None = None,
    backbone: str | None = None,
    budget: str = "paper",
    extra: Mapping[str, Any] | None = None,
) -> str:
    """Write the result record (DESIGN contract 5) of an evaluation run, rank 0 only.

    Metrics come from the evaluator's :class:`~ultradino_monai.evaluation.metrics.PooledDiceMetric`
    details (``foreground_dice``, ``dice_with_background``, ``per_image_dice``,
    ``dice_per_class``). ``checkpoint`` / ``checkpoint_sha256`` name the *pretrained backbone*
    the model was fine-tuned from (null for random init), as recorded in ``model.json`` at
    training time; the fine-tuned weights are recorded as ``model`` / ``model_sha256``.

    Args:
        dataset: used when the split file names no ``split.dataset`` (a plain datalist).
        method: Table 1 row family; default from the backbone source (:data:`METHOD_NAMES`).
        backbone: default :func:`~ultradino_monai.engines.segmentation.spec.spec_backbone_name`.
        budget: ``"paper"`` for the paper's schedule, anything else marks a reduced run.
    """
    from datetime import datetime, timezone

    from ultradino_monai.evaluation.aggregate import segmentation_metrics, write_result

    details = (getattr(evaluator.state, "metric_details", None) or {}).get(metric_name)
    if not details:
        raise RuntimeError(f"the evaluator has no details for metric {metric_name!r}; did it run?")
    split = split_info(split_file)
    pretrained = spec.get("pretrained", {})
    source = pretrained.get("source", "scratch")
    spec_extra = dict(spec.get("extra", {}))
    record = {
        "task": "segmentation",
        "dataset": split.get("dataset") or dataset or "unknown",
        "split_file": str(split_file),
        "split_kind": split["kind"],
        "seed": int(seed),
        "backbone": backbone or spec_extra.get("backbone") or spec_backbone_name(spec),
        "checkpoint": pretrained.get("path") if pretrained.get("sha256") else None,
        "checkpoint_sha256": pretrained.get("sha256") or None,
        "method": method or METHOD_NAMES.get(source, source),
        "budget": str(budget),
        "metrics": segmentation_metrics(details, spec["labels"]),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "section": section,
        "draw": split.get("draw"),
        "split_sha256": split["sha256"],
        "model": str(model_path),
        "model_sha256": sha256_file(model_path),
        "backbone_source": source,
        "registers_dropped": bool(pretrained.get("registers_dropped", False)),
        "image_size": spec.get("image_size"),
        "best_validation": spec_extra.get("best_validation"),
        **dict(extra or {}),
    }
    if is_main_process():
        write_result(result_path, record)
        metrics = record["metrics"]
        logger.info(
            "%s %s: foreground Dice %.4f, per class %s -> %s",
            record["dataset"],
            section,
            metrics["foreground_dice"],
            {name: round(value, 4) if value == value else None for name, value in metrics["dice_per_class"].items()},
            result_path,
        )
    return str(result_path)
