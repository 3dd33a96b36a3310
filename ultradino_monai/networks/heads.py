"""Projection heads for DINOv2-style self-supervised pretraining.

:class:`DINOHead` is the head shared by the DINO (CLS-token) and iBOT (patch-token)
objectives in the DINOv2 default recipe (see
``docs/recipe.md`` §2.2: ``separate_head false``)::

    x [*, in_dim] -> Linear -> GELU -> Linear -> GELU -> Linear -> [*, bottleneck_dim]
                  -> L2-normalise -> weight-normalised Linear(bottleneck_dim, K, bias=False)
                  -> logits [*, K]

The prototypes layer is called ``last_layer`` so that the training engine can find its
parameters by name (``"last_layer" in name``) and hold its learning rate at zero during
the first ``freeze_last_layer_epochs`` (docs/recipe.md §2.2, §2.3).
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

__all__ = ["DINOHead", "build_mlp"]

logger = logging.getLogger(__name__)


def build_mlp(
    nlayers: int, in_dim: int, bottleneck_dim: int, hidden_dim: int, use_bn: bool = False, bias: bool = True
) -> nn.Module:
    """MLP ``in_dim -> hidden_dim (x nlayers-1, GELU[, BN]) -> bottleneck_dim``.

    ``nlayers == 1`` gives a single ``Linear(in_dim, bottleneck_dim)``.
    """
    if nlayers < 1:
        raise ValueError(f"nlayers must be >= 1, got {nlayers}")
    if nlayers == 1:
        return nn.Linear(in_dim, bottleneck_dim, bias=bias)
    layers: list[nn.Module] = []
    dims = [in_dim] + [hidden_dim] * (nlayers - 1)
    for d_in, d_out in zip(dims[:-1], dims[1:]):
        layers.append(nn.Linear(d_in, d_out, bias=bias))
        if use_bn:
            layers.append(nn.BatchNorm1d(d_out))
        layers.append(nn.GELU())
    layers.append(nn.Linear(hidden_dim, bottleneck_dim, bias=bias))
    return nn.Sequential(*layers)


class DINOHead(nn.Module):
    """DINO / iBOT projection head (DINOv2 defaults, docs/recipe.md §2.2).

    Args:
        in_dim: backbone embedding width D (384 for ViT-S, 768 for ViT-B).
        out_dim: number of prototypes K (65,536 in the DINOv2 default recipe).
        hidden_dim: width of the hidden MLP layers (2048).
        bottleneck_dim: width of the L2-normalised bottleneck (256).
        nlayers: number of Linear layers in the MLP (3).
        use_bn: insert BatchNorm1d after the hidden layers (off in DINOv2; BatchNorm
            also breaks the per-sample independence the EMA teacher relies on).
        mlp_bias: biases in the MLP layers.
        freeze_last_layer_norm: if True, the weight-norm magnitude ``g`` of the prototypes
            layer is excluded from training (``requires_grad=False``) so each prototype
            keeps unit norm forever, as DINO v1's ``norm_last_layer=True``. DINOv2 (and
            therefore UltraDINO) fills ``g`` with 1 at construction but leaves it
            trainable, so the paper-parity default is False.

    Shapes:
        input ``[..., in_dim]`` -> logits ``[..., out_dim]``. With ``g == 1`` and a
        unit-norm bottleneck each logit is a cosine similarity in ``[-1, 1]``.

    The prototypes layer uses :func:`torch.nn.utils.parametrizations.weight_norm`:
    its parameters are ``last_layer.parametrizations.weight.original0`` (``g``,
    ``[K, 1]``) and ``...original1`` (``v``, ``[K, bottleneck_dim]``), and
    ``weight = g * v / ||v||`` row-wise. Old-style ``last_layer.weight_g`` /
    ``last_layer.weight_v`` keys (DINOv2 / UltraDINO checkpoints) are converted on
    ``load_state_dict`` by torch's compatibility hook.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int = 65536,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        nlayers: int = 3,
        use_bn: bool = False,
        mlp_bias: bool = True,
        freeze_last_layer_norm: bool = False,
    ) -> None:
        super().__init__()
        for name, value in (("in_dim", in_dim), ("out_dim", out_dim), ("bottleneck_dim", bottleneck_dim)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if nlayers > 1 and hidden_dim < 1:
            raise ValueError(f"hidden_dim must be >= 1 when nlayers > 1, got {hidden_dim}")
        self.in_dim = in_dim
        self.out_dim = out_dim
        self.bottleneck_dim = bottleneck_dim
        self.mlp = build_mlp(nlayers, in_dim, bottleneck_dim, hidden_dim=hidden_dim, use_bn=use_bn, bias=mlp_bias)
        self._flatten_tokens = use_bn and nlayers > 1
        # Only the MLP gets the truncated-normal init; the prototypes keep nn.Linear's
        # default init for the direction v (as DINOv2 does) and get unit magnitude g.
        self.mlp.apply(self._init_weights)
        self.last_layer = weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False), name="weight", dim=0)
        magnitude = self.last_layer.parametrizations.weight.original0
        with torch.no_grad():
            magnitude.fill_(1.0)
        if freeze_last_layer_norm:
            magnitude.requires_grad_(False)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    def forward_bottleneck(self, x: torch.Tensor) -> torch.Tensor:
        """MLP + L2 normalisation: ``[..., in_dim] -> [..., bottleneck_dim]`` (unit norm)."""
        x = self.mlp(x)
        # fp16 cannot represent 1e-12; keep the epsilon representable in the input dtype.
        eps = 1e-6 if x.dtype == torch.float16 else 1e-12
        return F.normalize(x, p=2, dim=-1, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_dim:
            raise ValueError(f"DINOHead expected last dim {self.in_dim}, got input of shape {tuple(x.shape)}")
        if x.ndim > 2 and self._flatten_tokens:
            # BatchNorm1d reads dim 1 as channels; flatten leading dims so tokens are samples.
            lead = x.shape[:-1]
            return self.last_layer(self.forward_bottleneck(x.reshape(-1, x.shape[-1]))).reshape(*lead, self.out_dim)
        return self.last_layer(self.forward_bottleneck(x))
