"""The backbone a classification run starts from: load it (or a random one) and record its provenance."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ultradino_monai.evaluation.provenance import backbone_name
from ultradino_monai.networks.checkpoints import CheckpointError, LoadedBackbone, load_backbone

logger = logging.getLogger(__name__)

__all__ = ["load_task_backbone", "backbone_record"]


def load_task_backbone(
    pretrained_ckpt: str | os.PathLike | None,
    source: str = "auto",
    arch: str | None = None,
    in_chans: int = 1,
    img_size: int | None = None,
    num_register_tokens: int | None = None,
    drop_path_rate: float = 0.0,
    if_missing: str = "error",
    random_init: Mapping[str, Any] | None = None,
    trust_pickle: bool = False,
) -> LoadedBackbone:
    """Load the backbone a downstream run starts from (DESIGN contract 4).

    Args:
        pretrained_ckpt: a backbone file (UltraDINO export, DINOv2, iBOT, USFM, timm), or
            ``None`` / ``""`` / ``"none"`` / ``"scratch"`` for a randomly initialised ViT
            (the "ViT from scratch" baseline of Table 1).
        source, arch, in_chans, img_size, num_register_tokens, drop_path_rate, trust_pickle:
            passed to :func:`~ultradino_monai.networks.checkpoints.load_backbone`
            (``img_size=None`` keeps the file's grid; other input sizes are interpolated).
        if_missing: ``"error"`` (default) or ``"random_init"``: what to do when
            ``pretrained_ckpt`` names a file that does not exist. The demo uses
            ``"random_init"`` so the bundle runs before the pretrain bundle has; it logs a
            warning and the result record says ``source: scratch``.
        random_init: :func:`~ultradino_monai.networks.vit.build_vit` arguments for the
            random-init case (e.g. ``{"arch": "vit_tiny", "depth": 6}``).
    """
    if if_missing not in ("error", "random_init"):
        raise ValueError(f"if_missing must be 'error' or 'random_init', got {if_missing!r}")
    scratch = pretrained_ckpt is None or str(pretrained_ckpt).strip().lower() in ("", "none", "scratch", "random")
    if not scratch and not Path(pretrained_ckpt).is_file():
        if if_missing == "error":
            raise CheckpointError(
                f"pretrained checkpoint not found: {pretrained_ckpt}. Run the pretrain bundle first "
                "(python -m monai.bundle run --config_file bundles/pretrain/configs/train.json) or pass "
                "--pretrained_ckpt none for a randomly initialised backbone"
            )
        logger.warning("pretrained checkpoint %s not found: using a RANDOMLY INITIALISED backbone", pretrained_ckpt)
        scratch = True
    if scratch:
        overrides = dict(random_init or {})
        arch_name = overrides.pop("arch", arch)
        registers = overrides.pop("num_register_tokens", None)
        return load_backbone(
            None,
            arch=arch_name,
            in_chans=in_chans,
            img_size=img_size or 224,
            drop_path_rate=drop_path_rate,
            num_register_tokens=num_register_tokens if num_register_tokens is not None else registers,
            **overrides,
        )
    return load_backbone(
        pretrained_ckpt,
        source=source,
        arch=arch,
        in_chans=in_chans,
        img_size=img_size,
        drop_path_rate=drop_path_rate,
        num_register_tokens=num_register_tokens,
        trust_pickle=trust_pickle,
    )


def backbone_record(loaded: LoadedBackbone) -> dict[str, Any]:
    """Provenance of the starting backbone: source, file, sha256, architecture, normalisation."""
    model = loaded.model
    return {
        "source": loaded.source,
        "path": loaded.info.get("path"),
        "sha256": loaded.info.get("sha256"),
        "name": backbone_name(
            getattr(model, "arch", "custom"),
            getattr(model, "embed_dim", "?"),
            getattr(model, "n_blocks", "?"),
            getattr(model, "patch_size", "?"),
        ),
        "embed_dim": getattr(model, "embed_dim", None),
        "depth": getattr(model, "n_blocks", None),
        "num_register_tokens": getattr(model, "num_register_tokens", None),
        "mean": list(loaded.mean),
        "std": list(loaded.std),
    }
