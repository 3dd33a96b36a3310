"""Builders the classification bundle's configs call (fine-tuning, linear probe, evaluation, inference).

Numbers come from reference ``ultradino_and_dinov2_recipe.md`` §1.4 (UltraDINO on
FETAL_PLANES_DB) and §2.6 (DINOv2 linear probe); the bundle's configs name the value and
this module only does the work. Each function does one thing, so
``bundles/classification/configs/*.json`` read like the recipe.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from ignite.metrics import Metric
from ignite.metrics.metric import reinit__is_reduced
from monai.engines.utils import PrepareBatch, default_prepare_batch
from torch import nn

from ultradino_monai.data.datalist import DatalistError, load_datalist, read_datalist
from ultradino_monai.engines.config_values import as_bool
from ultradino_monai.evaluation.linear_probe import all_gather_variable
from ultradino_monai.networks.checkpoints import CheckpointError, LoadedBackbone, load_backbone
from ultradino_monai.networks.classifier import Classifier, backbone_config, build_backbone_from_config
from ultradino_monai.utils.distributed import is_main_process, unwrap_model
from ultradino_monai.utils.files import atomic_write, write_json_atomic, write_text_atomic

logger = logging.getLogger(__name__)

__all__ = [
    "MODEL_SIDECAR_FORMAT",
    "as_bool",
    "resolve_datalist",
    "class_names",
    "load_task_backbone",
    "normalization_name",
    "classification_transforms",
    "MixupPrepareBatch",
    "PredictionCollector",
    "MacroF1",
    "write_model_sidecar",
    "read_model_sidecar",
    "classifier_from_sidecar",
    "write_confusion_matrix_png",
    "write_classification_result",
    "probe_dataset",
    "report_linear_probe",
    "inference_items",
    "DecodeDicomFramed",
    "inference_transforms",
    "ProbabilityCSVWriter",
    "backbone_record",
    "backbone_name",
    "decode_dicom_frame",
]

MODEL_SIDECAR_FORMAT = "ultradino_monai.classifier"
_DICOM_SUFFIXES = (".dcm", ".dicom")
_PNG_SUFFIXES = (".png",)


# ------------------------------------------------------------------------------ data
def resolve_datalist(dataset_dir: str | os.PathLike, split_file: str | os.PathLike | None = None) -> str:
    """The datalist (or split file) the run reads.

    ``split_file`` wins when given (a file from :mod:`ultradino_monai.data.splits`). Otherwise
    ``dataset_dir/datalist.json``, which must exist: the bundle configs make the demo data
    first (``data_prep.demo``) when ``dataset_dir`` is the demo default.
    """
    if split_file not in (None, "", "None"):
        path = Path(split_file)
        if not path.is_file():
            raise DatalistError(f"split file not found: {path}")
        return str(path)
    datalist = Path(dataset_dir) / "datalist.json"
    if not datalist.is_file():
        raise DatalistError(
            f"{datalist} not found. Convert FETAL_PLANES_DB first: "
            f"python -m data_prep.fetal_planes FETAL_PLANES_ZENODO.zip {dataset_dir}"
        )
    return str(datalist)


def class_names(datalist: str | os.PathLike) -> list[str]:
    """The top-level ``classes`` list of a classification datalist (DESIGN contract 1)."""
    classes = read_datalist(datalist).get("classes")
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        raise DatalistError(f"{datalist}: a classification datalist needs a top-level 'classes' list of names")
    return classes


# -------------------------------------------------------------------------- backbone
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
            None, arch=arch_name, in_chans=in_chans, img_size=img_size or 224, drop_path_rate=drop_path_rate,
            num_register_tokens=num_register_tokens if num_register_tokens is not None else registers, **overrides,
        )
    return load_backbone(
        pretrained_ckpt, source=source, arch=arch, in_chans=in_chans, img_size=img_size,
        drop_path_rate=drop_path_rate, num_register_tokens=num_register_tokens, trust_pickle=trust_pickle,
    )


def normalization_name(mean: Sequence[float], std: Sequence[float], requested: str = "auto") -> str:
    """Name of the shared-preprocessing normalisation to use with a backbone.

    ``requested="auto"`` picks the one matching the backbone's own ``mean``/``std``
    (``"fus"``, ``"imagenet"`` or ``"none"``); an explicit name is returned as given (e.g.
    ``"fus"`` to reproduce UltraDINO's test-time quirk (c), reference §1.4).

    Raises:
        ValueError: ``auto`` and the backbone's statistics match none of the named ones.
    """
    from ultradino_monai.transforms.ultrasound import NORMALIZATIONS, normalization_stats

    if requested != "auto":
        normalization_stats(requested, len(mean))
        return requested
    for name in NORMALIZATIONS:
        try:
            ref_mean, ref_std = normalization_stats(name, len(mean))
        except ValueError:
            continue
        if np.allclose(ref_mean, mean, atol=1e-6) and np.allclose(ref_std, std, atol=1e-6):
            return name
    raise ValueError(
        f"the backbone expects mean {list(mean)} / std {list(std)}, which is none of the shared preprocessing's "
        f"{NORMALIZATIONS}. Natural-image (ImageNet) weights: load them with in_chans=3 (the grey image is "
        "repeated, as UltraDINO's baselines did); otherwise set 'normalization' to the closest named one"
    )


def classification_transforms(
    train: bool,
    spatial_size: Sequence[int],
    normalization: str,
    in_chans: int = 1,
    augment: bool = True,
    prob: float = 0.5,
):
    """Shared preprocessing (DESIGN contract 2), with UltraDINO's augmentation for training.

    ``train and augment``: :func:`~ultradino_monai.transforms.augment.ultrasound_train_transforms`
    (load, [0, 1], grey, resize, brightness/contrast, gamma, noise, grid distortion, flip,
    normalise; reference §1.4); otherwise the deterministic
    :func:`~ultradino_monai.transforms.ultrasound.ultrasound_preprocessing`. The ``label``
    (a class index) passes through untouched. Output ``image``: float32 ``[in_chans, H, W]``.
    """
    from ultradino_monai.transforms.augment import ultrasound_train_transforms
    from ultradino_monai.transforms.ultrasound import ultrasound_preprocessing

    size = tuple(int(s) for s in spatial_size)
    if train and as_bool(augment):
        return ultrasound_train_transforms(
            "classification", image_key="image", label_key="label", spatial_size=size,
            normalization=normalization, in_chans=in_chans, prob=prob,
        )
    return ultrasound_preprocessing(
        image_key="image", label_key="label", spatial_size=size, normalization=normalization,
        in_chans=in_chans, label_is_map=False, allow_missing_label=True,
    )


# ------------------------------------------------------------------------ training
class MixupPrepareBatch(PrepareBatch):
    """MONAI ``prepare_batch`` that applies timm Mixup / CutMix with label smoothing.

    UltraDINO's fine-tuning (reference §1.4): ``Mixup(mixup_alpha=0.8, cutmix_alpha=1.0,
    prob=1.0, switch_prob=0.5, mode="batch", label_smoothing=0.1)`` with
    ``SoftTargetCrossEntropy``. The targets become soft ``[B, num_classes]`` float tensors.
    With ``enabled=False`` (or both alphas 0) images are left alone and the targets are the
    label-smoothed one-hot vectors, so the same loss applies.

    timm mixes image i with image B-1-i and needs an even batch: use ``drop_last=True``
    (UltraDINO does) and an even batch size.
    """

    def __init__(
        self,
        num_classes: int,
        mixup_alpha: float = 0.8,
        cutmix_alpha: float = 1.0,
        prob: float = 1.0,
        switch_prob: float = 0.5,
        mode: str = "batch",
        label_smoothing: float = 0.1,
        enabled: bool = True,
    ) -> None:
        from timm.data import Mixup

        self.num_classes = int(num_classes)
        self.label_smoothing = float(label_smoothing)
        self.enabled = as_bool(enabled) and (mixup_alpha > 0 or cutmix_alpha > 0) and prob > 0
        self.mixup = (
            Mixup(
                mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha, prob=prob, switch_prob=switch_prob,
                mode=mode, label_smoothing=label_smoothing, num_classes=num_classes,
            )
            if self.enabled
            else None
        )

    def __call__(self, batchdata, device=None, non_blocking: bool = False, **kwargs):
        from timm.data.mixup import mixup_target

        images, labels = default_prepare_batch(batchdata, device, non_blocking, **kwargs)
        images = images.as_tensor() if hasattr(images, "as_tensor") else torch.as_tensor(images)  # no MONAI meta
        labels = torch.as_tensor(labels).reshape(-1).long()
        if self.mixup is None:
            return images, mixup_target(labels, self.num_classes, lam=1.0, smoothing=self.label_smoothing)
        if images.shape[0] % 2:
            raise ValueError(
                f"Mixup/CutMix needs an even batch, got {images.shape[0]}; use an even batch_size and drop_last=True"
            )
        return self.mixup(images, labels)


# ------------------------------------------------------------------------- metrics
def _stack(values) -> torch.Tensor:
    if isinstance(values, (list, tuple)):
        return torch.stack([torch.as_tensor(v) for v in values])
    return torch.as_tensor(values)


class PredictionCollector(Metric):
    """Collect softmax probabilities and labels over an epoch; value = accuracy.

    :attr:`results` after ``compute()``: ``{"labels": int64 [N], "probabilities": float32
    [N, C], "predictions": int64 [N]}`` (gathered over processes under DDP).
    """

    def __init__(self, output_transform: Callable = lambda output: (output["pred"], output["label"]), device="cpu"):
        self.results: dict[str, torch.Tensor] = {}
        super().__init__(output_transform=output_transform, device=device)

    @reinit__is_reduced
    def reset(self) -> None:
        self._probabilities: list[torch.Tensor] = []
        self._labels: list[torch.Tensor] = []

    @reinit__is_reduced
    def update(self, output) -> None:
        logits, labels = output
        logits = _stack(logits).detach().float()
        self._probabilities.append(torch.softmax(logits.reshape(logits.shape[0], -1), dim=-1).cpu())
        self._labels.append(_stack(labels).detach().reshape(-1).long().cpu())

    def _gather(self) -> tuple[torch.Tensor, torch.Tensor]:
        if not self._labels:
            raise RuntimeError(f"{type(self).__name__} needs at least one batch before compute()")
        return all_gather_variable(torch.cat(self._probabilities)), all_gather_variable(torch.cat(self._labels))

    def compute(self) -> float:
        probabilities, labels = self._gather()
        predictions = probabilities.argmax(dim=-1)
        self.results = {"labels": labels, "probabilities": probabilities, "predictions": predictions}
        return float((predictions == labels).double().mean())


class MacroF1(PredictionCollector):
    """Macro F1 in [0, 1] over an epoch, computed by the project's one metric code.

    Uses :func:`ultradino_monai.evaluation.metrics.macro_f1` (DESIGN contract 3) on the
    argmax predictions; :attr:`results` as in :class:`PredictionCollector`.
    """

    def __init__(self, num_classes: int, output_transform: Callable = lambda output: (output["pred"], output["label"]), device="cpu"):
        self.num_classes = int(num_classes)
        super().__init__(output_transform=output_transform, device=device)

    def compute(self) -> float:
        from ultradino_monai.evaluation.metrics import macro_f1

        super().compute()
        return macro_f1(self.results["predictions"].numpy(), self.results["labels"].numpy(), self.num_classes)


# ------------------------------------------------------------------- model sidecar
def write_model_sidecar(
    network: nn.Module,
    path: str | os.PathLike,
    classes: Sequence[str],
    normalization: str,
    spatial_size: Sequence[int],
    pretrained: Mapping[str, Any],
) -> dict[str, Any]:
    """Write ``model.json`` next to the fine-tuned ``model.pt``: enough to rebuild the network.

    Holds the backbone architecture (:func:`~ultradino_monai.networks.classifier.backbone_config`),
    the class names, whether the head has its BatchNorm, the normalisation name and the input
    size, plus ``pretrained``: the starting backbone's :func:`backbone_record` (for the result
    records of later evaluations). Inference and export build
    the network from this file alone (:func:`classifier_from_sidecar`).
    """
    module = unwrap_model(network)
    if not isinstance(module, Classifier):
        raise TypeError(f"expected a Classifier, got {type(module).__name__}")
    document = {
        "format": MODEL_SIDECAR_FORMAT,
        "version": 1,
        "classes": list(classes),
        "num_classes": module.num_classes,
        "head_batch_norm": isinstance(module.head.norm, nn.BatchNorm1d),
        "normalization": normalization,
        "spatial_size": [int(s) for s in spatial_size],
        "backbone": backbone_config(module.backbone),
        "pretrained": dict(pretrained),
    }
    if len(document["classes"]) != module.num_classes:
        raise ValueError(f"{len(classes)} class names for a {module.num_classes}-class network")
    if is_main_process():
        write_json_atomic(path, document)
    return document


def read_model_sidecar(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check a ``model.json`` written by :func:`write_model_sidecar`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: it is written by the classification train config next to models/model.pt; "
            "fine-tune first (python -m monai.bundle run --config_file bundles/classification/configs/train.json)"
        )
    document = json.loads(path.read_text())
    if document.get("format") != MODEL_SIDECAR_FORMAT:
        raise ValueError(f"{path} is not a classifier sidecar (format {document.get('format')!r})")
    return document


def classifier_from_sidecar(path: str | os.PathLike) -> Classifier:
    """A randomly initialised :class:`Classifier` with the architecture recorded in ``path``."""
    document = read_model_sidecar(path)
    backbone = build_backbone_from_config(document["backbone"])
    return Classifier(backbone, document["num_classes"], batch_norm=document["head_batch_norm"])


# ------------------------------------------------------------------------ reporting
def write_confusion_matrix_png(matrix, classes: Sequence[str], path: str | os.PathLike, title: str = "") -> str:
    """Confusion matrix as a labelled PNG (rows: true class, columns: predicted; counts and row %)."""
    from matplotlib.figure import Figure  # object API: no pyplot state, no GUI backend

    matrix = np.asarray(matrix, dtype=np.int64)
    row_sums = matrix.sum(axis=1, keepdims=True)
    fractions = np.divide(matrix, np.maximum(row_sums, 1))
    size = max(4.0, 0.9 * len(classes) + 2.0)
    figure = Figure(figsize=(size + 1.0, size))
    axis = figure.add_subplot()
    image = axis.imshow(fractions, cmap="Blues", vmin=0.0, vmax=1.0)
    axis.set_xticks(range(len(classes)), labels=classes, rotation=45, ha="right")
    axis.set_yticks(range(len(classes)), labels=classes)
    axis.set_xlabel("predicted class")
    axis.set_ylabel("true class")
    if title:
        axis.set_title(title)
    for row in range(matrix.shape[0]):
        for col in range(matrix.shape[1]):
            colour = "white" if fractions[row, col] > 0.5 else "black"
            axis.text(col, row, f"{matrix[row, col]}\n{100 * fractions[row, col]:.0f}%", ha="center", va="center",
                      fontsize=8, color=colour)
    figure.colorbar(image, ax=axis, fraction=0.046, pad=0.04, label="fraction of the true class")
    figure.tight_layout()
    return str(atomic_write(path, lambda temporary: figure.savefig(temporary, format="png", dpi=120)))


_METHOD_NAMES = {"ultradino": "UltraDINO", "dinov2": "DINOv2", "ibot": "iBOT", "usfm": "USFM", "timm": "timm", "scratch": "scratch"}


def backbone_name(model: nn.Module) -> str:
    """Short architecture name for result records, e.g. ``vit_small_patch16`` or ``custom_d192x6_patch16``."""
    arch = getattr(model, "arch", "custom")
    if arch in (None, "custom"):
        arch = f"custom_d{getattr(model, 'embed_dim', '?')}x{getattr(model, 'n_blocks', '?')}"
    return f"{arch}_patch{getattr(model, 'patch_size', '?')}"


def backbone_record(loaded: LoadedBackbone) -> dict[str, Any]:
    """Provenance of the starting backbone: source, file, sha256, architecture, normalisation."""
    model = loaded.model
    return {
        "source": loaded.source,
        "path": loaded.info.get("path"),
        "sha256": loaded.info.get("sha256"),
        "name": backbone_name(model),
        "embed_dim": getattr(model, "embed_dim", None),
        "depth": getattr(model, "n_blocks", None),
        "num_register_tokens": getattr(model, "num_register_tokens", None),
        "mean": list(loaded.mean),
        "std": list(loaded.std),
    }


def write_classification_result(
    result_path: str | os.PathLike,
    labels,
    predictions,
    classes: Sequence[str],
    *,
    task: str,
    datalist: str | os.PathLike,
    section: str,
    backbone_info: Mapping[str, Any],
    seed: int,
    budget: str,
    method: str = "auto",
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Score predictions and write the result record ``result_path`` (DESIGN contract 5) and,
    next to it, ``<stem>_confusion.png``.

    The record (:func:`ultradino_monai.evaluation.aggregate.make_record`): ``task``
    (``classification_finetune`` / ``classification_linear_probe``), dataset and split kind
    from the datalist / split file, the starting backbone (``backbone_info`` from
    :func:`backbone_record`: its name, file and the sha256 recorded when it was loaded, which
    stays right even if the file was replaced since; ``None`` for a random init), ``method`` (``auto``: UltraDINO / DINOv2 / iBOT / USFM / timm /
    scratch from the backbone source), seed, ``budget`` (``"paper"`` only for the paper's
    schedule) and metrics: ``macro_f1`` (headline), ``accuracy``, ``f1_per_class`` and the
    ``confusion_matrix`` (rows true, columns predicted), fractions in [0, 1]. Extra keys:
    ``section``, ``classes``, ``backbone_info`` and ``extra``.
    """
    from ultradino_monai.evaluation.aggregate import classification_metrics, make_record, write_result
    from ultradino_monai.evaluation.metrics import confusion_matrix

    result_path = Path(result_path)
    y_pred = np.asarray(torch.as_tensor(predictions).cpu()).reshape(-1).astype(np.int64)
    y_true = np.asarray(torch.as_tensor(labels).cpu()).reshape(-1).astype(np.int64)
    metrics = classification_metrics(y_pred, y_true, classes)
    metrics["confusion_matrix"] = confusion_matrix(y_pred, y_true, len(classes)).tolist()
    document = read_datalist(datalist)
    split_meta = document.get("split") if isinstance(document.get("split"), dict) else {}
    png = write_confusion_matrix_png(
        metrics["confusion_matrix"], classes, result_path.with_name(f"{result_path.stem}_confusion.png"),
        title=f"{task} ({section}): accuracy {100 * metrics['accuracy']:.1f}%, macro F1 {100 * metrics['macro_f1']:.1f}",
    )
    source = str(backbone_info.get("source", "scratch"))
    record = make_record(
        task=task,
        dataset=str(document.get("dataset") or split_meta.get("dataset") or Path(datalist).parent.name),
        split_file=str(datalist),
        split_kind=str(split_meta.get("kind", "datalist")),
        seed=int(seed),
        backbone=str(backbone_info.get("name", "unknown")),
        method=_METHOD_NAMES.get(source, source) if method == "auto" else method,
        metrics=metrics,
        budget=str(budget),
        section=section,
        classes=list(classes),
        backbone_info=dict(backbone_info),
        confusion_matrix_png=Path(png).name,
        **dict(extra or {}),
    )
    if source != "scratch":
        record["checkpoint"] = str(backbone_info["path"])
        record["checkpoint_sha256"] = str(backbone_info["sha256"])
    path = write_result(result_path, record)
    logger.info(
        "%s on %s (%d images): accuracy %.2f%%, macro F1 %.2f; result in %s",
        task, section, metrics["num_images"], 100 * metrics["accuracy"], 100 * metrics["macro_f1"], path,
    )
    return record


# --------------------------------------------------------------------- linear probe
def probe_dataset(
    section: str,
    datalist: str | os.PathLike,
    extractor,
    transforms,
    preprocessing_desc: Mapping[str, Any],
    use_cache: bool,
    cache_dir: str | os.PathLike | None,
    device: torch.device | str,
    batch_size: int = 64,
    num_workers: int = 0,
):
    """Dataset of one datalist section for the probe: cached features, or images.

    ``use_cache`` (no training augmentation): each image goes through the frozen backbone
    once (:func:`~ultradino_monai.evaluation.linear_probe.cached_probe_features`) and the
    dataset serves ``[K+1, D]`` feature tensors. Otherwise a MONAI ``Dataset`` of images
    with ``transforms`` (the model then runs the backbone once per batch for all heads).
    """
    from monai.data import Dataset

    from ultradino_monai.evaluation.linear_probe import FeatureDataset, cached_probe_features

    items = load_datalist(datalist, section)
    if not items:
        raise DatalistError(f"{datalist}: section {section!r} is empty")
    if not use_cache:
        return Dataset(items, transform=transforms)
    cached = cached_probe_features(
        extractor, items, transforms, preprocessing_desc, cache_dir, device,
        batch_size=batch_size, num_workers=num_workers, name=section,
    )
    return FeatureDataset(cached["features"], cached["labels"])


def report_linear_probe(
    val_metric,
    test_evaluator: Engine,
    test_metric,
    classes: Sequence[str],
    result_path: str | os.PathLike,
    *,
    datalist: str | os.PathLike,
    loaded: LoadedBackbone,
    seed: int,
    budget: str,
    settings: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Choose the head with the best validation accuracy, score only it on the test set, write the result.

    ``val_metric``: the :class:`~ultradino_monai.evaluation.linear_probe.HeadGridMetric` of the
    validation evaluator (its last run is the end of training). ``test_evaluator`` is run
    here; its ``test_metric`` collects every head's predictions, of which only the chosen
    head's are scored (DINOv2 / UltraDINO report one head, reference §1.4, §2.6).
    Writes ``result_path`` (+ confusion PNG) and ``heads_val_accuracy.json`` next to it.
    """
    if not val_metric.results:
        raise RuntimeError("the validation evaluator has not run; cannot choose a head")
    best = val_metric.results["best_head"]
    val_accuracy = val_metric.results["accuracy"]
    test_evaluator.run()
    spec = next(s for s in val_metric.specs if s.name == best)
    result_path = Path(result_path)
    write_json_atomic(result_path.with_name("heads_val_accuracy.json"), {"best_head": best, "accuracy": val_accuracy})
    return write_classification_result(
        result_path, test_metric.results["labels"], test_metric.results["predictions"][best], classes,
        task="classification_linear_probe", datalist=datalist, section="test", backbone_info=backbone_record(loaded),
        seed=seed,
        budget=budget,
        extra={
            "best_head": {"name": best, "lr": spec.lr, "n_last_blocks": spec.n_last_blocks,
                          "use_avgpool": spec.use_avgpool, "val_accuracy": val_accuracy[best]},
            "num_heads": len(val_metric.specs),
            "settings": dict(settings or {}),
        },
    )


# ------------------------------------------------------------------------ inference
def _is_dicom(path: Path) -> bool:
    if path.suffix.lower() in _DICOM_SUFFIXES:
        return True
    if path.suffix:
        return False
    with open(path, "rb") as stream:
        head = stream.read(132)
    return len(head) == 132 and head[128:132] == b"DICM"


def inference_items(input_dir: str | os.PathLike, max_frames_per_file: int | None = None) -> list[dict[str, Any]]:
    """One item per PNG file and per frame of each DICOM file under ``input_dir`` (recursive, sorted).

    PNG items: ``{"image": path, "source": relative path, "frame": -1}``. DICOM items (``.dcm``,
    ``.dicom`` or extension-less files with the ``DICM`` preamble): ``{"image": path, "source":
    relative path, "frame": i}``, decoded lazily by :class:`DecodeDicomFramed`.
    """
    root = Path(input_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"inference input folder not found: {root}")
    items: list[dict[str, Any]] = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        relative = path.relative_to(root).as_posix()
        if path.suffix.lower() in _PNG_SUFFIXES:
            items.append({"image": str(path), "source": relative, "frame": -1})
        elif _is_dicom(path):
            try:
                frames = _dicom_frame_count(path)
            except Exception as error:  # pydicom / PixelError: not an image this decoder supports
                logger.warning("skipping %s: not a decodable DICOM image (%s)", relative, error)
                continue
            count = frames if max_frames_per_file is None else min(frames, int(max_frames_per_file))
            items.extend({"image": str(path), "source": relative, "frame": i} for i in range(count))
        else:
            logger.debug("skipping %s (neither PNG nor DICOM)", relative)
    if not items:
        raise FileNotFoundError(f"no PNG or DICOM files under {root}")
    return items


def _dicom_frame_count(path: Path) -> int:
    from pydicom import dcmread

    from ultradino_monai.data.dicom import PixelSpec

    header = dcmread(path, stop_before_pixels=True)
    return PixelSpec.from_header(header).frames


def decode_dicom_frame(path: str | os.PathLike, frame: int) -> np.ndarray:
    """One frame of an ultrasound DICOM as uint8 ``[H, W]`` or ``[H, W, 3]``, cropped to the image region.

    Decoding (with the pinned decoder plugins), photometric conversion and the crop to the
    largest 2D tissue region of ``SequenceOfUltrasoundRegions`` are :mod:`ultradino_monai.data.dicom`'s,
    the code ingestion uses, so inference sees the pixels the ingested training frames were
    made of. A file without a usable region is classified on the whole frame (with a
    warning): inference writes no pixels, so the banner does not leave the machine.
    """
    from pydicom import dcmread

    from ultradino_monai.data.dicom import FrameDecoder, PixelSpec, apply_crop, decide_crop, parse_regions

    path = Path(path)
    with open(path, "rb") as stream:
        header = dcmread(stream, stop_before_pixels=True)
        spec = PixelSpec.from_header(header)
        if not 0 <= frame < spec.frames:
            raise IndexError(f"{path}: frame {frame} out of range (the file has {spec.frames})")
        decoder = FrameDecoder(stream, header, spec)
        _, pixels = next(iter(decoder.frames([frame])))
    decision = decide_crop(parse_regions(header), spec.rows, spec.columns)
    if decision.method == "region":
        return apply_crop(pixels, decision)
    logger.warning("%s: no usable ultrasound region (%s); classifying the whole frame", path.name, decision.reason)
    return pixels


class DecodeDicomFramed:
    """Replace ``item["image"]`` (a DICOM path) by its decoded, cropped frame ``item["frame"]``.

    Items with ``frame < 0`` (PNG files) pass through. Use before the shared preprocessing,
    whose loader accepts in-memory arrays.
    """

    def __call__(self, item: Mapping[str, Any]) -> dict[str, Any]:
        item = dict(item)
        if int(item.get("frame", -1)) >= 0:
            item["image"] = decode_dicom_frame(item["image"], int(item["frame"]))
        return item


def inference_transforms(sidecar: Mapping[str, Any]):
    """DICOM frame decoding (when the item is a DICOM frame) + the shared preprocessing of ``sidecar``'s model.

    ``sidecar``: a ``model.json`` document (:func:`read_model_sidecar`): its ``spatial_size``,
    ``normalization`` and the backbone's ``in_chans`` are the ones the model was trained with.
    """
    from monai.transforms import Compose

    from ultradino_monai.transforms.ultrasound import ultrasound_preprocessing

    chain = ultrasound_preprocessing(
        image_key="image", label_key=None, spatial_size=tuple(sidecar["spatial_size"]),
        normalization=sidecar["normalization"], in_chans=int(sidecar["backbone"]["in_chans"]), label_is_map=False,
    )
    return Compose([DecodeDicomFramed(), *chain.transforms])


class ProbabilityCSVWriter:
    """Evaluator handler: write one CSV row per input with the class probabilities.

    Columns: ``source, frame, predicted_class, p_<class>...`` (``frame`` empty for PNG files).
    Rows are collected at every iteration and the file is written atomically at the end.
    """

    def __init__(self, path: str | os.PathLike, classes: Sequence[str]) -> None:
        self.path = Path(path)
        self.classes = list(classes)
        self.rows: list[list[Any]] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, lambda _: self.rows.clear())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.COMPLETED, self._write)

    def _collect(self, engine: Engine) -> None:
        batch = engine.state.batch
        logits = _stack(engine.state.output["pred"]).detach().float()
        probabilities = torch.softmax(logits.reshape(logits.shape[0], -1), dim=-1).cpu().numpy()
        sources = list(batch["source"])
        frames = [int(f) for f in torch.as_tensor(batch["frame"]).reshape(-1)]
        for source, frame, row in zip(sources, frames, probabilities):
            self.rows.append(
                [source, "" if frame < 0 else frame, self.classes[int(row.argmax())]] + [f"{p:.6f}" for p in row]
            )

    def _write(self, engine: Engine) -> None:
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["source", "frame", "predicted_class"] + [f"p_{name}" for name in self.classes])
        writer.writerows(self.rows)
        write_text_atomic(self.path, buffer.getvalue())
        logger.info("wrote %d prediction rows to %s", len(self.rows), self.path)
