"""Normalisation of backbone checkpoints: the per-source defaults and the 1 <-> 3 channel adaptation.

See the package docstring (**Channels**, **Normalisation returned**) for the formulas.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from ultradino_monai.networks.checkpoints.errors import CheckpointError

logger = logging.getLogger(__name__)


#: UltraDINO's single-channel normalisation on the [0, 1] scale (FUS13M training set, docs/recipe.md §1.3).
FUS_MEAN: tuple[float, ...] = (0.1842924807,)
FUS_STD: tuple[float, ...] = (0.2187705424,)
#: ImageNet normalisation used by the natural-image baselines (DINOv2, iBOT, USFM, timm; docs/recipe.md §1.5, §3).
IMAGENET_MEAN: tuple[float, ...] = tuple(IMAGENET_DEFAULT_MEAN)
IMAGENET_STD: tuple[float, ...] = tuple(IMAGENET_DEFAULT_STD)


def _resolve_normalisation(
    channels: int, mean: Any, std: Any, default_source: str
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    if (mean is None) != (std is None):
        raise CheckpointError("pass both mean and std, or neither")
    if mean is None:
        if default_source == "ultradino" and channels == 1:
            return FUS_MEAN, FUS_STD
        if channels == 3:
            return IMAGENET_MEAN, IMAGENET_STD
        if channels == 1:
            # a single-channel natural-image model: the ImageNet statistics averaged over RGB
            return (sum(IMAGENET_MEAN) / 3,), (sum(IMAGENET_STD) / 3,)
        raise CheckpointError(f"no default normalisation for {channels} channels; pass mean and std")
    mean_t = tuple(float(v) for v in mean)
    std_t = tuple(float(v) for v in std)
    if len(mean_t) != channels or len(std_t) != channels:
        raise CheckpointError(f"mean/std need {channels} value(s), got {len(mean_t)}/{len(std_t)}")
    if any(v <= 0 for v in std_t):
        raise CheckpointError(f"std must be positive, got {std_t}")
    return mean_t, std_t


def _source_normalisation(
    source: str, channels: int, sidecar: dict | None, mean: Any, std: Any, path: Path
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    if mean is None and std is None and sidecar is not None:
        mean, std = sidecar["mean"], sidecar["std"]
    try:
        return _resolve_normalisation(channels, mean, std, default_source=source)
    except CheckpointError as error:
        raise CheckpointError(f"{path}: {error} (normalisation of the file's {channels}-channel input)") from error


def _adapt_channels(
    state: dict[str, torch.Tensor],
    conv: str,
    file_chans: int,
    in_chans: int,
    file_mean: tuple[float, ...],
    file_std: tuple[float, ...],
    info: dict[str, Any],
    path: Path,
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Adapt the patch embedding to ``in_chans``; return the normalisation the model then expects."""
    weight_key, bias_key = f"{conv}.weight", f"{conv}.bias"
    if file_chans == in_chans:
        info["channel_adaptation"] = "none"
        return file_mean, file_std
    weight = state[weight_key].float()
    if file_chans == 3 and in_chans == 1:
        mean_bar = sum(file_mean) / 3
        std_bar = sum(file_std) / 3
        scale = torch.tensor([std_bar / s for s in file_std]).view(1, 3, 1, 1)
        state[weight_key] = (weight * scale).sum(dim=1, keepdim=True).to(state[weight_key].dtype)
        shift = torch.tensor([(mean_bar - m) / s for m, s in zip(file_mean, file_std)])
        correction = (weight.sum(dim=(2, 3)) * shift).sum(dim=1)  # [D]
        if bias_key in state:
            state[bias_key] = (state[bias_key].float() + correction).to(state[bias_key].dtype)
        elif correction.abs().max() > 0:
            raise CheckpointError(f"{path}: cannot fold per-channel normalisation into a patch embedding without bias")
        info["channel_adaptation"] = "3->1 folded sum (exact for replicated grey images)"
        logger.info("%s: adapted a 3-channel patch embedding to 1 channel", path.name)
        return (mean_bar,), (std_bar,)
    if file_chans == 1 and in_chans == 3:
        state[weight_key] = (weight / 3).repeat(1, 3, 1, 1).to(state[weight_key].dtype)
        info["channel_adaptation"] = "1->3 replicate /3 (exact for images with equal channels)"
        logger.info("%s: adapted a 1-channel patch embedding to 3 channels", path.name)
        return file_mean * 3, file_std * 3
    raise CheckpointError(f"{path}: cannot adapt a {file_chans}-channel patch embedding to {in_chans} channels")
