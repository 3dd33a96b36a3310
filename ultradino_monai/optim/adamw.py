"""One AdamW builder for pretraining and fine-tuning.

With ``layer_decay`` (the DINOv2 groups of :mod:`ultradino_monai.optim.param_groups`), parameter
``p`` of layer ``layer_id(p)`` (0 embeddings, ``i + 1`` for block ``i``, ``depth + 1`` for the
rest: final norm, heads, decoders) trains at::

    lr(p) = lr * layer_decay_rate ** (depth + 1 - layer_id(p))      (x patch_embed_lr_mult for patch_embed.*)
    wd(p) = 0 for biases, norms and LayerScale gamma, else weight_decay

and parameters that share both multipliers share one group. Without it, every trainable parameter
trains at ``lr`` / ``weight_decay`` in one group. These are the peak values: a scheduler scales
them (:mod:`ultradino_monai.optim.schedules`), or the DINOv2 trainer rewrites them every iteration
(:func:`~ultradino_monai.optim.param_groups.apply_optim_scheduler`).

Frozen parameters (``requires_grad=False``) are left out; AdamW would skip them anyway, as their
gradient stays ``None``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

import torch
from torch import nn

from ultradino_monai.optim.param_groups import fuse_params_groups, get_params_groups_with_decay, scale_params_groups
from ultradino_monai.utils.distributed import unwrap_model

__all__ = ["adamw_kernel", "backbone_depth", "build_adamw"]

logger = logging.getLogger(__name__)

# dtypes torch's fused AdamW kernel accepts
_FUSED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def adamw_kernel(params: Iterable[torch.Tensor]) -> dict[str, bool]:
    """``{"fused": True}`` when every parameter is a floating-point CUDA tensor, else ``{"foreach": True}``.

    The fused kernel updates all tensors in one launch; the foreach one batches them per operation.
    Both compute the same AdamW update; their results differ only by floating-point rounding.
    """
    params = list(params)
    if params and all(p.device.type == "cuda" and p.dtype in _FUSED_DTYPES for p in params):
        return {"fused": True}
    return {"foreach": True}


def backbone_depth(model: nn.Module) -> int | None:
    """Number of transformer blocks of ``model.backbone`` (``n_blocks``, else ``len(blocks)``); None without one.

    None lets :func:`~ultradino_monai.optim.param_groups.get_params_groups_with_decay` infer it from the names.
    """
    backbone = getattr(model, "backbone", None)
    if backbone is None:
        return None
    if hasattr(backbone, "n_blocks"):
        return int(backbone.n_blocks)
    blocks = getattr(backbone, "blocks", None)
    return len(blocks) if blocks is not None else None


def build_adamw(
    model: nn.Module,
    lr: float,
    weight_decay: float,
    betas: Sequence[float] = (0.9, 0.999),
    layer_decay: bool = True,
    layer_decay_rate: float = 0.9,
    patch_embed_lr_mult: float = 1.0,
    num_layers: int | None = None,
) -> torch.optim.AdamW:
    """AdamW over ``model``'s trainable parameters (rates in the module docstring).

    Args:
        model: the network; DDP / ``torch.compile`` wrappers are stripped first, so parameter names
            are those of the bare model.
        lr, weight_decay: peak learning rate and decoupled weight decay (0 for both when the DINOv2
            trainer sets them every iteration).
        betas: Adam's moment coefficients.
        layer_decay: apply the per-parameter multipliers; False puts every parameter in one group.
        layer_decay_rate: lr factor per block counted from the top (DINOv2 pretraining 0.9).
        patch_embed_lr_mult: extra lr factor of the patch embedding (DINOv2 pretraining 0.2).
        num_layers: transformer depth; default :func:`backbone_depth`.
    """
    module = unwrap_model(model)
    betas = tuple(float(b) for b in betas)
    if not layer_decay:
        params = [p for p in module.parameters() if p.requires_grad]
        logger.info(
            "optimizer: AdamW lr %g, wd %g on all %d tensors (layer-wise decay off)", lr, weight_decay, len(params)
        )
        return torch.optim.AdamW(
            params, lr=float(lr), weight_decay=float(weight_decay), betas=betas, **adamw_kernel(params)
        )
    if num_layers is None:
        num_layers = backbone_depth(module)
    groups = get_params_groups_with_decay(
        module,
        lr_decay_rate=float(layer_decay_rate),
        patch_embed_lr_mult=float(patch_embed_lr_mult),
        num_layers=num_layers,
    )
    groups = scale_params_groups(fuse_params_groups(groups), lr, weight_decay)
    logger.info(
        "optimizer: AdamW lr %g, wd %g, layer-wise decay %g over %s blocks (%d groups, lr x%.3g .. x%.3g)",
        lr,
        weight_decay,
        layer_decay_rate,
        num_layers,
        len(groups),
        min(g["lr_multiplier"] for g in groups),
        max(g["lr_multiplier"] for g in groups),
    )
    params = [p for group in groups for p in group["params"]]
    return torch.optim.AdamW(
        groups, lr=float(lr), weight_decay=float(weight_decay), betas=betas, **adamw_kernel(params)
    )
