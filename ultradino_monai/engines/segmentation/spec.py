"""The trained segmenter's ``model.json``: describe the model, write and read the file, rebuild and load.

``model.pt`` (plain state dict of the :class:`~ultradino_monai.networks.segmenter.Segmenter`) plus
``model.json`` (:func:`segmenter_spec`: architecture, labels, image size, normalisation, provenance
of the backbone) are all evaluation and inference need; the pretraining checkpoint is not.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ultradino_monai.engines.model_json import read_model_json, write_model_json
from ultradino_monai.engines.segmentation.data import image_size_hw
from ultradino_monai.engines.segmentation.model import BuiltSegmenter
from ultradino_monai.evaluation.provenance import backbone_name
from ultradino_monai.networks.checkpoints import sidecar_path
from ultradino_monai.networks.segmenter import Segmenter
from ultradino_monai.networks.vit import BeitBackbone, DinoVisionTransformer
from ultradino_monai.utils.distributed import unwrap_model
from ultradino_monai.utils.errors import MissingInputError

logger = logging.getLogger(__name__)

__all__ = [
    "SPEC_FORMAT",
    "SPEC_VERSION",
    "segmenter_spec",
    "spec_backbone_name",
    "write_model_spec",
    "read_model_spec",
    "segmenter_from_spec",
    "load_segmenter",
]


SPEC_FORMAT = "ultradino_monai.segmenter"
SPEC_VERSION = 1


def _backbone_spec(backbone: nn.Module) -> dict[str, Any]:
    if isinstance(backbone, DinoVisionTransformer):
        return {"kind": "vit", "config": backbone.config()}
    if isinstance(backbone, BeitBackbone):
        return {
            "kind": "beit",
            "config": {
                "img_size": list(backbone.img_size),
                "patch_size": backbone.patch_size,
                "in_chans": backbone.in_chans,
                "embed_dim": backbone.embed_dim,
                "depth": backbone.n_blocks,
                "num_heads": backbone.num_heads,
                "mlp_ratio": backbone.blocks[0].mlp.fc1.out_features / backbone.embed_dim,
                "init_values": backbone.init_values,
                "use_abs_pos_emb": backbone.pos_embed is not None,
                "use_rel_pos_bias": getattr(backbone.blocks[0].attn, "relative_position_bias_table", None) is not None,
                "use_shared_rel_pos_bias": backbone.rel_pos_bias is not None,
                "arch": backbone.arch,
            },
        }
    raise TypeError(f"cannot describe a {type(backbone).__name__} backbone in a model spec")


def segmenter_spec(
    built: BuiltSegmenter,
    labels: Mapping[str, int],
    image_size: int | Sequence[int],
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Everything needed to rebuild the trained model and feed it: the ``model.json`` document.

    ``mean`` / ``std``: the normalisation the model was *trained* with when it is not the
    backbone's own (``normalization`` other than ``"auto"``).
    """
    model = unwrap_model(built.model)
    if len(labels) != model.num_classes:
        raise ValueError(f"{len(labels)} labels {dict(labels)} for a {model.num_classes}-class model")
    info = built.info
    return {
        "format": SPEC_FORMAT,
        "version": SPEC_VERSION,
        "num_classes": model.num_classes,
        "labels": {str(k): int(v) for k, v in labels.items()},
        "image_size": list(image_size_hw(image_size)),
        "in_chans": int(built.in_chans),
        "mean": [float(v) for v in (built.mean if mean is None else mean)],
        "std": [float(v) for v in (built.std if std is None else std)],
        "backbone": _backbone_spec(model.backbone),
        "decoder": model.decoder_config(),
        "pretrained": {
            "source": built.source,
            "path": info.get("path"),
            "sha256": info.get("sha256"),
            "registers_dropped": "registers-dropped" in info.get("dropped", {}),
        },
        "extra": dict(extra or {}),
    }


def spec_backbone_name(spec: Mapping[str, Any]) -> str:
    """:func:`~ultradino_monai.evaluation.provenance.backbone_name` of the backbone ``spec`` describes, with its
    family: ``vit_small_patch16``, ``vit_custom_d192x6_patch16``, ``beit_patch16``, ``beit_usfm_patch16``."""
    backbone = spec["backbone"]
    config = backbone["config"]
    return backbone_name(
        config.get("arch"), config.get("embed_dim"), config.get("depth"), config.get("patch_size"), backbone["kind"]
    )


def write_model_spec(model_path: str | os.PathLike, spec: Mapping[str, Any]) -> str:
    """Write ``spec`` next to ``model_path`` (``model.pt`` -> ``model.json``), atomically; rank 0 only."""
    return str(write_model_json(sidecar_path(model_path), spec))


def read_model_spec(model_path: str | os.PathLike) -> dict[str, Any]:
    """Read the ``model.json`` that belongs to ``model.pt``, with a clear error when it is missing."""
    return read_model_json(
        sidecar_path(model_path),
        SPEC_FORMAT,
        "segmenter description",
        f"{model_path} needs the model description written by the segmentation "
        "bundle's training run (train.json writes model.pt and model.json into model_dir)",
    )


def segmenter_from_spec(spec: Mapping[str, Any]) -> Segmenter:
    """A :class:`Segmenter` with the architecture of ``spec`` (random weights, eval mode)."""
    backbone_spec = spec["backbone"]
    config = dict(backbone_spec["config"])
    if backbone_spec["kind"] == "vit":
        backbone: nn.Module = DinoVisionTransformer(**config)
    elif backbone_spec["kind"] == "beit":
        backbone = BeitBackbone(**config)
    else:
        raise ValueError(f"unknown backbone kind {backbone_spec['kind']!r}")
    decoder = dict(spec["decoder"])
    model = Segmenter(backbone, num_classes=int(spec["num_classes"]), **decoder)
    return model.eval()


def load_segmenter(model_path: str | os.PathLike, device: str | torch.device = "cpu") -> Segmenter:
    """Rebuild the trained segmenter from ``model.json`` and load ``model.pt`` strictly (eval mode)."""
    model_path = Path(model_path)
    if not model_path.is_file():
        raise MissingInputError(
            f"trained model not found: {model_path}; run the segmentation bundle's train.json first"
        )
    model = segmenter_from_spec(read_model_spec(model_path))
    state = torch.load(model_path, map_location="cpu", weights_only=True)
    if isinstance(state, Mapping) and "model" in state and isinstance(state["model"], Mapping):
        state = state["model"]
    model.load_state_dict(state, strict=True)
    logger.info("loaded the trained segmenter %s", model_path)
    return model.to(device).eval()
