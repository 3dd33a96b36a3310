"""Building the segmenter: a ViT backbone (pretrained or random) under a UperNet decoder."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ultradino_monai.engines.config_values import as_bool, optional_path
from ultradino_monai.networks.checkpoints import load_backbone
from ultradino_monai.networks.segmenter import Segmenter

logger = logging.getLogger(__name__)

__all__ = ["default_pretrained", "BuiltSegmenter", "build_segmenter"]


def default_pretrained(path: str | os.PathLike | None) -> str | None:
    """``path`` if that file exists (the pretrain bundle's export), else None = random init (logged)."""
    path = optional_path(path)
    if path is None:
        return None
    if Path(path).is_file():
        return path
    logger.warning(
        "no pretrained backbone at %s: the segmenter starts from a RANDOM backbone. Run the pretrain bundle "
        "first or pass --pretrained_ckpt PATH (use --pretrained_ckpt null to silence this)",
        path,
    )
    return None


@dataclass
class BuiltSegmenter:
    """What :func:`build_segmenter` returns.

    Attributes:
        model: the :class:`Segmenter` (train mode).
        mean, std: normalisation the backbone expects, one value per input channel, [0, 1] scale.
        in_chans: input channels.
        source: ``"scratch"`` or the checkpoint source (``ultradino``, ``dinov2``, ...).
        info: backbone provenance from :func:`load_backbone` (path, sha256, dropped keys, ...).
    """

    model: Segmenter
    mean: tuple[float, ...]
    std: tuple[float, ...]
    in_chans: int
    source: str
    info: dict[str, Any] = field(default_factory=dict)


def build_segmenter(
    pretrained_ckpt: str | os.PathLike | None,
    num_classes: int,
    backbone_source: str = "auto",
    arch: str | None = None,
    in_chans: int = 1,
    img_size: int | None = 224,
    drop_path_rate: float = 0.4,
    drop_path_uniform: bool = False,
    keep_registers: bool = True,
    out_indices: Sequence[int] | None = None,
    decoder_channels: int | None = None,
    pool_scales: Sequence[int] = (1, 2, 3, 6),
    dropout: float = 0.1,
    decoder_norm: str | None = None,
    align_corners: bool = False,
    scratch_arch: str = "vit_small",
    scratch_num_register_tokens: int = 4,
    scratch_init_values: float | None = 1.0,
    scratch_overrides: Mapping[str, Any] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    trust_pickle: bool = False,
) -> BuiltSegmenter:
    """ViT backbone (pretrained or random) + UperNet, as UltraDINO's mmseg ``EncoderDecoder`` (docs/recipe.md §1.5).

    Args:
        pretrained_ckpt: backbone weights (UltraDINO export, DINOv2/iBOT/USFM/timm file) or
            ``None`` for a randomly initialised backbone (the "ViT, scratch" baseline).
        num_classes: logits per pixel, background included.
        backbone_source: ``"auto"`` or a source name for :func:`load_backbone`.
        arch: expected arch of the checkpoint (checked against the file), optional.
        in_chans: model input channels (1; 3 for natural-image weights used as such).
        img_size: grid the position embedding is resampled to (224); ``None`` keeps the file's.
        drop_path_rate: stochastic depth, 0.4 in UltraDINO's segmentation backbone (docs/recipe.md §1.5).
        drop_path_uniform: ``False`` = linear per-depth rule 0 -> rate (docs/recipe.md §1.5
            ``drop_path_uniform False``).
        keep_registers: ``True`` keeps the checkpoint's register tokens (paper-fidelity default);
            ``False`` drops them, as UltraDINO's public segmentation code silently did
            (``num_register_tokens`` hard-coded to 0, docs/recipe.md §1.5 / §4).
        out_indices, decoder_channels, pool_scales, dropout, decoder_norm, align_corners:
            :class:`Segmenter` / UPerHead settings (docs/recipe.md §1.5 defaults).
        scratch_arch, scratch_num_register_tokens, scratch_overrides: the random backbone
            when ``pretrained_ckpt`` is None (``scratch_overrides`` e.g. ``{"depth": 6}``).
        scratch_init_values: LayerScale init of a random backbone (1.0, the mmseg config's
            ``init_values``, docs/recipe.md §1.5; a checkpoint brings its own gamma).
        mean, std: override the normalisation of the checkpoint's source.
        trust_pickle: allow pickled objects in the checkpoint file (trusted files only).
    """
    pretrained_ckpt = optional_path(pretrained_ckpt)
    keep_registers = as_bool(keep_registers)
    common = dict(
        source=backbone_source,
        in_chans=int(in_chans),
        img_size=img_size,
        drop_path_rate=float(drop_path_rate),
        mean=mean,
        std=std,
        drop_path_uniform=as_bool(drop_path_uniform),
    )
    if pretrained_ckpt is None:
        loaded = load_backbone(
            None,
            arch=scratch_arch,
            num_register_tokens=int(scratch_num_register_tokens) if keep_registers else 0,
            init_values=scratch_init_values,
            **common,
            **dict(scratch_overrides or {}),
        )
    else:
        loaded = load_backbone(
            pretrained_ckpt,
            arch=arch,
            num_register_tokens=None if keep_registers else 0,
            trust_pickle=as_bool(trust_pickle),
            **common,
        )
    backbone = loaded.model
    backbone.train()
    # The mask token only serves masked-image pretraining; frozen, so DDP sees no unused parameter.
    if getattr(backbone, "mask_token", None) is not None:
        backbone.mask_token.requires_grad_(False)
    model = Segmenter(
        backbone,
        num_classes=int(num_classes),
        out_indices=out_indices,
        decoder_channels=decoder_channels,
        pool_scales=pool_scales,
        dropout=dropout,
        decoder_norm=decoder_norm,
        align_corners=align_corners,
    )
    logger.info(
        "segmenter: %s backbone (%s, D=%d, %d blocks, %d register(s)), out_indices %s, UPerHead C=%d, %d classes",
        loaded.source,
        getattr(backbone, "arch", "?"),
        backbone.embed_dim,
        backbone.n_blocks,
        backbone.num_register_tokens,
        list(model.out_indices),
        model.decoder_config()["decoder_channels"],
        num_classes,
    )
    return BuiltSegmenter(
        model=model,
        mean=tuple(loaded.mean),
        std=tuple(loaded.std),
        in_chans=loaded.in_chans,
        source=loaded.source,
        info=dict(loaded.info),
    )
