"""The fine-tuned classifier's ``model.json`` sidecar: write it, read it, rebuild the network from it."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from ultradino_monai.engines.model_json import read_model_json, write_model_json
from ultradino_monai.networks.classifier import Classifier, backbone_config, build_backbone_from_config
from ultradino_monai.utils.distributed import unwrap_model

__all__ = ["MODEL_SIDECAR_FORMAT", "write_model_sidecar", "read_model_sidecar", "classifier_from_sidecar"]


MODEL_SIDECAR_FORMAT = "ultradino_monai.classifier"


def write_model_sidecar(
    network: nn.Module,
    path: str | os.PathLike,
    classes: Sequence[str],
    normalization: str,
    spatial_size: Sequence[int],
    pretrained: Mapping[str, Any],
) -> dict[str, Any]:
    """Write ``model.json`` next to the fine-tuned ``model.pt``: enough to rebuild the network.

    Holds the backbone architecture (:func:`~ultradino_monai.networks.classifier.backbone_config`),
    the class names, whether the head has its BatchNorm, the normalisation name and the input
    size, plus ``pretrained``: the starting backbone's :func:`backbone_record` (for the result
    records of later evaluations). Inference and export build
    the network from this file alone (:func:`classifier_from_sidecar`).
    """
    module = unwrap_model(network)
    if not isinstance(module, Classifier):
        raise TypeError(f"expected a Classifier, got {type(module).__name__}")
    document = {
        "format": MODEL_SIDECAR_FORMAT,
        "version": 1,
        "classes": list(classes),
        "num_classes": module.num_classes,
        "head_batch_norm": isinstance(module.head.norm, nn.BatchNorm1d),
        "normalization": normalization,
        "spatial_size": [int(s) for s in spatial_size],
        "backbone": backbone_config(module.backbone),
        "pretrained": dict(pretrained),
    }
    if len(document["classes"]) != module.num_classes:
        raise ValueError(f"{len(classes)} class names for a {module.num_classes}-class network")
    write_model_json(path, document)
    return document


def read_model_sidecar(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check a ``model.json`` written by :func:`write_model_sidecar`."""
    return read_model_json(
        path,
        MODEL_SIDECAR_FORMAT,
        "classifier sidecar",
        "it is written by the classification train config next to models/model.pt; "
        "fine-tune first (python -m monai.bundle run --config_file bundles/classification/configs/train.json)",
    )


def classifier_from_sidecar(path: str | os.PathLike) -> Classifier:
    """A randomly initialised :class:`Classifier` with the architecture recorded in ``path``."""
    document = read_model_sidecar(path)
    backbone = build_backbone_from_config(document["backbone"])
    return Classifier(backbone, document["num_classes"], batch_norm=document["head_batch_norm"])
