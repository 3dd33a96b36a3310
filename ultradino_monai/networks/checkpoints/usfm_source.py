"""USFM / BEiT checkpoints -> :class:`~ultradino_monai.networks.vit.BeitBackbone`.

Relative position bias tables are resized with timm's ``resize_rel_pos_bias_table`` when the
grid changes; ``relative_position_index`` buffers are checked against the model's own or
regenerated (package docstring, **Resolution**).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from timm.layers import resample_abs_pos_embed, resize_rel_pos_bias_table

from ultradino_monai.networks.checkpoints.detect import _ANCHOR
from ultradino_monai.networks.checkpoints.errors import CheckpointError
from ultradino_monai.networks.checkpoints.geometry import _check_fixed_geometry, _count_blocks, _resolve_num_heads
from ultradino_monai.networks.checkpoints.normalisation import _adapt_channels, _source_normalisation
from ultradino_monai.networks.checkpoints.strict import _check_overrides, _strict_load
from ultradino_monai.networks.checkpoints.vit_source import _BACKBONE_HEAD
from ultradino_monai.networks.vit import BeitBackbone, grid_side

_BEIT_OVERRIDES = ("num_heads", "embed_dim", "depth", "mlp_ratio", "drop_path_uniform")


def _load_beit(
    backbone: dict[str, torch.Tensor],
    path: Path,
    info: dict[str, Any],
    in_chans: int,
    img_size: int | None,
    drop_path_rate: float,
    num_register_tokens: int | None,
    mean: Any,
    std: Any,
    overrides: dict[str, Any],
) -> tuple[BeitBackbone, tuple[float, ...], tuple[float, ...]]:
    _check_overrides(overrides, _BEIT_OVERRIDES, path)
    if num_register_tokens:
        raise CheckpointError(
            f"{path}: USFM/BEiT backbones have no register tokens (num_register_tokens={num_register_tokens})"
        )
    state: dict[str, torch.Tensor] = {}
    index_buffers: dict[str, torch.Tensor] = {}
    for key, value in backbone.items():
        if key.endswith("relative_position_index"):
            index_buffers[key] = value
        elif _BACKBONE_HEAD.match(key):
            info["dropped"].setdefault("classifier-head", []).append(key)
        else:
            state[key] = value
    if "mask_token" in state and state["mask_token"].ndim == 3:
        state["mask_token"] = state["mask_token"].reshape(1, -1)
    for required in ("cls_token", _ANCHOR):
        if required not in state:
            raise CheckpointError(f"{path}: no {required!r} key; keys: {sorted(state)[:12]}")

    embed_dim = int(state["cls_token"].shape[-1])
    patch_size = int(state[_ANCHOR].shape[-1])
    file_chans = int(state[_ANCHOR].shape[1])
    depth = _count_blocks(state, path)
    shared = "rel_pos_bias.relative_position_bias_table" in state
    per_block = "blocks.0.attn.relative_position_bias_table" in state
    table_key = "rel_pos_bias.relative_position_bias_table" if shared else "blocks.0.attn.relative_position_bias_table"
    if table_key in state:
        table = state[table_key]
        heads_from_file = int(table.shape[1])
        side = (math.isqrt(int(table.shape[0]) - 3) + 1) // 2
        if (2 * side - 1) ** 2 + 3 != table.shape[0]:
            raise CheckpointError(f"{path}: relative position table of {table.shape[0]} rows is not (2g-1)^2+3")
        file_grid = (side, side)
    else:
        heads_from_file = None
        file_grid = None
    _check_fixed_geometry(overrides, {"embed_dim": embed_dim, "depth": depth}, path)
    if "num_heads" in overrides:
        num_heads = int(overrides["num_heads"])
    else:
        num_heads = heads_from_file or _resolve_num_heads({}, None, None, embed_dim, depth, path)
    if heads_from_file is not None and num_heads != heads_from_file:
        raise CheckpointError(
            f"{path}: num_heads={num_heads} but the relative position table has {heads_from_file} heads"
        )
    mlp_ratio = state["blocks.0.mlp.fc1.weight"].shape[0] / embed_dim
    has_layer_scale = "blocks.0.gamma_1" in state

    if img_size is None:
        if file_grid is None and "pos_embed" in state:
            side = grid_side(int(state["pos_embed"].shape[1]) - 1)
            file_grid = (side, side) if side else None
        if file_grid is None:
            raise CheckpointError(f"{path}: no position table to take the grid from; pass img_size")
        img_size = file_grid[0] * patch_size
    file_mean, file_std = _source_normalisation("usfm", file_chans, None, mean, std, path)
    mean_t, std_t = _adapt_channels(state, "patch_embed.proj", file_chans, in_chans, file_mean, file_std, info, path)
    model = BeitBackbone(
        img_size=img_size,
        patch_size=patch_size,
        in_chans=in_chans,
        embed_dim=embed_dim,
        depth=depth,
        num_heads=num_heads,
        mlp_ratio=mlp_ratio,
        init_values=0.1 if has_layer_scale else None,  # USFM's γ init; overwritten by the file
        use_abs_pos_emb="pos_embed" in state,
        use_rel_pos_bias=per_block,
        use_shared_rel_pos_bias=shared,
        drop_path_rate=drop_path_rate,
        drop_path_uniform=bool(overrides.get("drop_path_uniform", False)),
        arch="usfm" if (embed_dim, depth) == (768, 12) else "beit",
    )
    target = tuple(model.patch_embed.grid_size)
    resized = file_grid is not None and file_grid != target
    for key in [k for k in state if k.endswith("relative_position_bias_table")]:
        module = model.get_submodule(key[: -len(".relative_position_bias_table")])
        if state[key].shape != module.relative_position_bias_table.shape:
            state[key] = resize_rel_pos_bias_table(
                state[key], new_window_size=target, new_bias_shape=tuple(module.relative_position_bias_table.shape)
            )
    if "pos_embed" in state and state["pos_embed"].shape != model.pos_embed.shape:
        state["pos_embed"] = resample_abs_pos_embed(state["pos_embed"], new_size=target, num_prefix_tokens=1)
        resized = True
    # relative_position_index buffers are a deterministic function of the grid. The file's copy must
    # equal the one the model generates (a different indexing would scramble the bias table); it is
    # loaded when the grid is unchanged, and regenerated (rule generated-buffer) when the grid changed
    # or the buffer is not persistent in timm (per-block indices).
    own_buffers = dict(model.named_buffers())
    persistent = set(model.state_dict())
    for key, value in index_buffers.items():
        if key not in own_buffers:
            raise CheckpointError(f"{path}: unexpected buffer {key!r} for this BEiT configuration")
        if not resized and not torch.equal(value.to(own_buffers[key].dtype), own_buffers[key]):
            raise CheckpointError(f"{path}: {key} differs from the standard BEiT relative position index")
        if resized or key not in persistent:
            info["dropped"].setdefault("generated-buffer", []).append(key)
        else:
            state[key] = value.to(own_buffers[key].dtype)
    generated = tuple(key for key in persistent if key.endswith("relative_position_index")) + ("mask_token",)
    _strict_load(model, state, info, path, generated=generated)
    info.update(
        arch=model.arch,
        embed_dim=embed_dim,
        depth=depth,
        num_heads=num_heads,
        patch_size=patch_size,
        mlp_ratio=mlp_ratio,
        num_register_tokens=0,
        file_num_register_tokens=0,
        layer_scale=has_layer_scale,
        file_in_chans=file_chans,
        in_chans=in_chans,
        grid=list(target),
        file_grid=list(file_grid) if file_grid else None,
        pos_embed_resampled=resized,
    )
    return model, mean_t, std_t
