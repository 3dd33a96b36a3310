"""The linear probe's datasets (cached features or images) and its report (best head, scored on test)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine

from ultradino_monai.engines.classification.backbone import backbone_record
from ultradino_monai.engines.classification.data import section_items
from ultradino_monai.engines.classification.results import write_classification_result
from ultradino_monai.networks.checkpoints import LoadedBackbone
from ultradino_monai.utils.files import write_json_atomic

__all__ = ["probe_dataset", "report_linear_probe"]


def probe_dataset(
    section: str,
    datalist: str | os.PathLike,
    extractor,
    transforms,
    preprocessing_desc: Mapping[str, Any],
    use_cache: bool,
    cache_dir: str | os.PathLike | None,
    device: torch.device | str,
    batch_size: int = 64,
    num_workers: int = 0,
):
    """Dataset of one datalist section for the probe: cached features, or images.

    ``use_cache`` (no training augmentation): each image goes through the frozen backbone
    once (:func:`~ultradino_monai.evaluation.linear_probe.cached_probe_features`) and the
    dataset serves ``[K+1, D]`` feature tensors. Otherwise a MONAI ``Dataset`` of images
    with ``transforms`` (the model then runs the backbone once per batch for all heads).
    """
    from monai.data import Dataset

    from ultradino_monai.evaluation.linear_probe import FeatureDataset, cached_probe_features

    items = section_items(datalist, section)
    if not use_cache:
        return Dataset(items, transform=transforms)
    cached = cached_probe_features(
        extractor,
        items,
        transforms,
        preprocessing_desc,
        cache_dir,
        device,
        batch_size=batch_size,
        num_workers=num_workers,
        name=section,
    )
    return FeatureDataset(cached["features"], cached["labels"])


def report_linear_probe(
    val_metric,
    test_evaluator: Engine,
    test_metric,
    classes: Sequence[str],
    result_path: str | os.PathLike,
    *,
    datalist: str | os.PathLike,
    loaded: LoadedBackbone,
    seed: int,
    budget: str,
    settings: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Choose the head with the best validation accuracy, score only it on the test set, write the result.

    ``val_metric``: the :class:`~ultradino_monai.evaluation.linear_probe.HeadGridMetric` of the
    validation evaluator (its last run is the end of training). ``test_evaluator`` is run
    here; its ``test_metric`` collects every head's predictions, of which only the chosen
    head's are scored (DINOv2 / UltraDINO report one head, docs/recipe.md §1.4, §2.6).
    Writes ``result_path`` (+ confusion PNG) and ``heads_val_accuracy.json`` next to it.
    """
    if not val_metric.results:
        raise RuntimeError("the validation evaluator has not run; cannot choose a head")
    best = val_metric.results["best_head"]
    val_accuracy = val_metric.results["accuracy"]
    test_evaluator.run()
    spec = next(s for s in val_metric.specs if s.name == best)
    result_path = Path(result_path)
    write_json_atomic(result_path.with_name("heads_val_accuracy.json"), {"best_head": best, "accuracy": val_accuracy})
    return write_classification_result(
        result_path,
        test_metric.results["labels"],
        test_metric.results["predictions"][best],
        classes,
        task="classification_linear_probe",
        datalist=datalist,
        section="test",
        backbone_info=backbone_record(loaded),
        seed=seed,
        budget=budget,
        extra={
            "best_head": {
                "name": best,
                "lr": spec.lr,
                "n_last_blocks": spec.n_last_blocks,
                "use_avgpool": spec.use_avgpool,
                "val_accuracy": val_accuracy[best],
            },
            "num_heads": len(val_metric.specs),
            "settings": dict(settings or {}),
        },
    )
