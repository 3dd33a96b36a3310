"""UperNet decoder for plain ViT backbones: a simple feature pyramid and an mmseg-style UPerHead.

UltraDINO segments FASS and JNU-IFM with mmsegmentation's ``EncoderDecoder``: the ViT gives
four intermediate maps (blocks 3, 5, 7, 11, each through the final LayerNorm, reshaped to
``[B, D, H/16, W/16]``), a *simple feature pyramid* resamples them to strides 4, 8, 16, 32
and mmseg's ``UPerHead`` decodes them (``docs/recipe.md`` §1.5):

* pyramid (``fpn_scaling=1``, 56/28/14/7 px for a 224 input at patch 16)::

      fpn1 = ConvT 2x2 s2 -> BatchNorm -> GELU -> ConvT 2x2 s2     (x4)
      fpn2 = ConvT 2x2 s2                                          (x2)
      fpn3 = identity                                              (x1)
      fpn4 = MaxPool 2x2 s2                                        (/2)

* UPerHead: ``in_channels [D]*4``, ``channels D`` (384 for ViT-S, 768 for ViT-B), pool scales
  (1, 2, 3, 6), dropout 0.1, ``norm_cfg None`` (every conv has a bias, no normalisation),
  ReLU, ``align_corners False``. PPM on the coarsest level, 1x1 lateral convs with top-down
  addition, 3x3 FPN convs, concatenation to 4·C, 3x3 bottleneck to C, 1x1 classifier. The
  logits come out at the finest pyramid level (stride 4).

The modules follow mmseg 1.x (``mmseg/models/decode_heads/uper_head.py``, ``psp_head.py``) and
mmcv's ``ConvModule`` (conv -> [norm] -> activation, bias only without norm, Kaiming-normal
``fan_out`` init for ReLU convs, the classifier N(0, 0.01)), written in plain PyTorch.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)

__all__ = ["ConvNormAct", "PyramidPoolingModule", "SimpleFeaturePyramid", "UPerHead", "NORM_LAYERS"]

#: Normalisation layers selectable by name for the decoder convs (``None`` = UltraDINO's choice).
NORM_LAYERS = {"batch": nn.BatchNorm2d, "sync_batch": nn.SyncBatchNorm}


def _norm_layer(norm: str | None) -> type[nn.Module] | None:
    if norm is None or str(norm).lower() == "none":
        return None
    try:
        return NORM_LAYERS[str(norm).lower()]
    except KeyError:
        raise ValueError(f"unknown norm {norm!r}; use None or one of {sorted(NORM_LAYERS)}") from None


class ConvNormAct(nn.Sequential):
    """``Conv2d -> [norm] -> ReLU`` (mmcv ``ConvModule`` with ``act_cfg=ReLU``).

    The convolution has a bias exactly when there is no normalisation layer (mmcv
    ``bias="auto"``). Weights are Kaiming-normal (``fan_out``, ReLU gain), biases 0, as
    ``ConvModule.init_weights``.

    Args:
        in_channels, out_channels: channels of the ``[B, C, H, W]`` input and output.
        kernel_size: square kernel; padding ``kernel_size // 2`` keeps H and W.
        norm: ``None`` (UltraDINO, docs/recipe.md §1.5), ``"batch"`` or ``"sync_batch"``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, norm: str | None = None) -> None:
        norm_layer = _norm_layer(norm)
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=norm_layer is None)
        ]
        if norm_layer is not None:
            layers.append(norm_layer(out_channels))
        layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)
        nn.init.kaiming_normal_(self[0].weight, mode="fan_out", nonlinearity="relu")
        if self[0].bias is not None:
            nn.init.zeros_(self[0].bias)


class SimpleFeaturePyramid(nn.Module):
    """Four single-scale ViT maps -> a four-level pyramid at strides ``patch/4 .. patch*2``.

    Input: a sequence of four ``[B, D, h, w]`` maps (ViT blocks, shallow to deep). Output: a
    list ``[B, D, 4h, 4w], [B, D, 2h, 2w], [B, D, h, w], [B, D, h//2, w//2]`` (56/28/14/7 for a
    224 input at patch 16; docs/recipe.md §1.5). ``h`` and ``w`` must be at least 2 for the max-pool level.

    Args:
        embed_dim: D, the channels of the ViT maps (kept on every level).
        norm: the normalisation between the two transposed convs of the x4 branch
            (``"batch"``: BatchNorm, what UltraDINO's SyncBN becomes on one GPU; convert with
            ``torch.nn.SyncBatchNorm.convert_sync_batchnorm`` for multi-GPU runs).
    """

    def __init__(self, embed_dim: int, norm: str = "batch") -> None:
        super().__init__()
        norm_layer = _norm_layer(norm)
        if norm_layer is None:
            raise ValueError("the x4 pyramid branch needs a normalisation layer ('batch' or 'sync_batch')")
        self.embed_dim = int(embed_dim)
        self.fpn1 = nn.Sequential(
            nn.ConvTranspose2d(embed_dim, embed_dim, kernel_size=2, stride=2),
            norm_layer(embed_dim),
            nn.GELU(),
            nn.ConvTranspose2d(embed_dim, embed_dim, kernel_size=2, stride=2),
        )
        self.fpn2 = nn.ConvTranspose2d(embed_dim, embed_dim, kernel_size=2, stride=2)
        self.fpn3 = nn.Identity()
        self.fpn4 = nn.MaxPool2d(kernel_size=2, stride=2)

    def forward(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        if len(features) != 4:
            raise ValueError(f"SimpleFeaturePyramid expects 4 feature maps, got {len(features)}")
        for index, feature in enumerate(features):
            if feature.ndim != 4 or feature.shape[1] != self.embed_dim:
                raise ValueError(
                    f"feature {index} has shape {tuple(feature.shape)}; expected [B, {self.embed_dim}, h, w]"
                )
        if min(features[-1].shape[-2:]) < 2:
            raise ValueError(
                f"the ViT grid {tuple(features[-1].shape[-2:])} is too small for the /2 pyramid level; "
                "use inputs of at least 2 patches per side"
            )
        return [self.fpn1(features[0]), self.fpn2(features[1]), self.fpn3(features[2]), self.fpn4(features[3])]


class PyramidPoolingModule(nn.ModuleList):
    """PSPNet pooling branches: adaptive average pool to ``s x s`` -> 1x1 ConvNormAct -> upsample back.

    Input ``[B, C_in, h, w]``; output a list of ``len(pool_scales)`` maps ``[B, C, h, w]``
    (bilinear upsampling with ``align_corners``).
    """

    def __init__(
        self,
        pool_scales: Sequence[int],
        in_channels: int,
        channels: int,
        norm: str | None = None,
        align_corners: bool = False,
    ) -> None:
        super().__init__(
            nn.Sequential(nn.AdaptiveAvgPool2d(int(scale)), ConvNormAct(in_channels, channels, 1, norm=norm))
            for scale in pool_scales
        )
        self.align_corners = bool(align_corners)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:  # type: ignore[override]
        size = x.shape[-2:]
        return [
            F.interpolate(branch(x), size=size, mode="bilinear", align_corners=self.align_corners) for branch in self
        ]


class UPerHead(nn.Module):
    """Unified Perceptual Parsing head (mmseg ``UPerHead``) over a four-level pyramid.

    Input: list of ``[B, in_channels[i], h_i, w_i]``, finest first. Output: logits
    ``[B, num_classes, h_0, w_0]`` at the finest level (not upsampled; the segmenter does it).

    Args:
        in_channels: channels of each pyramid level (``[D] * 4`` after the simple pyramid).
        channels: C, the decoder width (UltraDINO: C = D, docs/recipe.md §1.5).
        num_classes: output logits per pixel (background included).
        pool_scales: PPM output sizes on the coarsest level (1, 2, 3, 6).
        dropout: ``Dropout2d`` rate before the classifier (0.1).
        norm: ``None`` (UltraDINO's ``norm_cfg None``), ``"batch"`` or ``"sync_batch"``.
        align_corners: for every bilinear resize (False).
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        channels: int,
        num_classes: int,
        pool_scales: Sequence[int] = (1, 2, 3, 6),
        dropout: float = 0.1,
        norm: str | None = None,
        align_corners: bool = False,
    ) -> None:
        super().__init__()
        in_channels = [int(c) for c in in_channels]
        if len(in_channels) < 2:
            raise ValueError(f"UPerHead needs at least 2 pyramid levels, got in_channels={in_channels}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.in_channels = in_channels
        self.channels = int(channels)
        self.num_classes = int(num_classes)
        self.align_corners = bool(align_corners)
        self.psp_modules = PyramidPoolingModule(pool_scales, in_channels[-1], channels, norm, align_corners)
        self.bottleneck = ConvNormAct(in_channels[-1] + len(pool_scales) * channels, channels, 3, norm=norm)
        self.lateral_convs = nn.ModuleList(ConvNormAct(c, channels, 1, norm=norm) for c in in_channels[:-1])
        self.fpn_convs = nn.ModuleList(ConvNormAct(channels, channels, 3, norm=norm) for _ in in_channels[:-1])
        self.fpn_bottleneck = ConvNormAct(len(in_channels) * channels, channels, 3, norm=norm)
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.conv_seg = nn.Conv2d(channels, num_classes, kernel_size=1)
        nn.init.normal_(self.conv_seg.weight, mean=0.0, std=0.01)
        nn.init.zeros_(self.conv_seg.bias)

    def _resize(self, x: torch.Tensor, size: torch.Size) -> torch.Tensor:
        return F.interpolate(x, size=size, mode="bilinear", align_corners=self.align_corners)

    def psp_forward(self, coarsest: torch.Tensor) -> torch.Tensor:
        """PPM on the coarsest level: ``[x, pooled_1 .. pooled_k]`` concatenated -> 3x3 bottleneck."""
        return self.bottleneck(torch.cat([coarsest, *self.psp_modules(coarsest)], dim=1))

    def forward(self, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        if len(inputs) != len(self.in_channels):
            raise ValueError(f"UPerHead expects {len(self.in_channels)} pyramid levels, got {len(inputs)}")
        laterals = [conv(inputs[i]) for i, conv in enumerate(self.lateral_convs)]
        laterals.append(self.psp_forward(inputs[-1]))
        # top-down path: each level receives the upsampled sum of the coarser ones
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + self._resize(laterals[i], laterals[i - 1].shape[-2:])
        outputs = [self.fpn_convs[i](laterals[i]) for i in range(len(laterals) - 1)]
        outputs.append(laterals[-1])
        finest = outputs[0].shape[-2:]
        outputs = [outputs[0]] + [self._resize(out, finest) for out in outputs[1:]]
        features = self.fpn_bottleneck(torch.cat(outputs, dim=1))
        return self.conv_seg(self.dropout(features))
