"""Image classifier on a ViT backbone: CLS token -> BatchNorm1d (no affine) -> Linear.

UltraDINO's fine-tuning model for FETAL_PLANES_DB
(``docs/recipe.md`` §1.4, fine-tuning): ``Sequential(backbone -> CLS
token (x_norm_clstoken), BatchNorm1d(D, affine=False, eps=1e-6), Linear(D, num_classes))``,
the MAE-style head. The whole model is trained (full fine-tuning).

``forward(image) -> logits`` returns a plain tensor, so MONAI's ``verify_net_in_out``,
``ckpt_export --use_trace True`` and ONNX export work on it unchanged.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

logger = logging.getLogger(__name__)

__all__ = ["ClassificationHead", "Classifier", "backbone_config", "build_backbone_from_config"]


class ClassificationHead(nn.Module):
    """``BatchNorm1d(in_dim, affine=False, eps=1e-6) -> Linear(in_dim, num_classes)`` (docs/recipe.md §1.4).

    The BatchNorm without affine parameters standardises the features per dimension (the
    MAE linear-probe / fine-tune head); the linear layer keeps ``nn.Linear``'s default
    initialisation, as UltraDINO's head does.

    Args:
        in_dim: feature width D.
        num_classes: number of output logits.
        batch_norm: put the affine-free BatchNorm in front of the linear layer.

    Shapes: ``[B, D]`` float -> ``[B, num_classes]`` logits (unbounded).
    """

    def __init__(self, in_dim: int, num_classes: int, batch_norm: bool = True) -> None:
        super().__init__()
        if in_dim < 1 or num_classes < 1:
            raise ValueError(f"in_dim and num_classes must be positive, got {in_dim}, {num_classes}")
        self.norm = nn.BatchNorm1d(in_dim, affine=False, eps=1e-6) if batch_norm else nn.Identity()
        self.linear = nn.Linear(in_dim, num_classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear(self.norm(features))


class Classifier(nn.Module):
    """Backbone CLS token -> :class:`ClassificationHead`.

    Args:
        backbone: a module whose ``forward(x)`` returns the normalised CLS token ``[B, D]``
            (:class:`~ultradino_monai.networks.vit.DinoVisionTransformer`,
            :class:`~ultradino_monai.networks.vit.BeitBackbone`) and that has ``embed_dim``.
        num_classes: number of classes (6 for FETAL_PLANES_DB).
        batch_norm: keep UltraDINO's affine-free BatchNorm1d in the head.

    Input ``image``: ``[B, C, H, W]`` normalised float (C = backbone ``in_chans``, H and W
    divisible by the patch size). Output ``pred``: logits ``[B, num_classes]``.
    """

    def __init__(self, backbone: nn.Module, num_classes: int, batch_norm: bool = True) -> None:
        super().__init__()
        embed_dim = getattr(backbone, "embed_dim", None)
        if not isinstance(embed_dim, int):
            raise TypeError(f"backbone {type(backbone).__name__} has no integer 'embed_dim'")
        self.backbone = backbone
        mask_token = getattr(backbone, "mask_token", None)
        if isinstance(mask_token, nn.Parameter):
            # only used by masked-image pretraining; frozen so DDP does not wait for its gradient
            mask_token.requires_grad_(False)
        self.head = ClassificationHead(embed_dim, num_classes, batch_norm=batch_norm)
        self.num_classes = int(num_classes)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(image))


def backbone_config(backbone: nn.Module) -> dict[str, Any]:
    """Constructor arguments that rebuild ``backbone`` (architecture only, no weights).

    :class:`DinoVisionTransformer` reports its own :meth:`config`; for the BEiT/USFM
    backbone the arguments are read from the module. The result is JSON-serialisable and
    is stored next to a fine-tuned ``model.pt`` so inference and export can rebuild the
    network without the pretraining checkpoint.
    """
    from ultradino_monai.networks.vit import BeitBackbone, DinoVisionTransformer

    if isinstance(backbone, DinoVisionTransformer):
        return {"class": "DinoVisionTransformer", **backbone.config()}
    if isinstance(backbone, BeitBackbone):
        first_mlp = backbone.blocks[0].mlp.fc1
        return {
            "class": "BeitBackbone",
            "img_size": list(backbone.img_size),
            "patch_size": backbone.patch_size,
            "in_chans": backbone.in_chans,
            "embed_dim": backbone.embed_dim,
            "depth": backbone.n_blocks,
            "num_heads": backbone.num_heads,
            "mlp_ratio": first_mlp.out_features / backbone.embed_dim,
            "init_values": backbone.init_values,
            "arch": backbone.arch,
        }
    raise TypeError(f"cannot describe a backbone of type {type(backbone).__name__}")


def build_backbone_from_config(config: dict[str, Any]) -> nn.Module:
    """Inverse of :func:`backbone_config`: a randomly initialised backbone of that architecture."""
    from ultradino_monai.networks.vit import BeitBackbone, DinoVisionTransformer

    kwargs = dict(config)
    kind = kwargs.pop("class", "DinoVisionTransformer")
    classes = {"DinoVisionTransformer": DinoVisionTransformer, "BeitBackbone": BeitBackbone}
    if kind not in classes:
        raise ValueError(f"unknown backbone class {kind!r}; expected one of {sorted(classes)}")
    return classes[kind](**kwargs)
