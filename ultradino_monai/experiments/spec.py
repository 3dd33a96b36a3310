"""Experiment files: the data model (datasets, backbones, tasks, grid) and the YAML layout.

An experiment file (YAML) names the datasets, the backbones, the tasks and the grid between
them; :mod:`ultradino_monai.experiments.runner` turns it into cells (backbone × task × split
file / seed) that run the existing bundles and the nnU-Net harness. Layout::

    name: demo
    results_dir: runs/experiments/demo        # relative paths: to the working directory
    datasets:
      fass:
        datalist: demo_data/fass/datalist.json
        demo_dir: demo_data                    # optional: generate the demo data there when missing
        splits:                                # optional: write split files when missing
          protocol: fass                       # fass | jnu | holdout (ultradino_monai.data.splits)
          out_dir: "{results_dir}/splits/fass" # default: <datalist folder>/splits; {results_dir} is replaced
          seed: 0
          options: {num_draws: 2, num_seeds: 2}
        nnunet: {dataset_id: 901, name: DemoFASS, size: 64}   # needed when nnU-Net runs on it
    backbones:
      ultradino:
        method: UltraDINO                      # Table 1 row family
        label: ViT-Ti/16 demo                  # row: "method (label)"
        checkpoint: ${ULTRADINO_PRETRAINED_BACKBONE:-bundles/pretrain/models/backbone.pt}
        source: auto                           # auto | ultradino | dinov2 | ibot | usfm | timm
        in_chans: 1                            # 3 for natural-image weights
      random_init:
        method: scratch
        label: ViT-Ti/16
        checkpoint: null                       # random init
        arch_like: ultradino                   # same shape as that backbone's file (sidecar JSON)
        # or arch: {arch: vit_small, depth: 12, ...}  (ultradino_monai.networks.vit.build_vit)
      nnunet:
        kind: nnunet
        method: nnUNet
        label: UNet
        trainer: nnUNetTrainer_UltraDINOShort   # or budget: matched (no trainer): every segmentation
                                               # task's ViT steps x batch (experiments.budget)
    tasks:
      fass_fewshot:
        kind: segmentation                     # | classification_finetune | classification_linear_probe
        dataset: fass
        splits: [fewshot_n20_draw*]            # names / globs in the dataset's split folder (.json optional)
        seeds: [0]                             # training seeds (default [0])
        pairing: product                       # product: every split x every seed; zip: split i with seed i;
                                               # replicate: seed = the split file's replicate / draw
        column: FASS (n=20)                    # Table 1 column title (optional)
        overrides: {max_iterations: 200}       # bundle config overrides for every cell
        budget: {match: steps}                 # a 'budget: matched' nnU-Net: the ViT arms' steps x batch; or
                                               # {match: wall_clock, nnunet_steps: 50, note: "measured ..."}
        backbones: [ultradino, random_init, nnunet]   # default: every backbone that can run the task
    report:
      label_efficiency: {tasks: [fass_label_efficiency, fass_full]}   # Fig. 1b
      fewshot_bars: {task: jnu_fewshot}                               # Fig. 1a
      attention: {backbones: [random_init, ultradino], dataset: fass, section: validation, images: 3}
      comparisons: {treatments: [ultradino], baselines: [random_init, nnunet]}   # paired verdicts
                                               # (default: checkpointed ViTs vs random inits + nnU-Net)

Loading and validation: :mod:`ultradino_monai.experiments.parse`; data and split files:
:mod:`ultradino_monai.experiments.prepare`.
"""

from __future__ import annotations

import glob
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "BUNDLE_CONFIGS",
    "TASK_KINDS",
    "SpecError",
    "DatasetSpec",
    "BackboneSpec",
    "TaskSpec",
    "ExperimentSpec",
]


#: Task kind -> (training configs, evaluation configs merged after them; None = the training
#: configs write the result record themselves). Paths relative to the repository root.
BUNDLE_CONFIGS: dict[str, tuple[tuple[str, ...], tuple[str, ...] | None]] = {
    "segmentation": (("bundles/segmentation/configs/train.json",), ("bundles/segmentation/configs/evaluate.json",)),
    "classification_finetune": (
        ("bundles/classification/configs/train.json",),
        ("bundles/classification/configs/evaluate.json",),
    ),
    "classification_linear_probe": (("bundles/classification/configs/linear_probe.json",), None),
}
TASK_KINDS = tuple(BUNDLE_CONFIGS)
BACKBONE_KINDS = ("vit", "nnunet")
SOURCES = ("auto", "ultradino", "dinov2", "ibot", "usfm", "timm")
SPLIT_PROTOCOLS = ("fass", "jnu", "holdout")
#: product: every split file x every seed; zip: split file i with seed i; replicate: each split
#: file with its own replicate / draw number as the training seed (full_seed1.json -> seed 1).
PAIRINGS = ("product", "zip", "replicate")
REPO_ROOT = Path(__file__).resolve().parents[2]


class SpecError(ValueError):
    """The experiment file is invalid; the message names the key or file."""


@dataclass
class DatasetSpec:
    name: str
    datalist: Path
    demo_dir: Path | None = None
    splits: dict[str, Any] | None = None
    split_dir: Path | None = None
    nnunet: dict[str, Any] = field(default_factory=dict)

    def resolve_splits(self, patterns: Sequence[str], where: str) -> list[Path]:
        """The split files matching ``patterns`` (names or globs in :attr:`split_dir`), in pattern then name order."""
        folder = self.split_dir or self.datalist.parent / "splits"
        found: list[Path] = []
        for pattern in patterns:
            text = pattern if pattern.endswith(".json") else pattern + ".json"
            candidate = Path(text)
            base = candidate if candidate.is_absolute() else folder / candidate
            matches = sorted(Path(p) for p in glob.glob(str(base)))
            if not matches:
                raise SpecError(
                    f"{where}: no split file matches {pattern!r} in {folder} "
                    "(write them with ultradino_monai.data.splits or the dataset's 'splits' entry)"
                )
            found += [path for path in matches if path not in found]
        return found


@dataclass
class BackboneSpec:
    name: str
    kind: str = "vit"
    method: str = ""
    label: str = ""
    checkpoint: Path | None = None
    source: str = "auto"
    in_chans: int = 1
    arch: dict[str, Any] | None = None
    arch_like: str | None = None
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    tasks: list[str] | None = None
    nnunet: dict[str, Any] = field(default_factory=dict)

    @property
    def is_random_init(self) -> bool:
        return self.kind == "vit" and self.checkpoint is None

    def can_run(self, task_kind: str) -> bool:
        return task_kind == "segmentation" if self.kind == "nnunet" else task_kind in TASK_KINDS


@dataclass
class TaskSpec:
    name: str
    kind: str
    dataset: str
    splits: list[str]
    seeds: list[int]
    pairing: str = "product"
    column: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    backbones: list[str] | None = None
    configs: list[str] | None = None
    eval_configs: list[str] | None = None
    #: how a ``budget: matched`` nnU-Net is matched to the ViT arms: ``{"match": "steps"}`` (default:
    #: the same optimiser steps x batch) or ``{"match": "wall_clock", "nnunet_steps": N, "note": ...}``
    #: (N steps at the ViT batch take the ViT arm's training time on the stated device)
    budget: dict[str, Any] = field(default_factory=lambda: {"match": "steps"})


@dataclass
class ExperimentSpec:
    """A validated experiment file (module docstring)."""

    name: str
    path: Path | None
    results_dir: Path
    datasets: dict[str, DatasetSpec]
    backbones: dict[str, BackboneSpec]
    tasks: dict[str, TaskSpec]
    report: dict[str, Any]
    raw: dict[str, Any]

    def pairs(self) -> list[tuple[TaskSpec, BackboneSpec]]:
        """(task, backbone) pairs of the grid, in task order then backbone order."""
        result = []
        for task in self.tasks.values():
            for backbone in self.backbones.values():
                if task.backbones is not None and backbone.name not in task.backbones:
                    continue
                if backbone.tasks is not None and task.name not in backbone.tasks:
                    continue
                if not backbone.can_run(task.kind):
                    continue
                result.append((task, backbone))
        return result

    def architecture(self, backbone: BackboneSpec) -> dict[str, Any] | None:
        """:func:`~ultradino_monai.networks.vit.build_vit` arguments of a random-init backbone.

        ``arch_like``: the shape (arch, patch, width, depth, heads, MLP ratio, registers) of the
        other backbone's file, read from its sidecar JSON; LayerScale init stays the bundle's
        default unless ``arch`` sets ``init_values``. ``arch`` entries win over ``arch_like``.
        """
        if not backbone.is_random_init:
            return None
        shape: dict[str, Any] = {}
        if backbone.arch_like:
            other = self.backbones[backbone.arch_like]
            shape = (
                checkpoint_shape(other.checkpoint)
                if other.checkpoint is not None
                else dict(self.architecture(other) or {})
            )
        shape.update(backbone.arch or {})
        return shape or None


def checkpoint_shape(checkpoint: Path | None) -> dict[str, Any]:
    """Shape of a backbone file from its sidecar JSON (``backbone.json`` next to ``backbone.pt``)."""
    if checkpoint is None:
        return {}
    sidecar = Path(checkpoint).with_suffix(".json")
    if not sidecar.is_file():
        raise SpecError(
            f"{checkpoint}: arch_like needs the sidecar {sidecar} (the pretrain bundle writes it); "
            "give 'arch' explicitly for other files"
        )
    document = json.loads(sidecar.read_text())
    arch = document.get("arch")
    if arch in (None, "custom"):
        arch = (document.get("extra") or {}).get("arch") or "vit_small"
    shape = {"arch": arch}
    for key in ("patch_size", "embed_dim", "depth", "num_heads", "mlp_ratio", "num_register_tokens"):
        if key in document:
            shape[key] = document[key]
    return shape


def task_configs(task: TaskSpec) -> tuple[list[str], list[str] | None]:
    """(training configs, evaluation configs) of a task: the kind's defaults or the task's own."""
    default_train, default_eval = BUNDLE_CONFIGS[task.kind]
    configs = task.configs or [str(REPO_ROOT / p) for p in default_train]
    if task.eval_configs is not None:
        return configs, task.eval_configs
    return configs, None if default_eval is None else [str(REPO_ROOT / p) for p in default_eval]
