"""Reading a checkpoint file and finding what it holds: container, backbone prefix, source.

See the package docstring (**Reading the file**, **Finding the weights**, **Finding the
backbone**, **Source detection**) for the rules.
"""

from __future__ import annotations

import logging
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ultradino_monai.networks.checkpoints.errors import CheckpointError

logger = logging.getLogger(__name__)

_CONTAINER_KEYS = ("model", "state_dict", "teacher", "student", "module")
_ANCHOR = "patch_embed.proj.weight"
_SSL_HEAD = re.compile(r"^(module\.)?((student|teacher)\.)?(head|dino_head|ibot_head)\.")


def _read_file(path: Path, trust_pickle: bool) -> Any:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as error:  # safetensors raises its own error types
            raise CheckpointError(f"{path}: cannot read safetensors file ({error})") from error
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if not trust_pickle:
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise CheckpointError(
                f"{path}: weights_only loading refused the file: it pickles Python objects (e.g. training "
                f"args) or is not a PyTorch checkpoint ({first_line}). If the file comes from a source you "
                "trust, pass trust_pickle=True."
            ) from error
    except Exception as error:
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({type(error).__name__}: {error})") from error
    logger.warning("%s: loading with weights_only=False (trust_pickle=True)", path)
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({type(error).__name__}: {error})") from error


def _find_weights(raw: Any, path: Path) -> tuple[dict[str, torch.Tensor], list[str], list[str]]:
    """Descend through training-checkpoint containers down to a flat mapping of tensors."""
    container: list[str] = []
    ignored: list[str] = []
    node = raw
    while True:
        if not isinstance(node, Mapping):
            where = ".".join(container) or "top level"
            raise CheckpointError(f"{path}: expected a mapping of tensors at {where}, got {type(node).__name__}")
        if node and all(isinstance(value, torch.Tensor) for value in node.values()):
            return dict(node), container, ignored
        chosen = next((key for key in _CONTAINER_KEYS if isinstance(node.get(key), Mapping)), None)
        if chosen is None:
            others = [str(key) for key, value in node.items() if not isinstance(value, torch.Tensor)]
            raise CheckpointError(
                f"{path}: not a state dict: entries {others[:10]} are not tensors and none of "
                f"{list(_CONTAINER_KEYS)} holds one"
            )
        ignored.extend(".".join(container + [str(key)]) for key in node if key != chosen)
        container.append(chosen)
        node = node[chosen]


def _select_backbone(
    weights: dict[str, torch.Tensor], path: Path
) -> tuple[dict[str, torch.Tensor], str, dict[str, list[str]]]:
    anchors = [key for key in weights if key.endswith(_ANCHOR)]
    if not anchors:
        raise CheckpointError(
            f"{path}: no '{_ANCHOR}' key, so this is not a ViT backbone; first keys: {sorted(weights)[:8]}"
        )
    if len(anchors) > 1:
        teacher = [key for key in anchors if key.startswith("teacher.")]
        if len(teacher) != 1:
            raise CheckpointError(f"{path}: several backbones in one file ({anchors}); cannot choose")
        anchors = teacher
    prefix = anchors[0][: -len(_ANCHOR)]
    backbone = {key[len(prefix) :]: value for key, value in weights.items() if key.startswith(prefix)}
    dropped: dict[str, list[str]] = {}
    unexpected = []
    for key in weights:
        if key.startswith(prefix):
            continue
        if prefix.startswith("teacher."):
            dropped.setdefault("training-state", []).append(key)
        elif _SSL_HEAD.match(key):
            dropped.setdefault("ssl-head", []).append(key)
        else:
            unexpected.append(key)
    if unexpected:
        raise CheckpointError(
            f"{path}: keys outside the backbone prefix {prefix!r} that no rule drops: {sorted(unexpected)[:20]}"
        )
    return backbone, prefix, dropped


def _detect_source(
    keys: Mapping[str, torch.Tensor], sidecar: dict | None, container: list[str], prefix: str
) -> tuple[str, str]:
    if "rel_pos_bias.relative_position_bias_table" in keys or any(
        key.endswith(("attn.q_bias", "attn.relative_position_bias_table")) for key in keys
    ):
        return "usfm", "BEiT keys (q_bias / relative position bias)"
    if sidecar is not None:
        return "ultradino", "sidecar JSON written by save_backbone"
    if "register_tokens" in keys or "mask_token" in keys:
        name = "register_tokens" if "register_tokens" in keys else "mask_token"
        training = prefix.startswith("teacher.") or bool(set(container) & {"teacher", "model"})
        channels = keys[_ANCHOR].shape[1]
        if training:
            return "ultradino", f"DINOv2 key {name!r} in a training checkpoint ({'.'.join(container) or prefix})"
        if channels == 1:
            return "ultradino", f"DINOv2 key {name!r} with a 1-channel patch embedding"
        return "dinov2", f"DINOv2 key {name!r} with a {channels}-channel patch embedding"
    if "masked_embed" in keys:
        return "ibot", "iBOT key 'masked_embed'"
    if prefix in ("backbone.", "module.backbone.") or bool(set(container) & {"teacher", "student"}):
        return "ibot", f"iBOT/DINO training layout (container {container}, prefix {prefix!r})"
    return "timm", "plain ViT keys"
