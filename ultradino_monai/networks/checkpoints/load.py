"""The loading entry point: :func:`load_backbone` (package docstring for the rules) and the scratch baseline."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from ultradino_monai.networks.checkpoints.detect import (
    _detect_source,
    _find_weights,
    _read_file,
    _select_backbone,
)
from ultradino_monai.networks.checkpoints.errors import CheckpointError
from ultradino_monai.networks.checkpoints.normalisation import _resolve_normalisation
from ultradino_monai.networks.checkpoints.sidecar import _read_sidecar
from ultradino_monai.networks.checkpoints.usfm_source import _load_beit
from ultradino_monai.networks.checkpoints.vit_source import _load_vit
from ultradino_monai.networks.vit import ARCHS, build_vit
from ultradino_monai.utils.files import sha256_file

logger = logging.getLogger(__name__)


SOURCES = ("ultradino", "dinov2", "ibot", "usfm", "timm")


@dataclass
class LoadedBackbone:
    """What :func:`load_backbone` returns.

    Attributes:
        model: :class:`DinoVisionTransformer` (or :class:`BeitBackbone` for USFM), in eval mode.
        source: ``"scratch"`` or one of :data:`SOURCES`.
        mean, std: per-channel normalisation on the [0, 1] intensity scale the weights expect,
            one value per model input channel.
        in_chans: model input channels.
        info: provenance: path, sha256, container, prefix, detected_by, geometry, channel
            adaptation, resampling, ``dropped`` (rule → keys), ``initialised``, ``ignored``.
    """

    model: nn.Module
    source: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    in_chans: int
    info: dict[str, Any] = field(default_factory=dict)


def load_backbone(
    checkpoint: str | os.PathLike | None,
    source: str = "auto",
    arch: str | None = None,
    in_chans: int = 1,
    img_size: int | None = 224,
    drop_path_rate: float = 0.0,
    num_register_tokens: int | None = None,
    *,
    mean: tuple[float, ...] | list[float] | None = None,
    std: tuple[float, ...] | list[float] | None = None,
    trust_pickle: bool = False,
    **overrides: Any,
) -> LoadedBackbone:
    """Build a backbone and load a local checkpoint into it, exactly or not at all.

    Args:
        checkpoint: path to the weights, or ``None`` for a randomly initialised model
            (the "scratch" baseline; arch default ``vit_small``, 4 registers).
        source: ``"auto"`` or one of :data:`SOURCES` (see the module docstring for the rules).
        arch: expected arch name (:data:`~ultradino_monai.networks.vit.ARCHS`); checked
            against the file. Also supplies ``num_heads``.
        in_chans: model input channels; 1 ↔ 3 adaptation of the patch embedding is automatic.
        img_size: image side the position embedding is stored for (resampled if the file's
            grid differs); ``None`` keeps the file's grid (e.g. a 64-px demo export). Inputs of
            other sizes still work at run time through interpolation, except for USFM/BEiT.
        drop_path_rate: stochastic depth for fine-tuning (uniform unless
            ``drop_path_uniform=False`` is passed in ``overrides``).
        num_register_tokens: ``None`` keeps the file's; ``0`` drops them.
        mean, std: override the normalisation of the source (values for the file's channels).
        trust_pickle: allow ``torch.load(weights_only=False)`` for files that pickle objects.
        **overrides: ``num_heads``, ``drop_path_uniform``, ``interpolate_offset``,
            ``interpolate_antialias``; ``embed_dim``/``depth``/``mlp_ratio`` are checked
            against the file. For ``checkpoint=None`` anything :func:`build_vit` accepts.

    Raises:
        CheckpointError: unreadable file, unknown layout, geometry conflicts, or keys that are
            missing / unexpected / of the wrong shape (all listed in the message).
    """
    if source not in ("auto",) + SOURCES:
        raise CheckpointError(f"unknown source {source!r}; use 'auto' or one of {list(SOURCES)}")
    if in_chans not in (1, 3):
        raise CheckpointError(f"in_chans must be 1 or 3, got {in_chans}")
    if checkpoint is None:
        return _scratch(
            arch,
            in_chans,
            224 if img_size is None else img_size,
            drop_path_rate,
            num_register_tokens,
            mean,
            std,
            overrides,
        )

    path = Path(checkpoint)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    digest = sha256_file(path)
    sidecar = _read_sidecar(path, digest)
    raw = _read_file(path, trust_pickle)
    weights, container, ignored = _find_weights(raw, path)
    backbone, prefix, dropped = _select_backbone(weights, path)
    detected, reason = _detect_source(backbone, sidecar, container, prefix)
    is_beit = detected == "usfm"
    if source == "auto":
        source = detected
    elif (source == "usfm") != is_beit:
        raise CheckpointError(f"{path}: source={source!r} was requested but the keys say {detected!r} ({reason})")
    info: dict[str, Any] = {
        "path": str(path),
        "sha256": digest,
        "source": source,
        "detected_by": reason if source == detected else f"requested (auto-detection says {detected}: {reason})",
        "container": container,
        "prefix": prefix,
        "ignored": ignored,
        "dropped": dropped,
        "initialised": {},
        "sidecar": sidecar,
    }
    if is_beit:
        model, mean_t, std_t = _load_beit(
            backbone, path, info, in_chans, img_size, drop_path_rate, num_register_tokens, mean, std, overrides
        )
    else:
        model, mean_t, std_t = _load_vit(
            backbone,
            path,
            info,
            source,
            sidecar,
            arch,
            in_chans,
            img_size,
            drop_path_rate,
            num_register_tokens,
            mean,
            std,
            overrides,
        )
    model.eval()
    logger.info(
        "loaded %s backbone from %s (%s, %d blocks, D=%d, %d register(s), in_chans=%d); dropped: %s",
        source,
        path,
        info["arch"],
        info["depth"],
        info["embed_dim"],
        info["num_register_tokens"],
        in_chans,
        {rule: len(keys) for rule, keys in dropped.items()} or "nothing",
    )
    return LoadedBackbone(model=model, source=source, mean=mean_t, std=std_t, in_chans=in_chans, info=info)


def _scratch(
    arch: str | None,
    in_chans: int,
    img_size: int | None,
    drop_path_rate: float,
    num_register_tokens: int | None,
    mean: Any,
    std: Any,
    overrides: dict[str, Any],
) -> LoadedBackbone:
    arch = arch or "vit_small"
    if arch not in ARCHS:
        raise CheckpointError(f"unknown arch {arch!r}; choose one of {sorted(ARCHS)}")
    model = build_vit(
        arch,
        in_chans=in_chans,
        num_register_tokens=4 if num_register_tokens is None else num_register_tokens,
        drop_path_rate=drop_path_rate,
        img_size=img_size,
        **overrides,
    )
    mean_t, std_t = _resolve_normalisation(in_chans, mean, std, default_source="ultradino")
    info = {
        "path": None,
        "sha256": None,
        "source": "scratch",
        "detected_by": "checkpoint=None",
        **model.config(),
        "dropped": {},
        "initialised": {},
        "channel_adaptation": "none",
    }
    model.eval()
    logger.info("built a randomly initialised %s backbone (scratch baseline)", model.arch)
    return LoadedBackbone(model=model, source="scratch", mean=mean_t, std=std_t, in_chans=in_chans, info=info)
