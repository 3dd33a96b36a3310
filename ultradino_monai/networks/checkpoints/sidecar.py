"""Backbone export: ``backbone.pt`` (plain state dict, timm keys) and its ``backbone.json`` sidecar.

:func:`save_backbone` writes both; :func:`_read_sidecar` reads and checks the sidecar when a
file is loaded (it marks the file as an UltraDINO export, rule 2 of source detection).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ultradino_monai.networks.checkpoints.errors import CheckpointError
from ultradino_monai.networks.checkpoints.normalisation import _resolve_normalisation
from ultradino_monai.networks.vit import DinoVisionTransformer
from ultradino_monai.utils.distributed import unwrap_model
from ultradino_monai.utils.files import atomic_write, sha256_file, write_json_atomic

logger = logging.getLogger(__name__)


SIDECAR_FORMAT = "ultradino_monai.backbone"
SIDECAR_VERSION = 1
_SIDECAR_REQUIRED = (
    "arch",
    "patch_size",
    "in_chans",
    "num_register_tokens",
    "embed_dim",
    "depth",
    "num_heads",
    "init_values",
    "img_size",
    "mean",
    "std",
)


def sidecar_path(path_pt: str | os.PathLike) -> Path:
    """The JSON sidecar that goes with a backbone file: ``backbone.pt`` → ``backbone.json``."""
    return Path(path_pt).with_suffix(".json")


def save_backbone(
    model: nn.Module,
    path_pt: str | os.PathLike,
    extra_info: Mapping[str, Any] | None = None,
    *,
    mean: tuple[float, ...] | list[float] | None = None,
    std: tuple[float, ...] | list[float] | None = None,
) -> dict[str, Any]:
    """Export a backbone as ``backbone.pt`` (plain state dict, timm keys) + ``backbone.json``.

    Both files are written through a temporary file and ``os.replace``. The sidecar holds the
    architecture (:meth:`DinoVisionTransformer.config`), the normalisation, the sha256 of the
    weights file (checked by :func:`load_backbone`) and ``extra_info`` under ``"extra"``.

    Args:
        model: a :class:`DinoVisionTransformer` (DDP ``.module`` / ``torch.compile`` wrappers are unwrapped).
        path_pt: weights file; the sidecar is ``path_pt`` with suffix ``.json``.
        extra_info: JSON-serialisable provenance (iteration, config hash, ...).
        mean, std: normalisation the weights expect; default FUS for 1 channel, ImageNet for 3.

    Returns:
        the sidecar document.
    """
    backbone = unwrap_model(model)
    if not isinstance(backbone, DinoVisionTransformer):
        raise TypeError(f"save_backbone expects a DinoVisionTransformer, got {type(backbone).__name__}")
    path = Path(path_pt)
    if path.suffix == ".json":
        raise ValueError(f"{path}: the weights file cannot have the sidecar suffix .json")
    mean_t, std_t = _resolve_normalisation(backbone.in_chans, mean, std, default_source="ultradino")
    extra = dict(extra_info or {})
    try:
        json.dumps(extra)
    except TypeError as error:
        raise ValueError(f"extra_info must be JSON-serialisable: {error}") from error

    state = {key: value.detach().to("cpu").clone().contiguous() for key, value in backbone.state_dict().items()}
    atomic_write(path, lambda temporary: torch.save(state, temporary))
    digest = sha256_file(path)
    document = {
        "format": SIDECAR_FORMAT,
        "version": SIDECAR_VERSION,
        **backbone.config(),
        "mean": list(mean_t),
        "std": list(std_t),
        "sha256": digest,
        "weights_file": path.name,
        "extra": extra,
    }
    write_json_atomic(sidecar_path(path), document)
    logger.info("saved backbone %s (%s, %d tensors) and %s", path, backbone.arch, len(state), sidecar_path(path).name)
    return document


def _read_sidecar(path: Path, digest: str) -> dict[str, Any] | None:
    candidate = sidecar_path(path)
    if not candidate.is_file():
        return None
    try:
        document = json.loads(candidate.read_text())
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{candidate}: sidecar is not valid JSON ({error})") from error
    if not isinstance(document, dict) or document.get("format") != SIDECAR_FORMAT:
        logger.info("%s is not a %s sidecar; ignoring it", candidate, SIDECAR_FORMAT)
        return None
    missing = [key for key in _SIDECAR_REQUIRED if key not in document]
    if missing:
        raise CheckpointError(f"{candidate}: sidecar lacks {missing}")
    if document.get("sha256") and document["sha256"] != digest:
        raise CheckpointError(
            f"{candidate}: sidecar was written for a different weights file "
            f"(sha256 {document['sha256'][:12]}…, file has {digest[:12]}…)"
        )
    return document
