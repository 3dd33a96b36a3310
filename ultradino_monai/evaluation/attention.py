"""Last-block CLS→patch attention maps, per head (the paper's Fig. 4).

The maps are read from timm's own attention module of the last block: the block input is
layer-normed with ``norm1`` and projected with ``attn.qkv``; the softmax of the scaled
query·key products of the CLS query over the patch keys is the attention each head pays to
each patch. Register tokens are excluded from the map (they are keys too, so the patch
weights of a head sum to less than 1 when registers absorb attention, as in "Vision
Transformers Need Registers").
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from ultradino_monai.utils.files import atomic_write

logger = logging.getLogger(__name__)

__all__ = ["cls_attention_maps", "save_attention_overlay"]


@torch.no_grad()
def cls_attention_maps(backbone: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """CLS→patch attention of the last block.

    Args:
        backbone: a :class:`~ultradino_monai.networks.vit.DinoVisionTransformer`.
        images: [B,C,H,W] normalised images, H and W divisible by the patch size.

    Returns:
        [B, heads, H/p, W/p] attention weights in [0, 1].
    """
    tokens = backbone.prepare_tokens(images)
    for block in backbone.blocks[:-1]:
        tokens = block(tokens)
    last = backbone.blocks[-1]
    attention = last.attn
    batch, n_tokens, dim = tokens.shape
    heads = attention.num_heads
    qkv = attention.qkv(last.norm1(tokens)).reshape(batch, n_tokens, 3, heads, dim // heads).permute(2, 0, 3, 1, 4)
    query, key = attention.q_norm(qkv[0]), attention.k_norm(qkv[1])
    weights = ((query[:, :, :1] * attention.scale) @ key.transpose(-2, -1)).softmax(dim=-1)  # [B, heads, 1, T]
    first_patch = 1 + getattr(backbone, "num_register_tokens", 0)
    grid_h, grid_w = images.shape[-2] // backbone.patch_size, images.shape[-1] // backbone.patch_size
    return weights[:, :, 0, first_patch:].reshape(batch, heads, grid_h, grid_w)


def save_attention_overlay(
    image: np.ndarray,
    maps: np.ndarray,
    path: str | os.PathLike,
    title: str | None = None,
    head_names: Sequence[str] | None = None,
) -> None:
    """Write one PNG: the image, then one overlay per head (attention upsampled to the image).

    Args:
        image: [H,W] grey image, any range (shown min-max scaled).
        maps: [heads, h, w] attention weights.
        path: output PNG path (written atomically).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    heads = maps.shape[0]
    upsampled = torch.nn.functional.interpolate(
        torch.as_tensor(maps, dtype=torch.float32)[None], size=image.shape[-2:], mode="nearest"
    )[0].numpy()
    figure, axes = plt.subplots(1, heads + 1, figsize=(2.2 * (heads + 1), 2.4), squeeze=False)
    axes = axes[0]
    axes[0].imshow(image, cmap="gray")
    axes[0].set_title("image", fontsize=9)
    for head in range(heads):
        axes[head + 1].imshow(image, cmap="gray")
        axes[head + 1].imshow(upsampled[head], cmap="inferno", alpha=0.55)
        axes[head + 1].set_title(head_names[head] if head_names else f"head {head}", fontsize=9)
    for axis in axes:
        axis.axis("off")
    if title:
        figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    try:
        atomic_write(path, lambda temporary: figure.savefig(temporary, format="png", dpi=100))
    finally:
        plt.close(figure)
