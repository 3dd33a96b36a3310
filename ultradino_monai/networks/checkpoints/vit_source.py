"""UltraDINO, DINOv2, iBOT and timm ViT checkpoints -> :class:`~ultradino_monai.networks.vit.DinoVisionTransformer`.

See the package docstring (**Key conversion**, **Geometry**, **Resolution**, **Registers**,
**Interpolation of the position embedding at run time**) for the rules.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from timm.layers import resample_abs_pos_embed

from ultradino_monai.networks.checkpoints.detect import _ANCHOR
from ultradino_monai.networks.checkpoints.errors import CheckpointError
from ultradino_monai.networks.checkpoints.geometry import (
    _check_fixed_geometry,
    _check_sidecar_geometry,
    _count_blocks,
    _resolve_num_heads,
)
from ultradino_monai.networks.checkpoints.normalisation import _adapt_channels, _source_normalisation
from ultradino_monai.networks.checkpoints.strict import _check_overrides, _strict_load
from ultradino_monai.networks.vit import DinoVisionTransformer, arch_name_for, grid_side

logger = logging.getLogger(__name__)

_BACKBONE_HEAD = re.compile(r"^(head|pre_logits)\.")
_CHUNKED_BLOCK = re.compile(r"^blocks\.(\d+)\.(\d+)\.(.+)$")
_LAYER_SCALE = re.compile(r"^(blocks\.\d+)\.gamma_([12])$")
_VIT_OVERRIDES = (
    "num_heads",
    "embed_dim",
    "depth",
    "mlp_ratio",
    "drop_path_uniform",
    "interpolate_offset",
    "interpolate_antialias",
)


def _load_vit(
    backbone: dict[str, torch.Tensor],
    path: Path,
    info: dict[str, Any],
    source: str,
    sidecar: dict | None,
    arch: str | None,
    in_chans: int,
    img_size: int | None,
    drop_path_rate: float,
    num_register_tokens: int | None,
    mean: Any,
    std: Any,
    overrides: dict[str, Any],
) -> tuple[DinoVisionTransformer, tuple[float, ...], tuple[float, ...]]:
    _check_overrides(overrides, _VIT_OVERRIDES, path)
    state = _rename_vit_keys(backbone, info["dropped"])
    for required in ("cls_token", "pos_embed", _ANCHOR):
        if required not in state:
            raise CheckpointError(f"{path}: no {required!r} key; keys: {sorted(state)[:12]}")

    embed_dim = int(state["cls_token"].shape[-1])
    proj = state[_ANCHOR]
    if proj.ndim != 4 or proj.shape[-1] != proj.shape[-2]:
        raise CheckpointError(f"{path}: patch embedding weight has shape {tuple(proj.shape)}, expected [D, C, p, p]")
    patch_size = int(proj.shape[-1])
    file_chans = int(proj.shape[1])
    depth = _count_blocks(state, path)
    file_registers = int(state["reg_token"].shape[1]) if "reg_token" in state else 0
    has_layer_scale = "blocks.0.ls1.gamma" in state
    mlp_ratio = state["blocks.0.mlp.fc1.weight"].shape[0] / embed_dim if "blocks.0.mlp.fc1.weight" in state else 4.0
    grid = _fold_pos_embed(state, file_registers, sidecar, patch_size, path)
    info["file_grid"] = list(grid)

    if sidecar is not None:
        _check_sidecar_geometry(sidecar, embed_dim, depth, patch_size, file_chans, file_registers, path)
    _check_fixed_geometry(overrides, {"embed_dim": embed_dim, "depth": depth, "mlp_ratio": mlp_ratio}, path)
    num_heads = _resolve_num_heads(overrides, sidecar, arch, embed_dim, depth, path)
    arch_name = arch_name_for(embed_dim, depth, num_heads)

    registers = _resolve_registers(num_register_tokens, file_registers, state, info, path)
    file_mean, file_std = _source_normalisation(source, file_chans, sidecar, mean, std, path)
    mean_t, std_t = _adapt_channels(state, "patch_embed.proj", file_chans, in_chans, file_mean, file_std, info, path)

    if img_size is None:
        img_size = grid[0] * patch_size
        if grid[0] != grid[1]:
            raise CheckpointError(f"{path}: the file's grid {grid} is not square; pass img_size")
    target = (img_size // patch_size, img_size // patch_size)
    if img_size % patch_size:
        raise CheckpointError(f"img_size {img_size} is not divisible by the checkpoint's patch size {patch_size}")
    info["pos_embed_resampled"] = tuple(grid) != target
    if tuple(grid) != target:
        state["pos_embed"] = resample_abs_pos_embed(
            state["pos_embed"],
            new_size=target,
            old_size=grid,
            num_prefix_tokens=0,
            interpolation="bicubic",
            antialias=True,
        )
        logger.info("%s: resampled pos_embed from %s to %s", path.name, grid, target)

    offset, antialias = _interpolation_for(source, file_registers, sidecar)
    model = DinoVisionTransformer(
        img_size=img_size,
        patch_size=patch_size,
        in_chans=in_chans,
        embed_dim=embed_dim,
        depth=depth,
        num_heads=num_heads,
        mlp_ratio=mlp_ratio,
        num_register_tokens=registers,
        # γ is overwritten by the file; only its presence matters
        init_values=1e-5 if has_layer_scale else None,
        drop_path_rate=drop_path_rate,
        drop_path_uniform=bool(overrides.get("drop_path_uniform", True)),
        interpolate_offset=float(overrides.get("interpolate_offset", offset)),
        interpolate_antialias=bool(overrides.get("interpolate_antialias", antialias)),
        arch=arch_name,
    )
    _strict_load(model, state, info, path, generated=("mask_token",))
    info.update(
        arch=arch_name,
        embed_dim=embed_dim,
        depth=depth,
        num_heads=num_heads,
        patch_size=patch_size,
        mlp_ratio=mlp_ratio,
        num_register_tokens=registers,
        file_num_register_tokens=file_registers,
        layer_scale=has_layer_scale,
        file_in_chans=file_chans,
        in_chans=in_chans,
        grid=list(target),
        interpolate_offset=model.interpolate_offset,
        interpolate_antialias=model.interpolate_antialias,
    )
    return model, mean_t, std_t


def _rename_vit_keys(backbone: Mapping[str, torch.Tensor], dropped: dict[str, list[str]]) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = {}
    for key, value in backbone.items():
        new = key
        chunked = _CHUNKED_BLOCK.match(key)
        if chunked:  # DINOv2 block_chunks: blocks.{chunk}.{global index}.*
            new = f"blocks.{chunked.group(2)}.{chunked.group(3)}"
        if new == "register_tokens":
            new = "reg_token"
        elif new == "masked_embed":
            new = "mask_token"
        layer_scale = _LAYER_SCALE.match(new)
        if layer_scale:
            new = f"{layer_scale.group(1)}.ls{layer_scale.group(2)}.gamma"
        if _BACKBONE_HEAD.match(new):
            dropped.setdefault("classifier-head", []).append(key)
            continue
        if new in state:
            raise CheckpointError(f"two keys map to {new!r} (one of them is {key!r})")
        state[new] = value
    if "mask_token" in state and state["mask_token"].ndim == 3:
        state["mask_token"] = state["mask_token"].reshape(1, -1)
    return state


def _fold_pos_embed(
    state: dict[str, torch.Tensor], registers: int, sidecar: dict | None, patch_size: int, path: Path
) -> tuple[int, int]:
    """Bring ``pos_embed`` to the patches-only layout; return the file's patch grid."""
    pos = state["pos_embed"]
    if pos.ndim != 3 or pos.shape[0] != 1:
        raise CheckpointError(f"{path}: pos_embed has shape {tuple(pos.shape)}, expected [1, L, D]")
    length = int(pos.shape[1])
    if sidecar is not None:
        side = sidecar["img_size"]
        height, width = (side, side) if isinstance(side, int) else tuple(side)
        grid = (height // patch_size, width // patch_size)
        if grid[0] * grid[1] != length:
            raise CheckpointError(f"{path}: pos_embed has {length} positions, sidecar says a {grid} grid")
        return grid
    if grid_side(length) and not grid_side(length - 1):
        prefix = 0
    elif grid_side(length - 1):
        prefix = 1  # DINOv2 / iBOT / timm default: the class token has a position slot
    elif registers and grid_side(length - 1 - registers):
        prefix = 1 + registers  # timm reg model without no_embed_class
    else:
        raise CheckpointError(
            f"{path}: cannot infer a square patch grid from pos_embed length {length} "
            f"(tried 0, 1{f', {1 + registers}' if registers else ''} prefix slots)"
        )
    if prefix:
        # The prefix slots are never interpolated, so adding them to the tokens is exact.
        state["cls_token"] = state["cls_token"] + pos[:, :1]
        if prefix > 1:
            state["reg_token"] = state["reg_token"] + pos[:, 1:prefix]
        state["pos_embed"] = pos[:, prefix:]
    side = grid_side(length - prefix)
    return side, side


def _resolve_registers(
    requested: int | None, found: int, state: dict[str, torch.Tensor], info: dict[str, Any], path: Path
) -> int:
    if requested is None or requested == found:
        return found
    if requested == 0:
        info["dropped"].setdefault("registers-dropped", []).append("reg_token")
        del state["reg_token"]
        logger.warning("%s: dropping the checkpoint's %d register tokens (num_register_tokens=0)", path.name, found)
        return 0
    raise CheckpointError(
        f"{path}: the checkpoint has {found} register token(s) but num_register_tokens={requested} was requested; "
        "use None to keep the checkpoint's or 0 to drop them"
    )


def _interpolation_for(source: str, registers: int, sidecar: dict | None) -> tuple[float, bool]:
    if sidecar is not None and "interpolate_offset" in sidecar:
        return float(sidecar["interpolate_offset"]), bool(sidecar.get("interpolate_antialias", False))
    if source == "timm" or (source == "dinov2" and registers):
        return 0.0, True  # official DINOv2 reg models and timm (docs/recipe.md §2.1)
    return 0.1, False  # DINOv2 / UltraDINO training, iBOT (docs/recipe.md §2.1)
