"""ViT + UperNet semantic segmenter: ``image [B, C, H, W] -> logits [B, K, H, W]``.

The UltraDINO segmentation model (``docs/recipe.md`` §1.5): a ViT
backbone gives the outputs of blocks ``out_indices`` (0-based; 3, 5, 7, 11 for the 12-block
ViT-S/B), each through the final LayerNorm and reshaped to ``[B, D, H/p, W/p]``; a simple
feature pyramid (:class:`~ultradino_monai.networks.upernet.SimpleFeaturePyramid`) and an
mmseg UPerHead (:class:`~ultradino_monai.networks.upernet.UPerHead`) decode them; the
stride-4 logits are upsampled bilinearly (``align_corners=False``) to the input size.

``forward`` returns a plain tensor, so MONAI's ``verify_net_in_out`` and ``SimpleInferer``
work on it directly (bundle input key ``image``, output key ``pred``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ultradino_monai.networks.upernet import SimpleFeaturePyramid, UPerHead

logger = logging.getLogger(__name__)

__all__ = ["Segmenter", "default_out_indices"]

#: Intermediate blocks of the 12-block ViT-S/B used by UltraDINO's UperNet (docs/recipe.md §1.5).
VIT_12_OUT_INDICES = (3, 5, 7, 11)


def default_out_indices(depth: int) -> tuple[int, int, int, int]:
    """Blocks that feed the pyramid for a ``depth``-block ViT.

    12 blocks: (3, 5, 7, 11), UltraDINO's choice (docs/recipe.md §1.5). Other depths (the small demo and test
    backbones, ViT-L) get the same relative positions, ``round((i + 1) * depth / 12) - 1``
    for i in (3, 5, 7, 11), which gives (1, 2, 3, 5) for 6 blocks and (7, 11, 15, 23) for 24.
    Fewer than 4 blocks cannot give 4 distinct levels: an error.
    """
    depth = int(depth)
    if depth < 4:
        raise ValueError(f"a {depth}-block backbone cannot feed a 4-level pyramid; pass out_indices explicitly")
    if depth == 12:
        return VIT_12_OUT_INDICES
    indices = tuple(max(0, round((i + 1) * depth / 12) - 1) for i in VIT_12_OUT_INDICES)
    if len(set(indices)) != 4:
        indices = tuple(range(depth - 4, depth))
    return indices  # type: ignore[return-value]


class Segmenter(nn.Module):
    """ViT backbone + simple feature pyramid + UPerHead.

    Args:
        backbone: a :class:`~ultradino_monai.networks.vit.DinoVisionTransformer` or
            :class:`~ultradino_monai.networks.vit.BeitBackbone` (anything with ``embed_dim``,
            ``n_blocks`` and DINOv2's ``get_intermediate_layers(x, indices, norm, reshape)``).
        num_classes: K, logits per pixel including background (FASS 5, JNU-IFM 3).
        out_indices: four 0-based block indices, shallow to deep; ``None`` =
            :func:`default_out_indices` (3, 5, 7, 11 for 12 blocks).
        decoder_channels: UPerHead width C; ``None`` = D, UltraDINO's choice (docs/recipe.md §1.5).
        pool_scales, dropout, decoder_norm, align_corners: UPerHead settings (docs/recipe.md §1.5 defaults:
            (1, 2, 3, 6), 0.1, None, False).
        pyramid_norm: normalisation inside the x4 pyramid branch (``"batch"``).

    Input ``image``: ``[B, in_chans, H, W]`` normalised as the backbone expects, H and W
    multiples of the patch size with at least 2 patches per side. Output: float logits
    ``[B, num_classes, H, W]``.
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        out_indices: Sequence[int] | None = None,
        decoder_channels: int | None = None,
        pool_scales: Sequence[int] = (1, 2, 3, 6),
        dropout: float = 0.1,
        decoder_norm: str | None = None,
        pyramid_norm: str = "batch",
        align_corners: bool = False,
    ) -> None:
        super().__init__()
        for attribute in ("embed_dim", "n_blocks", "get_intermediate_layers", "patch_size"):
            if not hasattr(backbone, attribute):
                raise TypeError(f"the backbone {type(backbone).__name__} has no {attribute!r}; expected a ViT backbone")
        depth = int(backbone.n_blocks)
        if out_indices is None:
            out_indices = default_out_indices(depth)
        out_indices = tuple(int(i) for i in out_indices)
        if len(out_indices) != 4:
            raise ValueError(f"out_indices must name 4 blocks, got {out_indices}")
        if any(not 0 <= i < depth for i in out_indices) or len(set(out_indices)) != 4:
            raise ValueError(f"out_indices {out_indices} are not 4 distinct blocks of a {depth}-block backbone")
        embed_dim = int(backbone.embed_dim)
        channels = embed_dim if decoder_channels is None else int(decoder_channels)
        self.backbone = backbone
        self.out_indices = out_indices
        self.num_classes = int(num_classes)
        self.align_corners = bool(align_corners)
        self.neck = SimpleFeaturePyramid(embed_dim, norm=pyramid_norm)
        self.decode_head = UPerHead(
            [embed_dim] * 4,
            channels,
            num_classes,
            pool_scales=pool_scales,
            dropout=dropout,
            norm=decoder_norm,
            align_corners=align_corners,
        )
        self._decoder_config = {
            "out_indices": list(out_indices),
            "decoder_channels": channels,
            "pool_scales": [int(s) for s in pool_scales],
            "dropout": float(dropout),
            "decoder_norm": decoder_norm,
            "pyramid_norm": pyramid_norm,
            "align_corners": self.align_corners,
        }

    def decoder_config(self) -> dict[str, Any]:
        """Constructor arguments of the decoder (everything but the backbone and ``num_classes``)."""
        return dict(self._decoder_config)

    def extract_pyramid(self, image: torch.Tensor) -> list[torch.Tensor]:
        """The four pyramid levels ``[B, D, 4h, 4w] .. [B, D, h/2, w/2]`` (h, w = patch grid)."""
        features = self.backbone.get_intermediate_layers(image, self.out_indices, norm=True, reshape=True)
        return self.neck(features)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        logits = self.decode_head(self.extract_pyramid(image))
        return F.interpolate(logits, size=image.shape[-2:], mode="bilinear", align_corners=self.align_corners)
