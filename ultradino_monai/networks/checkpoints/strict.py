"""All-or-nothing loading: the overrides a source accepts and the exact state-dict match."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ultradino_monai.networks.checkpoints.errors import CheckpointError


def _check_overrides(overrides: dict[str, Any], allowed: tuple[str, ...], path: Path) -> None:
    unknown = sorted(set(overrides) - set(allowed))
    if unknown:
        raise CheckpointError(
            f"{path}: unsupported override(s) {unknown} when loading a checkpoint; allowed: {list(allowed)}"
        )


def _strict_load(
    model: nn.Module, state: dict[str, torch.Tensor], info: dict[str, Any], path: Path, generated: tuple[str, ...]
) -> None:
    """Load ``state`` only if it covers the model exactly (``generated`` keys may come from the model)."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = sorted(
        f"{key}: file {tuple(state[key].shape)} vs model {tuple(expected[key].shape)}"
        for key in set(state) & set(expected)
        if state[key].shape != expected[key].shape
    )
    for key in [k for k in missing if k in generated]:
        missing.remove(key)
        state[key] = expected[key]
        rule = "zero-init mask token (not in the file)" if key == "mask_token" else "generated buffer"
        info["initialised"].setdefault(rule, []).append(key)
    if missing or unexpected or mismatched:
        lines = [f"{path}: checkpoint does not match the {type(model).__name__} it describes; nothing was loaded."]
        if missing:
            lines.append(f"missing keys ({len(missing)}): {missing}")
        if unexpected:
            lines.append(f"unexpected keys ({len(unexpected)}): {unexpected}")
        if mismatched:
            lines.append(f"shape mismatches ({len(mismatched)}): {mismatched}")
        raise CheckpointError("\n".join(lines))
    model.load_state_dict(state, strict=True)
