"""Backbone checkpoints: one loader for UltraDINO exports, DINOv2, iBOT, USFM and timm ViTs.

Entry points: :func:`load_backbone` and :func:`save_backbone` (docs/design.md contract 4). Only local
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
and teacher, the teacher's is taken (the downstream models load the *teacher* backbone, docs/recipe.md §1.3).
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
0.2187705424 on [0, 1], docs/recipe.md §1.3) for ``ultradino`` 1-channel weights and ImageNet for
``dinov2``/``ibot``/``usfm``/``timm`` (docs/recipe.md §1.5, §3), after the channel adaptation above. ``mean``
and ``std`` arguments override the source's (e.g. a timm model trained with mean 0.5).

**Registers.** ``num_register_tokens=None`` keeps the file's. ``0`` with a file that has
registers drops them (rule ``registers-dropped``; UltraDINO's segmentation did this, docs/recipe.md §1.5).
Any other mismatch is an error.

**Interpolation of the position embedding at run time** follows the source's own code:
DINOv2/UltraDINO training and iBOT use offset 0.1 without antialias, the official DINOv2
register models and timm offset 0 with antialias (docs/recipe.md §2.1). ``interpolate_offset`` and
``interpolate_antialias`` overrides win.
"""

from ultradino_monai.networks.checkpoints.errors import CheckpointError
from ultradino_monai.networks.checkpoints.load import SOURCES, LoadedBackbone, load_backbone
from ultradino_monai.networks.checkpoints.normalisation import FUS_MEAN, FUS_STD, IMAGENET_MEAN, IMAGENET_STD
from ultradino_monai.networks.checkpoints.sidecar import SIDECAR_FORMAT, save_backbone, sidecar_path

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
