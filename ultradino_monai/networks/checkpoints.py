"""Backbone checkpoints: one loader for UltraDINO exports, DINOv2, iBOT, USFM and timm ViTs.

Entry points: :func:`load_backbone` and :func:`save_backbone` (DESIGN contract 4). Only local
files are read; nothing is downloaded.

Every tensor in the file is either loaded into the model or dropped by one of the rules
below (the dropped keys are listed in ``info["dropped"]``, rule → keys). Anything else, and
any model weight the file does not provide, raises :class:`CheckpointError` before a single
weight is copied: a backbone is never partially loaded.

**Reading the file.** ``*.safetensors`` through safetensors, everything else through
``torch.load(weights_only=True)``. Files that pickle Python objects (e.g. iBOT's full
``checkpoint.pth`` stores ``args``) need ``trust_pickle=True``: only for files you trust.

**Finding the weights** (``info["container"]``). While the object is not a flat mapping of
tensors, descend into the first of ``model``, ``state_dict``, ``teacher``, ``student``,
``module`` that holds a mapping. Sibling entries (optimizer state, iteration, args, and the
student when the teacher is taken) are not loaded; their names go to ``info["ignored"]``.

**Finding the backbone** (``info["prefix"]``). The backbone prefix is whatever precedes the
key ending in ``patch_embed.proj.weight`` (``teacher.backbone.``, ``backbone.``,
``module.backbone.``, ``module.`` or nothing); when a training checkpoint holds both student
and teacher, the teacher's is taken (the downstream models load the *teacher* backbone, §1.3).
Keys outside the prefix are dropped by rule ``training-state`` when the prefix starts with
``teacher.`` (student, DINO/iBOT heads, loss centers of a DINOv2/UltraDINO training
checkpoint), or by rule ``ssl-head`` when they are projection heads
(``[module.]{head,dino_head,ibot_head}.*``); anything else is an error.

**Source detection** (``source="auto"``, first match wins; ``info["detected_by"]``):

1. ``usfm`` — BEiT markers: ``rel_pos_bias.relative_position_bias_table``, ``*.attn.q_bias`` or
   per-block ``relative_position_bias_table``.
2. ``ultradino`` — a sidecar JSON written by :func:`save_backbone` next to the file.
3. ``ultradino`` / ``dinov2`` — DINOv2 key names (``register_tokens`` or ``mask_token``):
   ``ultradino`` when the weights come from a training checkpoint (``teacher``/``model``
   container or ``teacher.backbone.`` prefix) or the patch embedding takes 1 channel, else
   ``dinov2`` (the official 3-channel LVD-142M files).
4. ``ibot`` — ``masked_embed``, or backbone weights under a ``backbone.``/``module.backbone.``
   prefix or a ``teacher``/``student`` container (iBOT / DINO-v1 training layout).
5. ``timm`` — anything else with ViT keys.

**Key conversion** to the timm layout of :class:`~ultradino_monai.networks.vit.DinoVisionTransformer`:
``blocks.{chunk}.{i}.*`` → ``blocks.{i}.*`` (DINOv2 ``block_chunks``); ``register_tokens`` →
``reg_token``; ``masked_embed`` (iBOT) → ``mask_token``; ``blocks.i.gamma_{1,2}`` →
``blocks.i.ls{1,2}.gamma`` (DeiT-3 style LayerScale); ``mask_token [1,1,D]`` → ``[1,D]``.
Position embeddings that include the class slot (DINOv2, iBOT, most timm ViTs) are folded
into the ``no_embed_class`` layout: ``cls_token += pos_embed[:, 0]`` and the slot is removed,
exactly as timm's DINOv2 converter does; the function is unchanged because the class slot is
never interpolated. Rule ``classifier-head`` drops ``head.*`` and ``pre_logits.*`` inside
the backbone (timm classifier, iBOT/DINO heads saved flat). A file without ``mask_token``
gets the model's zero-initialised mask token (rule listed in ``info["initialised"]``): it
only matters for masked-image pre-training, never for a forward pass without masks.

**Geometry** comes from the tensors (D, depth, patch size, channels, registers, LayerScale,
MLP ratio, position grid) and from the sidecar; ``num_heads`` (not visible in the weights)
from ``overrides``, the sidecar, ``arch``, the canonical arch with those dims, or D/64 (the
head width of every DINOv2/iBOT/timm ViT-S/B/L). An ``arch`` or override that contradicts
the file is an error.

**Resolution.** ``img_size=None`` keeps the file's own grid. When the file's patch grid
differs from ``img_size // patch_size`` the
position embedding is resampled with timm's ``resample_abs_pos_embed`` (bicubic,
antialias, as timm's ``checkpoint_filter_fn``); BEiT/USFM relative-bias tables with
timm's ``resize_rel_pos_bias_table``.

**Channels.** 3 → 1: the 3-channel patch embedding is folded into a 1-channel one that gives
the *same* output on a grey image g in [0, 1] replicated as (g, g, g) and normalised with the
source's per-channel mean m_c / std s_c. With the returned single-channel normalisation
m̄ = mean(m_c), s̄ = mean(s_c): ``W' = Σ_c W_c · s̄/s_c`` and
``b' = b + Σ_c (m̄ − m_c)/s_c · ΣW_c`` (a patch embedding is a stride = kernel convolution,
so a constant input contributes exactly ΣW). When the source normalises every channel alike
this is the plain sum ``W' = Σ_c W_c``, because conv((x, x, x); W) = conv(x; ΣW).
1 → 3: ``W_c = W/3`` for each channel and the mean/std are replicated, exact for any input
whose three channels are equal.

**Normalisation returned**: the sidecar's mean/std; otherwise FUS (mean 0.1842924807, std
0.2187705424 on [0, 1], §1.3) for ``ultradino`` 1-channel weights and ImageNet for
``dinov2``/``ibot``/``usfm``/``timm`` (§1.5, §3), after the channel adaptation above. ``mean``
and ``std`` arguments override the source's (e.g. a timm model trained with mean 0.5).

**Registers.** ``num_register_tokens=None`` keeps the file's. ``0`` with a file that has
registers drops them (rule ``registers-dropped``; UltraDINO's segmentation did this, §1.5).
Any other mismatch is an error.

**Interpolation of the position embedding at run time** follows the source's own code:
DINOv2/UltraDINO training and iBOT use offset 0.1 without antialias, the official DINOv2
register models and timm offset 0 with antialias (§2.1). ``interpolate_offset`` and
``interpolate_antialias`` overrides win.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import resample_abs_pos_embed, resize_rel_pos_bias_table
from torch import nn

from ultradino_monai.data.datalist import atomic_write, write_json_atomic
from ultradino_monai.networks.vit import ARCHS, BeitBackbone, DinoVisionTransformer, arch_name_for, build_vit, grid_side

logger = logging.getLogger(__name__)

__all__ = [
    "CheckpointError",
    "FUS_MEAN",
    "FUS_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "LoadedBackbone",
    "SIDECAR_FORMAT",
    "SOURCES",
    "load_backbone",
    "save_backbone",
    "sidecar_path",
]

#: UltraDINO's single-channel normalisation on the [0, 1] scale (FUS13M training set, §1.3).
FUS_MEAN: tuple[float, ...] = (0.1842924807,)
FUS_STD: tuple[float, ...] = (0.2187705424,)
#: ImageNet normalisation used by the natural-image baselines (DINOv2, iBOT, USFM, timm; §1.5, §3).
IMAGENET_MEAN: tuple[float, ...] = tuple(IMAGENET_DEFAULT_MEAN)
IMAGENET_STD: tuple[float, ...] = tuple(IMAGENET_DEFAULT_STD)

SOURCES = ("ultradino", "dinov2", "ibot", "usfm", "timm")
SIDECAR_FORMAT = "ultradino_monai.backbone"
SIDECAR_VERSION = 1
_SIDECAR_REQUIRED = (
    "arch", "patch_size", "in_chans", "num_register_tokens", "embed_dim", "depth",
    "num_heads", "init_values", "img_size", "mean", "std",
)
_CONTAINER_KEYS = ("model", "state_dict", "teacher", "student", "module")
_ANCHOR = "patch_embed.proj.weight"
_SSL_HEAD = re.compile(r"^(module\.)?((student|teacher)\.)?(head|dino_head|ibot_head)\.")
_BACKBONE_HEAD = re.compile(r"^(head|pre_logits)\.")
_CHUNKED_BLOCK = re.compile(r"^blocks\.(\d+)\.(\d+)\.(.+)$")
_BLOCK_INDEX = re.compile(r"^blocks\.(\d+)\.")
_LAYER_SCALE = re.compile(r"^(blocks\.\d+)\.gamma_([12])$")
_VIT_OVERRIDES = (
    "num_heads", "embed_dim", "depth", "mlp_ratio", "drop_path_uniform", "interpolate_offset", "interpolate_antialias",
)
_BEIT_OVERRIDES = ("num_heads", "embed_dim", "depth", "mlp_ratio", "drop_path_uniform")
_HEAD_WIDTH = 64  # every DINOv2 / iBOT / timm ViT-S/B/L uses 64-wide attention heads


class CheckpointError(ValueError):
    """A checkpoint cannot be loaded exactly: unreadable, unrecognised, or keys that do not match."""


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


# --------------------------------------------------------------------------- public API
def sidecar_path(path_pt: str | os.PathLike) -> Path:
    """The JSON sidecar that goes with a backbone file: ``backbone.pt`` → ``backbone.json``."""
    return Path(path_pt).with_suffix(".json")


def save_backbone(
    model: nn.Module,
    path_pt: str | os.PathLike,
    extra_info: Mapping[str, Any] | None = None,
    *,
    mean: tuple[float, ...] | list[float] | None = None,
    std: tuple[float, ...] | list[float] | None = None,
) -> dict[str, Any]:
    """Export a backbone as ``backbone.pt`` (plain state dict, timm keys) + ``backbone.json``.

    Both files are written through a temporary file and ``os.replace``. The sidecar holds the
    architecture (:meth:`DinoVisionTransformer.config`), the normalisation, the sha256 of the
    weights file (checked by :func:`load_backbone`) and ``extra_info`` under ``"extra"``.

    Args:
        model: a :class:`DinoVisionTransformer` (DDP ``.module`` / ``torch.compile`` wrappers are unwrapped).
        path_pt: weights file; the sidecar is ``path_pt`` with suffix ``.json``.
        extra_info: JSON-serialisable provenance (iteration, config hash, ...).
        mean, std: normalisation the weights expect; default FUS for 1 channel, ImageNet for 3.

    Returns:
        the sidecar document.
    """
    backbone = _unwrap_module(model)
    if not isinstance(backbone, DinoVisionTransformer):
        raise TypeError(f"save_backbone expects a DinoVisionTransformer, got {type(backbone).__name__}")
    path = Path(path_pt)
    if path.suffix == ".json":
        raise ValueError(f"{path}: the weights file cannot have the sidecar suffix .json")
    mean_t, std_t = _resolve_normalisation(backbone.in_chans, mean, std, default_source="ultradino")
    extra = dict(extra_info or {})
    try:
        json.dumps(extra)
    except TypeError as error:
        raise ValueError(f"extra_info must be JSON-serialisable: {error}") from error

    state = {key: value.detach().to("cpu").clone().contiguous() for key, value in backbone.state_dict().items()}
    atomic_write(path, lambda temporary: torch.save(state, temporary))
    digest = _sha256(path)
    document = {
        "format": SIDECAR_FORMAT,
        "version": SIDECAR_VERSION,
        **backbone.config(),
        "mean": list(mean_t),
        "std": list(std_t),
        "sha256": digest,
        "weights_file": path.name,
        "extra": extra,
    }
    write_json_atomic(sidecar_path(path), document)
    logger.info("saved backbone %s (%s, %d tensors) and %s", path, backbone.arch, len(state), sidecar_path(path).name)
    return document


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
        return _scratch(arch, in_chans, 224 if img_size is None else img_size, drop_path_rate, num_register_tokens, mean, std, overrides)

    path = Path(checkpoint)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    digest = _sha256(path)
    sidecar = _read_sidecar(path, digest)
    raw = _read_file(path, trust_pickle)
    weights, container, ignored = _find_weights(raw, path)
    backbone, prefix, dropped = _select_backbone(weights, path)
    detected, reason = _detect_source(backbone, sidecar, container, prefix)
    is_beit = detected == "usfm"
    if source == "auto":
        source = detected
    elif (source == "usfm") != is_beit:
        raise CheckpointError(
            f"{path}: source={source!r} was requested but the keys say {detected!r} ({reason})"
        )
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
            backbone, path, info, source, sidecar, arch, in_chans, img_size, drop_path_rate,
            num_register_tokens, mean, std, overrides,
        )
    model.eval()
    logger.info(
        "loaded %s backbone from %s (%s, %d blocks, D=%d, %d register(s), in_chans=%d); dropped: %s",
        source, path, info["arch"], info["depth"], info["embed_dim"], info["num_register_tokens"], in_chans,
        {rule: len(keys) for rule, keys in dropped.items()} or "nothing",
    )
    return LoadedBackbone(model=model, source=source, mean=mean_t, std=std_t, in_chans=in_chans, info=info)


# --------------------------------------------------------------------------- reading
def _sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _read_file(path: Path, trust_pickle: bool) -> Any:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as error:  # safetensors raises its own error types
            raise CheckpointError(f"{path}: cannot read safetensors file ({error})") from error
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if not trust_pickle:
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise CheckpointError(
                f"{path}: weights_only loading refused the file: it pickles Python objects (e.g. training "
                f"args) or is not a PyTorch checkpoint ({first_line}). If the file comes from a source you "
                "trust, pass trust_pickle=True."
            ) from error
    except Exception as error:
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({type(error).__name__}: {error})") from error
    logger.warning("%s: loading with weights_only=False (trust_pickle=True)", path)
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({type(error).__name__}: {error})") from error


def _read_sidecar(path: Path, digest: str) -> dict[str, Any] | None:
    candidate = sidecar_path(path)
    if not candidate.is_file():
        return None
    try:
        document = json.loads(candidate.read_text())
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{candidate}: sidecar is not valid JSON ({error})") from error
    if not isinstance(document, dict) or document.get("format") != SIDECAR_FORMAT:
        logger.info("%s is not a %s sidecar; ignoring it", candidate, SIDECAR_FORMAT)
        return None
    missing = [key for key in _SIDECAR_REQUIRED if key not in document]
    if missing:
        raise CheckpointError(f"{candidate}: sidecar lacks {missing}")
    if document.get("sha256") and document["sha256"] != digest:
        raise CheckpointError(
            f"{candidate}: sidecar was written for a different weights file "
            f"(sha256 {document['sha256'][:12]}…, file has {digest[:12]}…)"
        )
    return document


def _find_weights(raw: Any, path: Path) -> tuple[dict[str, torch.Tensor], list[str], list[str]]:
    """Descend through training-checkpoint containers down to a flat mapping of tensors."""
    container: list[str] = []
    ignored: list[str] = []
    node = raw
    while True:
        if not isinstance(node, Mapping):
            where = ".".join(container) or "top level"
            raise CheckpointError(f"{path}: expected a mapping of tensors at {where}, got {type(node).__name__}")
        if node and all(isinstance(value, torch.Tensor) for value in node.values()):
            return dict(node), container, ignored
        chosen = next((key for key in _CONTAINER_KEYS if isinstance(node.get(key), Mapping)), None)
        if chosen is None:
            others = [str(key) for key, value in node.items() if not isinstance(value, torch.Tensor)]
            raise CheckpointError(
                f"{path}: not a state dict: entries {others[:10]} are not tensors and none of "
                f"{list(_CONTAINER_KEYS)} holds one"
            )
        ignored.extend(".".join(container + [str(key)]) for key in node if key != chosen)
        container.append(chosen)
        node = node[chosen]


def _select_backbone(
    weights: dict[str, torch.Tensor], path: Path
) -> tuple[dict[str, torch.Tensor], str, dict[str, list[str]]]:
    anchors = [key for key in weights if key.endswith(_ANCHOR)]
    if not anchors:
        raise CheckpointError(
            f"{path}: no '{_ANCHOR}' key, so this is not a ViT backbone; first keys: {sorted(weights)[:8]}"
        )
    if len(anchors) > 1:
        teacher = [key for key in anchors if key.startswith("teacher.")]
        if len(teacher) != 1:
            raise CheckpointError(f"{path}: several backbones in one file ({anchors}); cannot choose")
        anchors = teacher
    prefix = anchors[0][: -len(_ANCHOR)]
    backbone = {key[len(prefix):]: value for key, value in weights.items() if key.startswith(prefix)}
    dropped: dict[str, list[str]] = {}
    unexpected = []
    for key in weights:
        if key.startswith(prefix):
            continue
        if prefix.startswith("teacher."):
            dropped.setdefault("training-state", []).append(key)
        elif _SSL_HEAD.match(key):
            dropped.setdefault("ssl-head", []).append(key)
        else:
            unexpected.append(key)
    if unexpected:
        raise CheckpointError(
            f"{path}: keys outside the backbone prefix {prefix!r} that no rule drops: {sorted(unexpected)[:20]}"
        )
    return backbone, prefix, dropped


def _detect_source(
    keys: Mapping[str, torch.Tensor], sidecar: dict | None, container: list[str], prefix: str
) -> tuple[str, str]:
    if "rel_pos_bias.relative_position_bias_table" in keys or any(
        key.endswith(("attn.q_bias", "attn.relative_position_bias_table")) for key in keys
    ):
        return "usfm", "BEiT keys (q_bias / relative position bias)"
    if sidecar is not None:
        return "ultradino", "sidecar JSON written by save_backbone"
    if "register_tokens" in keys or "mask_token" in keys:
        name = "register_tokens" if "register_tokens" in keys else "mask_token"
        training = prefix.startswith("teacher.") or bool(set(container) & {"teacher", "model"})
        channels = keys[_ANCHOR].shape[1]
        if training:
            return "ultradino", f"DINOv2 key {name!r} in a training checkpoint ({'.'.join(container) or prefix})"
        if channels == 1:
            return "ultradino", f"DINOv2 key {name!r} with a 1-channel patch embedding"
        return "dinov2", f"DINOv2 key {name!r} with a {channels}-channel patch embedding"
    if "masked_embed" in keys:
        return "ibot", "iBOT key 'masked_embed'"
    if prefix in ("backbone.", "module.backbone.") or bool(set(container) & {"teacher", "student"}):
        return "ibot", f"iBOT/DINO training layout (container {container}, prefix {prefix!r})"
    return "timm", "plain ViT keys"


# --------------------------------------------------------------------------- ViT sources
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
            state["pos_embed"], new_size=target, old_size=grid, num_prefix_tokens=0,
            interpolation="bicubic", antialias=True,
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
        arch=arch_name, embed_dim=embed_dim, depth=depth, num_heads=num_heads, patch_size=patch_size,
        mlp_ratio=mlp_ratio, num_register_tokens=registers, file_num_register_tokens=file_registers,
        layer_scale=has_layer_scale, file_in_chans=file_chans, in_chans=in_chans, grid=list(target),
        interpolate_offset=model.interpolate_offset, interpolate_antialias=model.interpolate_antialias,
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


def _count_blocks(state: Mapping[str, torch.Tensor], path: Path) -> int:
    indices = {int(match.group(1)) for key in state if (match := _BLOCK_INDEX.match(key))}
    if not indices:
        raise CheckpointError(f"{path}: no transformer blocks (blocks.i.*) in the checkpoint")
    depth = max(indices) + 1
    if indices != set(range(depth)):
        missing = sorted(set(range(depth)) - indices)
        raise CheckpointError(f"{path}: block indices are not contiguous: missing {missing}")
    return depth


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


def _check_sidecar_geometry(
    sidecar: dict, embed_dim: int, depth: int, patch_size: int, chans: int, registers: int, path: Path
) -> None:
    found = {
        "embed_dim": embed_dim, "depth": depth, "patch_size": patch_size, "in_chans": chans,
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
        return 0.0, True  # official DINOv2 reg models and timm (§2.1)
    return 0.1, False  # DINOv2 / UltraDINO training, iBOT (§2.1)


# --------------------------------------------------------------------------- USFM / BEiT
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
        arch=model.arch, embed_dim=embed_dim, depth=depth, num_heads=num_heads, patch_size=patch_size,
        mlp_ratio=mlp_ratio, num_register_tokens=0, file_num_register_tokens=0, layer_scale=has_layer_scale,
        file_in_chans=file_chans, in_chans=in_chans, grid=list(target),
        file_grid=list(file_grid) if file_grid else None, pos_embed_resampled=resized,
    )
    return model, mean_t, std_t


# --------------------------------------------------------------------------- shared steps
def _check_overrides(overrides: dict[str, Any], allowed: tuple[str, ...], path: Path) -> None:
    unknown = sorted(set(overrides) - set(allowed))
    if unknown:
        raise CheckpointError(
            f"{path}: unsupported override(s) {unknown} when loading a checkpoint; allowed: {list(allowed)}"
        )


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
    info = {"path": None, "sha256": None, "source": "scratch", "detected_by": "checkpoint=None", **model.config(),
            "dropped": {}, "initialised": {}, "channel_adaptation": "none"}
    model.eval()
    logger.info("built a randomly initialised %s backbone (scratch baseline)", model.arch)
    return LoadedBackbone(model=model, source="scratch", mean=mean_t, std=std_t, in_chans=in_chans, info=info)


def _unwrap_module(model: nn.Module) -> nn.Module:
    while True:
        if hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):  # torch.compile
            model = model._orig_mod
        elif isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        else:
            return model
