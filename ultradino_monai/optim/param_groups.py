"""Layer-wise lr decay and weight-decay exemptions for AdamW (docs/recipe.md §2.3).

Per parameter (names in timm ViT keys, optionally prefixed by ``backbone.`` /
``dino_head.`` / ``module.`` ...)::

    layer_id = 0                 embeddings: patch_embed, pos_embed, cls_token, reg_token,
                                 register_tokens, mask_token
             = i + 1             blocks.i.*
             = num_layers + 1    everything else (final norm, heads)
    lr_multiplier = lr_decay_rate ** (num_layers + 1 - layer_id)      (x patch_embed_lr_mult
                                                                        for patch_embed.*)
    wd_multiplier = 0 for biases, names containing "norm", LayerScale "gamma"; else 1
    is_last_layer = "last_layer" in name      (the DINO head prototypes)

With the recipe's 0.9 decay, 12 blocks and patch-embed multiplier 0.2: embeddings
0.9^13 = 0.254, block 0 0.9^12 = 0.282, block 11 0.9, norm/heads 1.0, patch_embed
0.9^13 * 0.2 = 0.051. ``pos_embed`` and the tokens *are* weight-decayed.

Fine-tuning fixes the rates once: :func:`scale_params_groups` writes the peak
``lr = lr * lr_multiplier`` and ``weight_decay = wd * wd_multiplier`` into each group, and
an lr scheduler scales them. DINOv2 pretraining rewrites them at every iteration:
:func:`apply_optim_scheduler` writes ``lr = (last_layer_lr if is_last_layer else lr) *
lr_multiplier`` and ``weight_decay = wd * wd_multiplier``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

__all__ = [
    "EMBEDDING_NAMES",
    "layer_id_for_name",
    "get_params_groups_with_decay",
    "fuse_params_groups",
    "scale_params_groups",
    "apply_optim_scheduler",
]

logger = logging.getLogger(__name__)

EMBEDDING_NAMES = frozenset({"patch_embed", "pos_embed", "cls_token", "reg_token", "register_tokens", "mask_token"})
# Wrappers that only add a prefix: DDP / DataParallel, torch.compile, FSDP.
_WRAPPER_PREFIXES = ("module", "_orig_mod", "_fsdp_wrapped_module")


def _strip_wrappers(name: str) -> str:
    return ".".join(part for part in name.split(".") if part not in _WRAPPER_PREFIXES)


def layer_id_for_name(name: str, num_layers: int) -> int:
    """Layer index used by the lr decay: 0 embeddings, ``i + 1`` for ``blocks.i``, else ``num_layers + 1``."""
    parts = _strip_wrappers(name).split(".")
    if any(part in EMBEDDING_NAMES for part in parts):
        return 0
    for part, nxt in zip(parts[:-1], parts[1:]):
        if part == "blocks" and nxt.isdigit():
            block = int(nxt)
            if block >= num_layers:
                raise ValueError(f"{name!r} is block {block} but num_layers={num_layers}")
            return block + 1
    return num_layers + 1


def _infer_num_layers(names: Sequence[str]) -> int:
    blocks = [
        int(nxt)
        for name in names
        for part, nxt in zip(_strip_wrappers(name).split(".")[:-1], _strip_wrappers(name).split(".")[1:])
        if part == "blocks" and nxt.isdigit()
    ]
    return max(blocks) + 1 if blocks else 0


def get_params_groups_with_decay(
    model: nn.Module | Iterable[tuple[str, torch.Tensor]],
    lr_decay_rate: float = 0.9,
    patch_embed_lr_mult: float = 0.2,
    num_layers: int | None = None,
) -> list[dict[str, Any]]:
    """One optimiser group per trainable parameter, with the multipliers of the module docstring.

    Args:
        model: a module, or an iterable of ``(name, parameter)`` pairs such as
            ``model.named_parameters()``. Parameters with ``requires_grad=False`` are skipped.
        lr_decay_rate: layer-wise lr decay (0.9, DINOv2 ``optim.layerwise_decay``).
        patch_embed_lr_mult: extra lr factor of ``patch_embed.*`` (0.2).
        num_layers: number of transformer blocks; default: inferred as the largest
            ``blocks.i`` index + 1 (0 for a head-only module, whose parameters then all
            get multiplier 1, as DINOv2 does when it groups the head on its own).

    Returns:
        list of ``{"params": [p], "name", "lr_multiplier", "wd_multiplier", "is_last_layer"}``;
        usable directly as optimiser groups or after :func:`fuse_params_groups`.
    """
    named = list(model.named_parameters() if isinstance(model, nn.Module) else model)
    if not named:
        raise ValueError("no parameters given")
    if num_layers is None:
        num_layers = _infer_num_layers([name for name, _ in named])
    if num_layers < 0:
        raise ValueError(f"num_layers must be >= 0, got {num_layers}")
    groups = []
    for name, param in named:
        if not param.requires_grad:
            continue
        clean = _strip_wrappers(name)
        layer_id = layer_id_for_name(clean, num_layers)
        lr_multiplier = lr_decay_rate ** (num_layers + 1 - layer_id)
        if "patch_embed" in clean.split("."):
            lr_multiplier *= patch_embed_lr_mult
        last = clean.split(".")[-1]
        no_decay = last == "bias" or "norm" in clean or "gamma" in clean
        groups.append(
            {
                "params": [param],
                "name": clean,
                "lr_multiplier": lr_multiplier,
                "wd_multiplier": 0.0 if no_decay else 1.0,
                "is_last_layer": "last_layer" in clean,
            }
        )
        logger.debug("%s: lr_multiplier %.4g, wd_multiplier %g", clean, lr_multiplier, groups[-1]["wd_multiplier"])
    return groups


def fuse_params_groups(
    params_groups: Iterable[dict[str, Any]],
    keys: Sequence[str] = ("lr_multiplier", "wd_multiplier", "is_last_layer"),
) -> list[dict[str, Any]]:
    """Merge groups that agree on ``keys`` (fewer groups, faster foreach AdamW).

    Each fused group has ``params`` (list), the ``keys`` values and ``names`` (list of the
    member parameter names, for logging). Order follows first appearance.
    """
    fused: dict[tuple, dict[str, Any]] = {}
    for group in params_groups:
        missing = [k for k in keys if k not in group]
        if missing:
            raise KeyError(f"param group {group.get('name', '?')!r} lacks {missing}")
        identifier = tuple(group[k] for k in keys)
        entry = fused.setdefault(identifier, {"params": [], "names": [], **{k: group[k] for k in keys}})
        params = group["params"]
        entry["params"].extend(params if isinstance(params, (list, tuple)) else [params])
        entry["names"].append(group.get("name", ""))
    return list(fused.values())


def scale_params_groups(
    params_groups: Iterable[dict[str, Any]], lr: float, weight_decay: float
) -> list[dict[str, Any]]:
    """Set each group's ``lr = lr * lr_multiplier`` and ``weight_decay = weight_decay * wd_multiplier``, in place.

    Returns the groups as a list, ready for the optimiser.
    """
    groups = list(params_groups)
    for group in groups:
        group["lr"] = float(lr) * group["lr_multiplier"]
        group["weight_decay"] = float(weight_decay) * group["wd_multiplier"]
    return groups


def apply_optim_scheduler(optimizer: torch.optim.Optimizer, lr: float, wd: float, last_layer_lr: float) -> None:
    """Write this iteration's lr / weight decay into every group (multipliers applied)."""
    for group in optimizer.param_groups:
        try:
            lr_multiplier = group["lr_multiplier"]
            wd_multiplier = group["wd_multiplier"]
            is_last_layer = group["is_last_layer"]
        except KeyError as err:
            raise KeyError(
                f"optimizer group lacks {err}; build the optimizer from get_params_groups_with_decay() groups"
            ) from None
        group["lr"] = (last_layer_lr if is_last_layer else lr) * lr_multiplier
        group["weight_decay"] = wd * wd_multiplier
