"""Checkpoint geometry shared by the ViT and BEiT loaders: block count, fixed dims, head count.

See the package docstring (**Geometry**).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ultradino_monai.networks.checkpoints.errors import CheckpointError
from ultradino_monai.networks.vit import ARCHS

_BLOCK_INDEX = re.compile(r"^blocks\.(\d+)\.")
_HEAD_WIDTH = 64  # every DINOv2 / iBOT / timm ViT-S/B/L uses 64-wide attention heads


def _count_blocks(state: Mapping[str, torch.Tensor], path: Path) -> int:
    indices = {int(match.group(1)) for key in state if (match := _BLOCK_INDEX.match(key))}
    if not indices:
        raise CheckpointError(f"{path}: no transformer blocks (blocks.i.*) in the checkpoint")
    depth = max(indices) + 1
    if indices != set(range(depth)):
        missing = sorted(set(range(depth)) - indices)
        raise CheckpointError(f"{path}: block indices are not contiguous: missing {missing}")
    return depth


def _check_sidecar_geometry(
    sidecar: dict, embed_dim: int, depth: int, patch_size: int, chans: int, registers: int, path: Path
) -> None:
    found = {
        "embed_dim": embed_dim,
        "depth": depth,
        "patch_size": patch_size,
        "in_chans": chans,
        "num_register_tokens": registers,
    }
    conflicts = {key: (sidecar[key], value) for key, value in found.items() if sidecar[key] != value}
    if conflicts:
        raise CheckpointError(f"{path}: sidecar disagrees with the weights (sidecar, weights): {conflicts}")


def _check_fixed_geometry(overrides: dict[str, Any], found: dict[str, Any], path: Path) -> None:
    conflicts = {
        key: (overrides[key], value)
        for key, value in found.items()
        if key in overrides and not math.isclose(overrides[key], value)
    }
    if conflicts:
        raise CheckpointError(f"{path}: requested geometry contradicts the checkpoint (requested, file): {conflicts}")


def _resolve_num_heads(
    overrides: dict[str, Any], sidecar: dict | None, arch: str | None, embed_dim: int, depth: int, path: Path
) -> int:
    if arch is not None:
        if arch not in ARCHS:
            raise CheckpointError(f"unknown arch {arch!r}; choose one of {sorted(ARCHS)}")
        expected = ARCHS[arch]
        if (expected["embed_dim"], expected["depth"]) != (embed_dim, depth):
            raise CheckpointError(
                f"{path}: arch={arch!r} is D={expected['embed_dim']}, depth={expected['depth']} but the "
                f"checkpoint has D={embed_dim}, depth={depth}"
            )
    if "num_heads" in overrides:
        heads = int(overrides["num_heads"])
    elif sidecar is not None:
        heads = int(sidecar["num_heads"])
    elif arch is not None:
        heads = ARCHS[arch]["num_heads"]
    else:
        canonical = [
            dims["num_heads"] for dims in ARCHS.values() if (dims["embed_dim"], dims["depth"]) == (embed_dim, depth)
        ]
        if canonical:
            heads = canonical[0]
        elif embed_dim % _HEAD_WIDTH == 0:
            heads = embed_dim // _HEAD_WIDTH
        else:
            raise CheckpointError(f"{path}: cannot infer num_heads for D={embed_dim}; pass num_heads=...")
    if embed_dim % heads:
        raise CheckpointError(f"{path}: num_heads={heads} does not divide D={embed_dim}")
    return heads
