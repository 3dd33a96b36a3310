"""Builders the segmentation bundle's configs call: model, data, loss, results.

``bundles/segmentation/configs/train.json`` wires these into MONAI's ``SupervisedTrainer`` /
``SupervisedEvaluator`` so the config reads like UltraDINO's mmseg recipe (reference
``ultradino_and_dinov2_recipe.md`` §1.5):

* model: ViT backbone from :func:`~ultradino_monai.networks.checkpoints.load_backbone` +
  UperNet (:class:`~ultradino_monai.networks.segmenter.Segmenter`), stochastic depth 0.4 with
  the linear per-depth rule;
* data: the shared preprocessing (DESIGN contract 2) at ``normalization="none"``, the joint
  UltraDINO augmentation on [0, 1] images, then the backbone's normalisation; an
  iteration-based random sampler (mmengine ``InfiniteSampler``);
* loss: CE + Dice (MONAI ``DiceCELoss``), or CE + mmseg's sigmoid Dice for parity;
* optimiser (:func:`ultradino_monai.optim.build_adamw`): AdamW lr 1e-4, wd 0.01, betas
  (0.9, 0.999), layer-wise lr decay 0.99 *applied* (UltraDINO's constructor computed it but AdamW
  ignored it, §1.5 / §1.4(a); ``layer_decay false`` reproduces that: one lr and wd for all);
* schedule (:func:`ultradino_monai.optim.warmup_poly_scheduler`): linear warmup from 1e-6 over
  1500 iterations, then poly (power 1) to 0.

A trained model is ``model.pt`` (plain state dict of the :class:`Segmenter`) plus
``model.json`` (:func:`segmenter_spec`: architecture, labels, image size, normalisation,
provenance of the backbone), so evaluation and inference rebuild it without the pretraining
checkpoint.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.data import MetaTensor
from monai.losses import DiceCELoss
from monai.transforms import CastToTyped, Compose, NormalizeIntensityd, RepeatChanneld
from torch import nn
from torch.utils.data import DistributedSampler

from ultradino_monai.data.datalist import DatalistError, load_datalist, read_datalist
from ultradino_monai.engines.config_values import as_bool, optional_path
from ultradino_monai.networks.checkpoints import load_backbone, sidecar_path
from ultradino_monai.networks.segmenter import Segmenter
from ultradino_monai.networks.vit import BeitBackbone, DinoVisionTransformer
from ultradino_monai.transforms.augment import segmentation_augmentation
from ultradino_monai.transforms.ultrasound import normalization_stats, ultrasound_preprocessing
from ultradino_monai.utils.distributed import get_rank, get_world_size, is_main_process, unwrap_model
from ultradino_monai.utils.files import sha256_file, write_json_atomic, write_png_atomic

logger = logging.getLogger(__name__)

__all__ = [
    "SPEC_FORMAT",
    "BuiltSegmenter",
    "FinalValidationHandler",
    "METHOD_NAMES",
    "PALETTE",
    "PredictionWriter",
    "ValidationRecorder",
    "IterationSampler",
    "SigmoidDiceCELoss",
    "as_bool",
    "optional_path",
    "backbone_name",
    "build_segmenter",
    "colour_overlay",
    "default_pretrained",
    "finish_training",
    "image_items",
    "labels_of",
    "load_segmenter",
    "segmentation_datalist",
    "read_model_spec",
    "resolve_normalization",
    "segmentation_loss",
    "section_items",
    "segmentation_transforms",
    "segmenter_from_spec",
    "segmenter_spec",
    "split_info",
    "write_model_spec",
    "write_segmentation_result",
]

SPEC_FORMAT = "ultradino_monai.segmenter"
SPEC_VERSION = 1


def default_pretrained(path: str | os.PathLike | None) -> str | None:
    """``path`` if that file exists (the pretrain bundle's export), else None = random init (logged)."""
    path = optional_path(path)
    if path is None:
        return None
    if Path(path).is_file():
        return path
    logger.warning(
        "no pretrained backbone at %s: the segmenter starts from a RANDOM backbone. Run the pretrain bundle "
        "first or pass --pretrained_ckpt PATH (use --pretrained_ckpt null to silence this)", path,
    )
    return None


# --------------------------------------------------------------------------- data
def segmentation_datalist(dataset_dir: str | os.PathLike) -> str:
    """Return ``dataset_dir/datalist.json``, which must exist.

    Real datasets are converted beforehand (``python -m data_prep.fass`` / ``data_prep.jnu_ifm``);
    the bundle configs make the demo data first (``data_prep.demo``) when ``dataset_dir`` is the
    demo default. A missing datalist is an error that says so.
    """
    datalist = Path(dataset_dir) / "datalist.json"
    if datalist.is_file():
        return str(datalist)
    raise FileNotFoundError(
        f"{datalist} not found. Convert the dataset first, e.g. python -m data_prep.fass RAW_DIR {dataset_dir} "
        f"(or python -m data_prep.jnu_ifm), or pass --dataset_dir pointing at a converted dataset"
    )


def labels_of(*datalists: str | os.PathLike | None) -> dict[str, int]:
    """The ``"labels"`` mapping (name -> class index) of the first datalist / split file that has one.

    The indices must be exactly ``0 .. K-1`` (background 0), the layout the loss and the
    metric assume.
    """
    for path in datalists:
        if path is None:
            continue
        labels = read_datalist(path).get("labels")
        if labels:
            labels = {str(name): int(index) for name, index in labels.items()}
            if sorted(labels.values()) != list(range(len(labels))):
                raise DatalistError(f"{path}: label indices {sorted(labels.values())} are not 0..{len(labels) - 1}")
            return dict(sorted(labels.items(), key=lambda item: item[1]))
    raise DatalistError(f"none of {[str(p) for p in datalists if p]} has a top-level 'labels' mapping")


def _image_size(image_size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(image_size, (int, np.integer)):
        return int(image_size), int(image_size)
    size = tuple(int(v) for v in image_size)
    if len(size) != 2:
        raise ValueError(f"image_size must be an int or (H, W), got {image_size!r}")
    return size  # type: ignore[return-value]


def segmentation_transforms(
    image_size: int | Sequence[int],
    mean: Sequence[float],
    std: Sequence[float],
    in_chans: int = 1,
    train: bool = False,
    image_key: str = "image",
    label_key: str | None = "label",
    augmentation: Mapping[str, Any] | None = None,
) -> Compose:
    """The shared preprocessing, the joint augmentation (train) and the backbone's normalisation.

    ``ultrasound_preprocessing(normalization="none")`` (load, [0, 1], grey, resize to
    ``image_size``; nearest for the label map) -> [train: ``segmentation_augmentation`` on the
    [0, 1] image and the label map together, label back to int64] -> [grey repeated to 3
    channels when ``in_chans == 3``] -> ``(x - mean) / std`` per channel.

    The list is flat (no nested ``Compose``), so ``CacheDataset`` caches everything before
    the first random transform.

    Args:
        image_size: network grid ``(H, W)`` (UltraDINO: 224, §1.5).
        mean, std: per-model-channel normalisation on [0, 1] (from the backbone checkpoint).
        in_chans: model input channels (1, or 3 for natural-image backbones).
        train: add the augmentation.
        label_key: ``None`` for unlabelled images (inference).
        augmentation: keyword arguments of :func:`segmentation_augmentation` (``prob``,
            ``translate_mode``, ``grid_padding_mode``).

    Output: ``image`` float32 ``[in_chans, H, W]``; ``label`` int64 ``[1, H, W]``.
    """
    size = _image_size(image_size)
    mean, std = [float(v) for v in mean], [float(v) for v in std]
    if len(mean) != in_chans or len(std) != in_chans:
        raise ValueError(f"mean/std need {in_chans} value(s) (one per model channel), got {mean} / {std}")
    chain = list(
        ultrasound_preprocessing(
            image_key=image_key, label_key=label_key, spatial_size=size, normalization="none", in_chans=1
        ).transforms
    )
    if train:
        if label_key is None:
            raise ValueError("training transforms need a label_key")
        chain += list(segmentation_augmentation((image_key, label_key), **dict(augmentation or {})).transforms)
        chain.append(CastToTyped(keys=label_key, dtype=torch.int64))
    if in_chans == 3:
        chain.append(RepeatChanneld(keys=image_key, repeats=3))
    elif in_chans != 1:
        raise ValueError(f"in_chans must be 1 or 3, got {in_chans}")
    chain.append(NormalizeIntensityd(keys=image_key, subtrahend=mean, divisor=std, channel_wise=True))
    return Compose(chain)


def resolve_normalization(normalization: str, mean: Sequence[float], std: Sequence[float], in_chans: int):
    """``"auto"``: the backbone's own mean/std; ``"fus"`` / ``"imagenet"`` / ``"none"``: the named statistics."""
    if str(normalization).lower() == "auto":
        return [float(v) for v in mean], [float(v) for v in std]
    mean_n, std_n = normalization_stats(normalization, in_chans)
    return [float(v) for v in mean_n], [float(v) for v in std_n]


class IterationSampler(DistributedSampler):
    """Random indices for a fixed number of samples per process, reshuffled every pass over the data.

    The iteration-based counterpart of mmengine's ``InfiniteSampler`` used by UltraDINO
    (§1.5): one endless stream of permutations of the dataset, seeded by ``seed + epoch``;
    process ``rank`` takes every ``num_replicas``-th index. With few images (few-shot n = 20
    at batch 64) one batch holds several passes, as in mmseg. A subclass of
    ``DistributedSampler`` so MONAI's workflow calls :meth:`set_epoch`.

    Args:
        dataset: anything with ``len``.
        samples_per_replica: indices yielded per process and epoch
            (iterations x per-process batch size).
        seed: base seed of the permutations.
        num_replicas, rank: default from ``torch.distributed`` (1 / 0 without it).
    """

    def __init__(self, dataset, samples_per_replica: int, seed: int = 0, num_replicas: int | None = None,
                 rank: int | None = None) -> None:
        world, this_rank = get_world_size(), get_rank()
        num_replicas = world if num_replicas is None else int(num_replicas)
        rank = this_rank if rank is None else int(rank)
        if len(dataset) == 0:
            raise ValueError("IterationSampler got an empty dataset")
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=int(seed), drop_last=False)
        self.samples_per_replica = int(samples_per_replica)
        if self.samples_per_replica < 1:
            raise ValueError(f"samples_per_replica must be >= 1, got {samples_per_replica}")

    def __iter__(self):
        size = len(self.dataset)
        total = self.samples_per_replica * self.num_replicas
        generator = torch.Generator()
        generator.manual_seed(self.seed + self.epoch)
        passes = math.ceil(total / size)
        stream = torch.cat([torch.randperm(size, generator=generator) for _ in range(passes)])[:total]
        return iter(stream[self.rank : total : self.num_replicas].tolist())

    def __len__(self) -> int:
        return self.samples_per_replica


# --------------------------------------------------------------------------- model
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
    """ViT backbone (pretrained or random) + UperNet, as UltraDINO's mmseg ``EncoderDecoder`` (§1.5).

    Args:
        pretrained_ckpt: backbone weights (UltraDINO export, DINOv2/iBOT/USFM/timm file) or
            ``None`` for a randomly initialised backbone (the "ViT, scratch" baseline).
        num_classes: logits per pixel, background included.
        backbone_source: ``"auto"`` or a source name for :func:`load_backbone`.
        arch: expected arch of the checkpoint (checked against the file), optional.
        in_chans: model input channels (1; 3 for natural-image weights used as such).
        img_size: grid the position embedding is resampled to (224); ``None`` keeps the file's.
        drop_path_rate: stochastic depth, 0.4 in UltraDINO's segmentation backbone (§1.5).
        drop_path_uniform: ``False`` = linear per-depth rule 0 -> rate (§1.5 ``drop_path_uniform False``).
        keep_registers: ``True`` keeps the checkpoint's register tokens (paper-fidelity default);
            ``False`` drops them, as UltraDINO's public segmentation code silently did
            (``num_register_tokens`` hard-coded to 0, §1.5 / §4).
        out_indices, decoder_channels, pool_scales, dropout, decoder_norm, align_corners:
            :class:`Segmenter` / UPerHead settings (§1.5 defaults).
        scratch_arch, scratch_num_register_tokens, scratch_overrides: the random backbone
            when ``pretrained_ckpt`` is None (``scratch_overrides`` e.g. ``{"depth": 6}``).
        scratch_init_values: LayerScale init of a random backbone (1.0, the mmseg config's
            ``init_values``, §1.5; a checkpoint brings its own gamma).
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
        loaded.source, getattr(backbone, "arch", "?"), backbone.embed_dim, backbone.n_blocks,
        backbone.num_register_tokens, list(model.out_indices), model.decoder_config()["decoder_channels"], num_classes,
    )
    return BuiltSegmenter(model=model, mean=tuple(loaded.mean), std=tuple(loaded.std), in_chans=loaded.in_chans,
                          source=loaded.source, info=dict(loaded.info))


def _backbone_spec(backbone: nn.Module) -> dict[str, Any]:
    if isinstance(backbone, DinoVisionTransformer):
        return {"kind": "vit", "config": backbone.config()}
    if isinstance(backbone, BeitBackbone):
        return {
            "kind": "beit",
            "config": {
                "img_size": list(backbone.img_size),
                "patch_size": backbone.patch_size,
                "in_chans": backbone.in_chans,
                "embed_dim": backbone.embed_dim,
                "depth": backbone.n_blocks,
                "num_heads": backbone.num_heads,
                "mlp_ratio": backbone.blocks[0].mlp.fc1.out_features / backbone.embed_dim,
                "init_values": backbone.init_values,
                "use_abs_pos_emb": backbone.pos_embed is not None,
                "use_rel_pos_bias": getattr(backbone.blocks[0].attn, "relative_position_bias_table", None) is not None,
                "use_shared_rel_pos_bias": backbone.rel_pos_bias is not None,
                "arch": backbone.arch,
            },
        }
    raise TypeError(f"cannot describe a {type(backbone).__name__} backbone in a model spec")


def segmenter_spec(
    built: BuiltSegmenter,
    labels: Mapping[str, int],
    image_size: int | Sequence[int],
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Everything needed to rebuild the trained model and feed it: the ``model.json`` document.

    ``mean`` / ``std``: the normalisation the model was *trained* with when it is not the
    backbone's own (``normalization`` other than ``"auto"``).
    """
    model = unwrap_model(built.model)
    if len(labels) != model.num_classes:
        raise ValueError(f"{len(labels)} labels {dict(labels)} for a {model.num_classes}-class model")
    info = built.info
    return {
        "format": SPEC_FORMAT,
        "version": SPEC_VERSION,
        "num_classes": model.num_classes,
        "labels": {str(k): int(v) for k, v in labels.items()},
        "image_size": list(_image_size(image_size)),
        "in_chans": int(built.in_chans),
        "mean": [float(v) for v in (built.mean if mean is None else mean)],
        "std": [float(v) for v in (built.std if std is None else std)],
        "backbone": _backbone_spec(model.backbone),
        "decoder": model.decoder_config(),
        "pretrained": {
            "source": built.source,
            "path": info.get("path"),
            "sha256": info.get("sha256"),
            "registers_dropped": "registers-dropped" in info.get("dropped", {}),
        },
        "extra": dict(extra or {}),
    }


def write_model_spec(model_path: str | os.PathLike, spec: Mapping[str, Any]) -> str:
    """Write ``spec`` next to ``model_path`` (``model.pt`` -> ``model.json``), atomically; rank 0 only."""
    path = sidecar_path(model_path)
    if is_main_process():
        write_json_atomic(path, dict(spec))
        logger.info("wrote the model description %s", path)
    return str(path)


def read_model_spec(model_path: str | os.PathLike) -> dict[str, Any]:
    """Read the ``model.json`` that belongs to ``model.pt``, with a clear error when it is missing."""
    path = sidecar_path(model_path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: {model_path} needs the model description written by the segmentation "
            "bundle's training run (train.json writes model.pt and model.json into model_dir)"
        )
    spec = json.loads(path.read_text())
    if spec.get("format") != SPEC_FORMAT:
        raise ValueError(f"{path} is not a segmenter description (format {spec.get('format')!r})")
    return spec


def segmenter_from_spec(spec: Mapping[str, Any]) -> Segmenter:
    """A :class:`Segmenter` with the architecture of ``spec`` (random weights, eval mode)."""
    backbone_spec = spec["backbone"]
    config = dict(backbone_spec["config"])
    if backbone_spec["kind"] == "vit":
        backbone: nn.Module = DinoVisionTransformer(**config)
    elif backbone_spec["kind"] == "beit":
        backbone = BeitBackbone(**config)
    else:
        raise ValueError(f"unknown backbone kind {backbone_spec['kind']!r}")
    decoder = dict(spec["decoder"])
    model = Segmenter(backbone, num_classes=int(spec["num_classes"]), **decoder)
    return model.eval()


def load_segmenter(model_path: str | os.PathLike, device: str | torch.device = "cpu") -> Segmenter:
    """Rebuild the trained segmenter from ``model.json`` and load ``model.pt`` strictly (eval mode)."""
    model_path = Path(model_path)
    if not model_path.is_file():
        raise FileNotFoundError(f"trained model not found: {model_path}; run the segmentation bundle's train.json first")
    model = segmenter_from_spec(read_model_spec(model_path))
    state = torch.load(model_path, map_location="cpu", weights_only=True)
    if isinstance(state, Mapping) and "model" in state and isinstance(state["model"], Mapping):
        state = state["model"]
    model.load_state_dict(state, strict=True)
    logger.info("loaded the trained segmenter %s", model_path)
    return model.to(device).eval()


# --------------------------------------------------------------------------- loss
class SigmoidDiceCELoss(nn.Module):
    """Cross-entropy + mmseg 1.2.2's default ``DiceLoss`` (UltraDINO's loss, §1.5), for exact parity.

    Per image, with the class, row and column axes flattened together:
    ``dice = 2 Σ p·t / (Σ p² + eps + Σ t² + eps)`` with ``p = sigmoid(logits)`` (not
    softmax) and ``t`` the one-hot target; ``loss_dice = mean over images of (1 - dice)``.
    The total is ``ce_weight · CE + dice_weight · loss_dice`` (both weights 1 in UltraDINO).

    Input: logits ``[B, K, H, W]``; target ``[B, 1, H, W]`` or ``[B, H, W]`` class ids.
    """

    def __init__(self, ce_weight: float = 1.0, dice_weight: float = 1.0, eps: float = 1e-3) -> None:
        super().__init__()
        self.ce_weight = float(ce_weight)
        self.dice_weight = float(dice_weight)
        self.eps = float(eps)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if isinstance(logits, MetaTensor):
            logits = logits.as_tensor()
        if isinstance(target, MetaTensor):
            target = target.as_tensor()
        if target.ndim == logits.ndim:
            target = target.squeeze(1)
        target = target.long()
        num_classes = logits.shape[1]
        if target.min() < 0 or target.max() >= num_classes:
            raise ValueError(f"target holds class ids outside 0..{num_classes - 1}")
        ce = F.cross_entropy(logits, target)
        probabilities = logits.float().sigmoid().flatten(1)
        one_hot = F.one_hot(target, num_classes).permute(0, 3, 1, 2).float().flatten(1)
        intersection = (probabilities * one_hot).sum(1)
        denominator = (probabilities * probabilities).sum(1) + self.eps + (one_hot * one_hot).sum(1) + self.eps
        dice_loss = (1.0 - 2.0 * intersection / denominator).mean()
        return self.ce_weight * ce + self.dice_weight * dice_loss


def segmentation_loss(kind: str = "dice_ce") -> nn.Module:
    """The training loss.

    ``"dice_ce"`` (default): MONAI ``DiceCELoss(to_onehot_y=True, softmax=True)``, softmax Dice
    averaged over classes and images plus CE. ``"mmseg_sigmoid_dice_ce"``: :class:`SigmoidDiceCELoss`,
    exactly UltraDINO's CE + mmseg sigmoid Dice (§1.5).
    """
    kind = str(kind).lower()
    if kind == "dice_ce":
        return DiceCELoss(to_onehot_y=True, softmax=True)
    if kind in ("mmseg_sigmoid_dice_ce", "mmseg"):
        return SigmoidDiceCELoss()
    raise ValueError(f"unknown loss {kind!r}; use 'dice_ce' or 'mmseg_sigmoid_dice_ce'")


def split_info(split_file: str | os.PathLike) -> dict[str, Any]:
    """Provenance of a split file for result records: path, sha256, kind/seed/draw when present."""
    document = read_datalist(split_file)
    split = document.get("split") if isinstance(document.get("split"), Mapping) else {}
    return {
        "path": str(split_file),
        "sha256": sha256_file(split_file),
        "kind": split.get("kind", "datalist"),
        "dataset": split.get("dataset"),
        "seed": split.get("seed"),
        "draw": split.get("draw"),
    }


def section_items(datalist: str | os.PathLike, section: str) -> list[dict[str, Any]]:
    """Items of one section with absolute paths; a clear error when the section is empty."""
    items = load_datalist(datalist, section)
    if not items:
        raise DatalistError(f"{datalist}: section {section!r} is empty")
    return items


# --------------------------------------------------------------------------- handlers
class ValidationRecorder:
    """Logs every validation of a training run and remembers the best one.

    Attach it to the evaluator *and* the trainer (``attach(evaluator, trainer)``, the bundle does
    it in ``run``): after each validation it appends ``{"iteration", "<metric>", "per_class",
    "mean_with_background", "per_image_mean"}`` to ``path`` (JSON lines, rank 0) using the
    :class:`~ultradino_monai.evaluation.metrics.PooledDiceMetric` details, and logs one line.

    Args:
        path: the JSON-lines file (``output_dir/validation.jsonl``).
        metric_name: the evaluator's key metric (``val_fg_dice``).
        labels: class name -> index, to name the per-class values.
    """

    def __init__(self, path: str | os.PathLike, metric_name: str, labels: Mapping[str, int]) -> None:
        self.path = Path(path)
        self.metric_name = str(metric_name)
        self.names = [name for name, _ in sorted(labels.items(), key=lambda item: item[1])]
        self.best: dict[str, Any] | None = None
        self.history: list[dict[str, Any]] = []
        self._trainer = None

    def attach(self, evaluator, trainer) -> None:
        from ignite.engine import Events

        self._trainer = trainer
        evaluator.add_event_handler(Events.COMPLETED, self._record)

    def _record(self, evaluator) -> None:
        value = float(evaluator.state.metrics[self.metric_name])
        details = (getattr(evaluator.state, "metric_details", None) or {}).get(self.metric_name) or {}
        record: dict[str, Any] = {
            "iteration": int(self._trainer.state.iteration) if self._trainer is not None else None,
            self.metric_name: value,
        }
        if "per_class" in details:
            record["per_class"] = dict(zip(self.names, [float(v) for v in details["per_class"]]))
            record["mean_with_background"] = float(details["mean_with_background"])
            record["per_image_mean"] = float(details["per_image_mean"])
        self.history.append(record)
        # NaN never wins: the checkpoint saver only saves on a strictly better finite score.
        if not math.isnan(value) and (self.best is None or value > self.best[self.metric_name]):
            self.best = record
        logger.info("validation at iteration %s: %s %.4f (best %.4f at iteration %s)", record["iteration"],
                    self.metric_name, value, self.best[self.metric_name] if self.best else float("nan"),
                    self.best["iteration"] if self.best else None)
        if is_main_process():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a") as stream:
                stream.write(json.dumps(record) + "\n")


class FinalValidationHandler:
    """Validate once more when training stops between two validations.

    mmengine's iteration-based loop (UltraDINO, §1.5) validates every ``interval`` iterations
    *and* at the last one; MONAI's ``ValidationHandler`` covers the first part. At the
    trainer's ``COMPLETED`` this runs ``validator`` if the last iteration was not a multiple of
    ``interval`` (so the final weights can still become the best checkpoint).
    """

    def __init__(self, validator, interval: int) -> None:
        self.validator = validator
        self.interval = int(interval)
        if self.interval < 1:
            raise ValueError(f"interval must be >= 1, got {interval}")

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine) -> None:
        if engine.state.iteration % self.interval:
            self.validator.run(engine.state.epoch)


def finish_training(
    model_path: str | os.PathLike, spec: Mapping[str, Any], recorder: ValidationRecorder | None = None
) -> str:
    """After training: check the best checkpoint exists and record its validation score in ``model.json``."""
    model_path = Path(model_path)
    if is_main_process() and not model_path.is_file():
        raise RuntimeError(
            f"training finished without writing {model_path}: no validation produced a finite key metric "
            "(check the validation section and val_interval)"
        )
    document = dict(spec)
    if recorder is not None and recorder.best is not None:
        document["extra"] = {**dict(spec.get("extra", {})), "best_validation": recorder.best}
    write_model_spec(model_path, document)
    if is_main_process():
        logger.info("best model: %s (validation %s)", model_path, recorder.best if recorder else "n/a")
    return str(model_path)


#: Overlay colours per class index (background is left transparent); cycles for more classes.
PALETTE = (
    (0, 0, 0), (230, 25, 75), (60, 180, 75), (0, 130, 200), (255, 225, 25), (245, 130, 48),
    (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60),
)


def colour_overlay(grey: np.ndarray, mask: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """RGB uint8 overlay: ``grey`` ``[H, W]`` uint8 with foreground classes blended in :data:`PALETTE` colours."""
    if grey.shape != mask.shape:
        raise ValueError(f"image {grey.shape} and mask {mask.shape} differ in size")
    rgb = np.repeat(grey[..., None].astype(np.float32), 3, axis=-1)
    palette = np.asarray(PALETTE, dtype=np.float32)
    colours = palette[mask % len(PALETTE)]
    foreground = mask > 0
    rgb[foreground] = (1.0 - alpha) * rgb[foreground] + alpha * colours[foreground]
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def image_items(input_dir: str | os.PathLike, suffixes: Sequence[str] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
                ) -> list[dict[str, str]]:
    """``[{"image": path}]`` for every image file under ``input_dir`` (recursive, sorted)."""
    root = Path(input_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"input folder not found: {root}")
    suffixes = tuple(s.lower() for s in suffixes)
    items = [{"image": str(path)} for path in sorted(root.rglob("*")) if path.is_file() and path.suffix.lower() in suffixes]
    if not items:
        raise FileNotFoundError(f"no images ({', '.join(suffixes)}) under {root}")
    return items


class PredictionWriter:
    """Writes the prediction of every image: an index-mask PNG and a colour overlay (inference).

    For each decollated output sample the logits ``[K, h, w]`` are resized bilinearly to the
    original image size (``meta["spatial_shape"]`` of the loaded image; mmseg resizes logits,
    not labels) and arg-maxed. Outputs, mirroring the input folder's structure:
    ``masks/<rel>.png`` (uint8 class indices, 0 = background), ``overlays/<rel>.png``
    (grey image with the classes in colour) and, at the end, ``predictions.json`` (labels,
    one record per image with the pixel count of each class).

    Args:
        output_dir: destination folder.
        labels: class name -> index (from the model's ``model.json``).
        input_dir: the root the relative output paths are taken from (default: file names only).
        alpha: overlay opacity.
    """

    def __init__(self, output_dir: str | os.PathLike, labels: Mapping[str, int],
                 input_dir: str | os.PathLike | None = None, alpha: float = 0.5) -> None:
        self.output_dir = Path(output_dir)
        self.labels = {str(k): int(v) for k, v in labels.items()}
        self.input_dir = Path(input_dir).resolve() if input_dir is not None else None
        self.alpha = float(alpha)
        self.records: list[dict[str, Any]] = []

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.ITERATION_COMPLETED, self._write_batch)
        engine.add_event_handler(Events.COMPLETED, self._write_index)

    def _relative(self, filename: str) -> Path:
        path = Path(filename).resolve()
        if self.input_dir is not None:
            try:
                return path.relative_to(self.input_dir).with_suffix(".png")
            except ValueError:
                pass
        return Path(path.name).with_suffix(".png")

    def _write_batch(self, engine) -> None:
        from PIL import Image

        outputs = engine.state.output
        if isinstance(outputs, Mapping):
            raise TypeError("PredictionWriter needs decollated outputs (SupervisedEvaluator(decollate=True))")
        for sample in outputs:
            image, logits = sample["image"], sample["pred"]
            meta = image.meta if isinstance(image, MetaTensor) else {}
            filename = str(meta.get("filename_or_obj", f"image_{len(self.records):05d}"))
            height, width = (int(v) for v in meta.get("spatial_shape", logits.shape[-2:])[:2])
            logits = torch.as_tensor(logits).float().unsqueeze(0)
            logits = F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)
            mask = logits.argmax(1)[0].to(torch.uint8).cpu().numpy()
            relative = self._relative(filename)
            write_png_atomic(self.output_dir / "masks" / relative, mask)
            if os.path.isfile(filename):
                grey = np.asarray(Image.open(filename).convert("L"))
                if grey.shape == mask.shape:
                    write_png_atomic(self.output_dir / "overlays" / relative, colour_overlay(grey, mask, self.alpha))
            counts = np.bincount(mask.ravel(), minlength=len(self.labels))
            self.records.append({
                "image": filename,
                "mask": str(Path("masks") / relative),
                "overlay": str(Path("overlays") / relative),
                "pixels": {name: int(counts[index]) for name, index in self.labels.items()},
            })

    def _write_index(self, engine) -> None:
        write_json_atomic(self.output_dir / "predictions.json", {"labels": self.labels, "images": self.records})
        logger.info("wrote %d masks and overlays to %s", len(self.records), self.output_dir)


# --------------------------------------------------------------------------- result records
#: Table 1 row family per checkpoint source (PAPER_RESULTS.md).
METHOD_NAMES = {
    "ultradino": "UltraDINO",
    "dinov2": "DINOv2",
    "ibot": "iBOT",
    "usfm": "USFM",
    "timm": "timm",
    "scratch": "scratch",
}


def backbone_name(spec: Mapping[str, Any]) -> str:
    """Short backbone name for result records: ``vit_small_patch16``, ``vit_custom_d192x6_patch16``, ``beit_patch16``."""
    backbone = spec["backbone"]
    config = backbone["config"]
    patch = config.get("patch_size")
    if backbone["kind"] == "beit":
        return f"beit_{config.get('arch', 'base')}_patch{patch}".replace("beit_beit", "beit")
    arch = config.get("arch") or "custom"
    if arch == "custom":
        arch = f"vit_custom_d{config['embed_dim']}x{config['depth']}"
    return f"{arch}_patch{patch}"


def write_segmentation_result(
    result_path: str | os.PathLike,
    evaluator,
    metric_name: str,
    spec: Mapping[str, Any],
    model_path: str | os.PathLike,
    split_file: str | os.PathLike,
    section: str,
    seed: int,
    dataset: str | None = None,
    method: str | None = None,
    backbone: str | None = None,
    budget: str = "paper",
    extra: Mapping[str, Any] | None = None,
) -> str:
    """Write the result record (DESIGN contract 5) of an evaluation run, rank 0 only.

    Metrics come from the evaluator's :class:`~ultradino_monai.evaluation.metrics.PooledDiceMetric`
    details (``foreground_dice``, ``dice_with_background``, ``per_image_dice``,
    ``dice_per_class``). ``checkpoint`` / ``checkpoint_sha256`` name the *pretrained backbone*
    the model was fine-tuned from (null for random init), as recorded in ``model.json`` at
    training time; the fine-tuned weights are recorded as ``model`` / ``model_sha256``.

    Args:
        dataset: used when the split file names no ``split.dataset`` (a plain datalist).
        method: Table 1 row family; default from the backbone source (:data:`METHOD_NAMES`).
        backbone: default :func:`backbone_name`.
        budget: ``"paper"`` for the paper's schedule, anything else marks a reduced run.
    """
    from datetime import datetime, timezone

    from ultradino_monai.evaluation.aggregate import segmentation_metrics, write_result

    details = (getattr(evaluator.state, "metric_details", None) or {}).get(metric_name)
    if not details:
        raise RuntimeError(f"the evaluator has no details for metric {metric_name!r}; did it run?")
    split = split_info(split_file)
    pretrained = spec.get("pretrained", {})
    source = pretrained.get("source", "scratch")
    spec_extra = dict(spec.get("extra", {}))
    record = {
        "task": "segmentation",
        "dataset": split.get("dataset") or dataset or "unknown",
        "split_file": str(split_file),
        "split_kind": split["kind"],
        "seed": int(seed),
        "backbone": backbone or spec_extra.get("backbone") or backbone_name(spec),
        "checkpoint": pretrained.get("path") if pretrained.get("sha256") else None,
        "checkpoint_sha256": pretrained.get("sha256") or None,
        "method": method or METHOD_NAMES.get(source, source),
        "budget": str(budget),
        "metrics": segmentation_metrics(details, spec["labels"]),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "section": section,
        "draw": split.get("draw"),
        "split_sha256": split["sha256"],
        "model": str(model_path),
        "model_sha256": sha256_file(model_path),
        "backbone_source": source,
        "registers_dropped": bool(pretrained.get("registers_dropped", False)),
        "image_size": spec.get("image_size"),
        "best_validation": spec_extra.get("best_validation"),
        **dict(extra or {}),
    }
    if is_main_process():
        write_result(result_path, record)
        metrics = record["metrics"]
        logger.info(
            "%s %s: foreground Dice %.4f, per class %s -> %s", record["dataset"], section, metrics["foreground_dice"],
            {name: round(value, 4) if value == value else None for name, value in metrics["dice_per_class"].items()},
            result_path,
        )
    return str(result_path)
