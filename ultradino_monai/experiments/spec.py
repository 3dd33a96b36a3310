"""Experiment files: load, expand ``${VAR}``, validate (``python -m ultradino_monai.experiments``).

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
        trainer: nnUNetTrainer_UltraDINOShort
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
        backbones: [ultradino, random_init, nnunet]   # default: every backbone that can run the task
    report:
      label_efficiency: {tasks: [fass_label_efficiency, fass_full]}   # Fig. 1b
      fewshot_bars: {task: jnu_fewshot}                               # Fig. 1a
      attention: {backbones: [random_init, ultradino], dataset: fass, section: validation, images: 3}

``${VAR}`` and ``${VAR:-default}`` are replaced from the environment in every string.
Validation names the offending key (``tasks.fass_fewshot.dataset``) and, unless
``check_files=False``, checks that every checkpoint and datalist exists before anything runs.
"""

from __future__ import annotations

import copy
import glob
import json
import os
import re
from collections.abc import Mapping, Sequence
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
    "expand_env",
    "load_spec",
    "parse_spec",
    "prepare_datasets",
]

#: Task kind -> (training configs, evaluation configs merged after them; None = the training
#: configs write the result record themselves). Paths relative to the repository root.
BUNDLE_CONFIGS: dict[str, tuple[tuple[str, ...], tuple[str, ...] | None]] = {
    "segmentation": (("bundles/segmentation/configs/train.json",), ("bundles/segmentation/configs/evaluate.json",)),
    "classification_finetune": (("bundles/classification/configs/train.json",),
                                ("bundles/classification/configs/evaluate.json",)),
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
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class SpecError(ValueError):
    """The experiment file is invalid; the message names the key or file."""


def expand_env(value: Any, where: str = "") -> Any:
    """Replace ``${VAR}`` / ``${VAR:-default}`` in every string of ``value`` (recursively)."""
    if isinstance(value, str):
        def replace(match: re.Match) -> str:
            name, default = match.group(1), match.group(2)
            if name in os.environ:
                return os.environ[name]
            if default is not None:
                return default
            raise SpecError(f"{where or 'value'}: environment variable {name} is not set (use ${{{name}:-default}})")

        return _ENV.sub(replace, value)
    if isinstance(value, Mapping):
        return {key: expand_env(item, f"{where}.{key}" if where else str(key)) for key, item in value.items()}
    if isinstance(value, list):
        return [expand_env(item, f"{where}[{index}]") for index, item in enumerate(value)]
    return value


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
                raise SpecError(f"{where}: no split file matches {pattern!r} in {folder} "
                                "(write them with ultradino_monai.data.splits or the dataset's 'splits' entry)")
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
            shape = checkpoint_shape(other.checkpoint) if other.checkpoint is not None else dict(
                self.architecture(other) or {})
        shape.update(backbone.arch or {})
        return shape or None


def checkpoint_shape(checkpoint: Path | None) -> dict[str, Any]:
    """Shape of a backbone file from its sidecar JSON (``backbone.json`` next to ``backbone.pt``)."""
    if checkpoint is None:
        return {}
    sidecar = Path(checkpoint).with_suffix(".json")
    if not sidecar.is_file():
        raise SpecError(f"{checkpoint}: arch_like needs the sidecar {sidecar} (the pretrain bundle writes it); "
                        "give 'arch' explicitly for other files")
    document = json.loads(sidecar.read_text())
    arch = document.get("arch")
    if arch in (None, "custom"):
        arch = (document.get("extra") or {}).get("arch") or "vit_small"
    shape = {"arch": arch}
    for key in ("patch_size", "embed_dim", "depth", "num_heads", "mlp_ratio", "num_register_tokens"):
        if key in document:
            shape[key] = document[key]
    return shape


# ------------------------------------------------------------------------------ parsing
def _expect(mapping: Any, where: str) -> dict[str, Any]:
    if not isinstance(mapping, Mapping):
        raise SpecError(f"{where} must be a mapping, got {type(mapping).__name__}")
    return dict(mapping)


def _unknown(entry: Mapping[str, Any], allowed: Sequence[str], where: str) -> None:
    extra = sorted(set(entry) - set(allowed))
    if extra:
        raise SpecError(f"{where}: unknown key(s) {extra}; allowed: {sorted(allowed)}")


def _name(name: Any, where: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise SpecError(f"{where}: {name!r} is not a valid name (letters, digits, '_', '.', '-')")
    return name


def _path(value: Any, base: Path, where: str) -> Path:
    if not isinstance(value, str) or not value:
        raise SpecError(f"{where} must be a path string, got {value!r}")
    path = Path(value).expanduser()
    return path if path.is_absolute() else base / path


def _str_list(value: Any, where: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not value or not all(isinstance(item, str) and item for item in value):
        raise SpecError(f"{where} must be a non-empty list of strings, got {value!r}")
    return list(value)


def _int_list(value: Any, where: str) -> list[int]:
    if isinstance(value, int) and not isinstance(value, bool):
        return [value]
    if (not isinstance(value, list) or not value
            or not all(isinstance(item, int) and not isinstance(item, bool) for item in value)):
        raise SpecError(f"{where} must be a non-empty list of integers, got {value!r}")
    if len(set(value)) != len(value):
        raise SpecError(f"{where} has duplicates: {value}")
    return list(value)


def _parse_dataset(name: str, entry: Any, base: Path, results: Path) -> DatasetSpec:
    where = f"datasets.{name}"
    entry = _expect(entry, where)
    _unknown(entry, ("datalist", "demo_dir", "splits", "split_dir", "nnunet"), where)
    if "datalist" not in entry:
        raise SpecError(f"{where}.datalist is required")
    dataset = DatasetSpec(name=name, datalist=_path(entry["datalist"], base, f"{where}.datalist"))
    if entry.get("demo_dir") is not None:
        dataset.demo_dir = _path(entry["demo_dir"], base, f"{where}.demo_dir")
    if entry.get("split_dir") is not None:
        dataset.split_dir = _path(entry["split_dir"], base, f"{where}.split_dir")
    if entry.get("splits") is not None:
        splits = _expect(entry["splits"], f"{where}.splits")
        _unknown(splits, ("protocol", "out_dir", "seed", "options"), f"{where}.splits")
        if splits.get("protocol") not in SPLIT_PROTOCOLS:
            raise SpecError(f"{where}.splits.protocol must be one of {SPLIT_PROTOCOLS}, got {splits.get('protocol')!r}")
        out_dir = splits.get("out_dir")
        if isinstance(out_dir, str):
            out_dir = out_dir.replace("{results_dir}", str(results))
        splits["out_dir"] = _path(out_dir, base, f"{where}.splits.out_dir") if out_dir else dataset.datalist.parent / "splits"
        splits["seed"] = int(splits.get("seed", 0))
        splits["options"] = _expect(splits.get("options") or {}, f"{where}.splits.options")
        dataset.splits = splits
        if dataset.split_dir is None:
            dataset.split_dir = splits["out_dir"]
    if entry.get("nnunet") is not None:
        nnunet = _expect(entry["nnunet"], f"{where}.nnunet")
        _unknown(nnunet, ("dataset_id", "name", "size", "bit_depth"), f"{where}.nnunet")
        if not isinstance(nnunet.get("dataset_id"), int) or not 1 <= nnunet["dataset_id"] <= 999:
            raise SpecError(f"{where}.nnunet.dataset_id must be an integer 1-999, got {nnunet.get('dataset_id')!r}")
        nnunet.setdefault("name", name)
        _name(nnunet["name"], f"{where}.nnunet.name")
        dataset.nnunet = nnunet
    return dataset


def _parse_backbone(name: str, entry: Any, base: Path) -> BackboneSpec:
    where = f"backbones.{name}"
    entry = _expect(entry, where)
    kind = entry.get("kind", "vit")
    if kind not in BACKBONE_KINDS:
        raise SpecError(f"{where}.kind must be one of {BACKBONE_KINDS}, got {kind!r}")
    if kind == "nnunet":
        _unknown(entry, ("kind", "method", "label", "tasks", "trainer", "device", "da_workers", "planner",
                         "checkpoint_rule", "disable_tta", "processes", "no_compile"), where)
        options = {key: entry[key] for key in ("trainer", "device", "da_workers", "planner", "checkpoint_rule",
                                               "disable_tta", "processes", "no_compile") if key in entry}
        options.setdefault("trainer", "nnUNetTrainer")
        backbone = BackboneSpec(name=name, kind="nnunet", method=str(entry.get("method", "nnUNet")),
                                label=str(entry.get("label", "UNet")), nnunet=options)
    else:
        _unknown(entry, ("kind", "method", "label", "checkpoint", "source", "in_chans", "arch", "arch_like",
                         "overrides", "tasks"), where)
        if "checkpoint" not in entry:
            raise SpecError(f"{where}.checkpoint is required (a file, or null for a random init)")
        checkpoint = entry["checkpoint"]
        if isinstance(checkpoint, str) and checkpoint.strip().lower() in ("", "none", "null", "scratch", "random"):
            checkpoint = None
        source = entry.get("source", "auto")
        if source not in SOURCES:
            raise SpecError(f"{where}.source must be one of {SOURCES}, got {source!r}")
        in_chans = entry.get("in_chans", 1)
        if in_chans not in (1, 3):
            raise SpecError(f"{where}.in_chans must be 1 or 3, got {in_chans!r}")
        arch = entry.get("arch")
        if arch is not None:
            arch = _expect(arch, f"{where}.arch")
        overrides = _expect(entry.get("overrides") or {}, f"{where}.overrides")
        for key, value in overrides.items():
            if key not in ("segmentation", "classification"):
                raise SpecError(f"{where}.overrides: keys are 'segmentation' and 'classification', got {key!r}")
            _expect(value, f"{where}.overrides.{key}")
        backbone = BackboneSpec(
            name=name, kind="vit",
            method=str(entry.get("method", "scratch" if checkpoint is None else "UltraDINO")),
            label=str(entry.get("label", name)),
            checkpoint=None if checkpoint is None else _path(checkpoint, base, f"{where}.checkpoint"),
            source=source, in_chans=int(in_chans), arch=arch,
            arch_like=entry.get("arch_like"), overrides={k: dict(v) for k, v in overrides.items()},
        )
        if checkpoint is not None and (arch is not None or backbone.arch_like is not None):
            raise SpecError(f"{where}: 'arch' / 'arch_like' describe a random init; this backbone has a checkpoint")
    if entry.get("tasks") is not None:
        backbone.tasks = _str_list(entry["tasks"], f"{where}.tasks")
    return backbone


def _parse_task(name: str, entry: Any, base: Path) -> TaskSpec:
    where = f"tasks.{name}"
    entry = _expect(entry, where)
    _unknown(entry, ("kind", "dataset", "splits", "seeds", "pairing", "column", "overrides", "backbones",
                     "configs", "eval_configs"), where)
    kind = entry.get("kind")
    if kind not in TASK_KINDS:
        raise SpecError(f"{where}.kind must be one of {TASK_KINDS}, got {kind!r}")
    if "dataset" not in entry:
        raise SpecError(f"{where}.dataset is required")
    if "splits" not in entry:
        raise SpecError(f"{where}.splits is required (split file names or globs)")
    pairing = entry.get("pairing", "product")
    if pairing not in PAIRINGS:
        raise SpecError(f"{where}.pairing must be one of {PAIRINGS}, got {pairing!r}")
    if pairing == "replicate" and "seeds" in entry:
        raise SpecError(f"{where}: pairing 'replicate' takes the seed from each split file; remove 'seeds'")
    task = TaskSpec(
        name=name, kind=kind, dataset=str(entry["dataset"]), splits=_str_list(entry["splits"], f"{where}.splits"),
        seeds=_int_list(entry.get("seeds", [0]), f"{where}.seeds"), pairing=pairing,
        column=None if entry.get("column") is None else str(entry["column"]),
        overrides=_expect(entry.get("overrides") or {}, f"{where}.overrides"),
    )
    if entry.get("backbones") is not None:
        task.backbones = _str_list(entry["backbones"], f"{where}.backbones")
    for key in ("configs", "eval_configs"):
        if entry.get(key) is not None:
            setattr(task, key, [str(_path(p, base, f"{where}.{key}")) for p in _str_list(entry[key], f"{where}.{key}")])
    return task


def parse_spec(document: Any, path: Path | None = None, base: Path | None = None,
               check_files: bool = True, results_dir: str | os.PathLike | None = None) -> ExperimentSpec:
    """Validate an experiment document (already loaded from YAML); see the module docstring.

    Args:
        base: folder relative paths are resolved against (default: the working directory).
        check_files: check that checkpoints, datalists and configs exist (off for dry checks of
            the paper grid on a machine without the data).
        results_dir: overrides the file's ``results_dir``.
    """
    base = Path.cwd() if base is None else Path(base)
    document = expand_env(_expect(document, "experiment"))
    _unknown(document, ("name", "results_dir", "datasets", "backbones", "tasks", "report", "description"), "experiment")
    for key in ("datasets", "backbones", "tasks"):
        if not document.get(key):
            raise SpecError(f"experiment: '{key}' is required and must not be empty")
    name = _name(document.get("name", path.stem if path else "experiment"), "name")
    if "results_dir" in document or results_dir is not None:
        chosen = results_dir if results_dir is not None else document["results_dir"]
        results = _path(str(chosen), base, "results_dir")
    else:
        results = base / "runs" / "experiments" / name
    datasets = {_name(k, f"datasets.{k}"): _parse_dataset(k, v, base, results)
                for k, v in _expect(document["datasets"], "datasets").items()}
    backbones = {_name(k, f"backbones.{k}"): _parse_backbone(k, v, base)
                 for k, v in _expect(document["backbones"], "backbones").items()}
    tasks = {_name(k, f"tasks.{k}"): _parse_task(k, v, base) for k, v in _expect(document["tasks"], "tasks").items()}

    labels: dict[tuple[str, str], str] = {}
    for backbone in backbones.values():
        key = (backbone.method, backbone.label)
        if key in labels:
            raise SpecError(f"backbones.{backbone.name}: method/label {key} is already used by backbones.{labels[key]} "
                            "(Table 1 rows would merge)")
        labels[key] = backbone.name
        if backbone.arch_like is not None:
            if backbone.arch_like not in backbones:
                raise SpecError(f"backbones.{backbone.name}.arch_like: unknown backbone {backbone.arch_like!r}")
            if backbones[backbone.arch_like].kind != "vit" or backbone.arch_like == backbone.name:
                raise SpecError(f"backbones.{backbone.name}.arch_like must name another ViT backbone")
        for task_name in backbone.tasks or []:
            if task_name not in tasks:
                raise SpecError(f"backbones.{backbone.name}.tasks: unknown task {task_name!r}")
    for task in tasks.values():
        where = f"tasks.{task.name}"
        if task.dataset not in datasets:
            raise SpecError(f"{where}.dataset: unknown dataset {task.dataset!r}; datasets are {sorted(datasets)}")
        for backbone_name in task.backbones or []:
            if backbone_name not in backbones:
                raise SpecError(f"{where}.backbones: unknown backbone {backbone_name!r}; backbones are {sorted(backbones)}")
            if not backbones[backbone_name].can_run(task.kind):
                raise SpecError(f"{where}.backbones: {backbone_name} ({backbones[backbone_name].kind}) cannot run a "
                                f"{task.kind} task")
            if backbones[backbone_name].kind == "nnunet" and not datasets[task.dataset].nnunet:
                raise SpecError(f"{where}: nnU-Net runs on dataset {task.dataset!r}, which has no 'nnunet' entry "
                                "(dataset_id, name, size)")
    report = _expect(document.get("report") or {}, "report")
    _unknown(report, ("label_efficiency", "fewshot_bars", "attention"), "report")
    for key, value in report.items():
        entry = _expect(value, f"report.{key}")
        for task_name in entry.get("tasks", []) + ([entry["task"]] if "task" in entry else []):
            if task_name not in tasks:
                raise SpecError(f"report.{key}: unknown task {task_name!r}")
        for backbone_name in entry.get("backbones", []):
            if backbone_name not in backbones or backbones[backbone_name].kind != "vit":
                raise SpecError(f"report.{key}.backbones: {backbone_name!r} is not a ViT backbone of this file")
        if "dataset" in entry and entry["dataset"] not in datasets:
            raise SpecError(f"report.{key}.dataset: unknown dataset {entry['dataset']!r}")
    spec = ExperimentSpec(name=name, path=path, results_dir=results, datasets=datasets, backbones=backbones,
                          tasks=tasks, report=report, raw=copy.deepcopy(document))
    if not spec.pairs():
        raise SpecError("the grid is empty: no backbone can run any task (check tasks.*.backbones / backbones.*.tasks)")
    if check_files:
        check_spec_files(spec)
    return spec


def check_spec_files(spec: ExperimentSpec) -> None:
    """Every checkpoint, datalist (unless the demo generator makes it) and bundle config exists."""
    used = {backbone.name for _, backbone in spec.pairs()}
    used |= set(spec.report.get("attention", {}).get("backbones", []))
    for backbone in spec.backbones.values():
        if backbone.name in used and backbone.checkpoint is not None and not backbone.checkpoint.is_file():
            raise SpecError(f"backbones.{backbone.name}.checkpoint: file not found: {backbone.checkpoint}")
        if backbone.arch_like and backbone.name in used:
            spec.architecture(backbone)  # the sidecar must be readable
    for dataset in spec.datasets.values():
        if dataset.demo_dir is None and not dataset.datalist.is_file():
            raise SpecError(f"datasets.{dataset.name}.datalist: file not found: {dataset.datalist}")
    for task in spec.tasks.values():
        configs, eval_configs = task_configs(task)
        for config in configs + (eval_configs or []):
            if not Path(config).is_file():
                raise SpecError(f"tasks.{task.name}: bundle config not found: {config}")


def task_configs(task: TaskSpec) -> tuple[list[str], list[str] | None]:
    """(training configs, evaluation configs) of a task: the kind's defaults or the task's own."""
    default_train, default_eval = BUNDLE_CONFIGS[task.kind]
    configs = task.configs or [str(REPO_ROOT / p) for p in default_train]
    if task.eval_configs is not None:
        return configs, task.eval_configs
    return configs, None if default_eval is None else [str(REPO_ROOT / p) for p in default_eval]


def load_spec(path: str | os.PathLike, check_files: bool = True,
              results_dir: str | os.PathLike | None = None) -> ExperimentSpec:
    """Read and validate an experiment YAML file (relative paths: to the working directory)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise SpecError(f"experiment file not found: {path}")
    try:
        document = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise SpecError(f"{path}: not valid YAML: {error}") from error
    return parse_spec(document, path=path, check_files=check_files, results_dir=results_dir)


def prepare_datasets(spec: ExperimentSpec) -> None:
    """Generate missing demo data, (re)write the split files of datasets with a ``splits`` entry, check every task's split files resolve."""
    import logging

    log = logging.getLogger(__name__)
    for dataset in spec.datasets.values():
        if dataset.demo_dir is not None and not dataset.datalist.is_file():
            from data_prep.demo import generate_demo

            log.info("generating the demo data in %s", dataset.demo_dir)
            generate_demo(dataset.demo_dir.resolve(), seed=0)
        if not dataset.datalist.is_file():
            raise SpecError(f"datasets.{dataset.name}.datalist: file not found: {dataset.datalist}")
        if dataset.splits is not None:
            # Split files are a pure function of (datalist, protocol, seed, options) and byte-identical
            # when nothing changed, so they are rewritten on every run: never stale after a datalist change.
            from ultradino_monai.data import splits as split_module

            function = {"fass": split_module.fass_splits, "jnu": split_module.jnu_splits,
                        "holdout": split_module.holdout_splits}[dataset.splits["protocol"]]
            log.info("writing %s split files for %s to %s", dataset.splits["protocol"], dataset.name,
                     dataset.splits["out_dir"])
            try:
                function(dataset.datalist, dataset.splits["out_dir"], dataset.splits["seed"],
                         **dataset.splits["options"])
            except TypeError as error:
                raise SpecError(f"datasets.{dataset.name}.splits.options: {error}") from error
    for task in spec.tasks.values():
        files = spec.datasets[task.dataset].resolve_splits(task.splits, f"tasks.{task.name}.splits")
        if task.pairing == "zip" and len(files) != len(task.seeds):
            raise SpecError(f"tasks.{task.name}: pairing 'zip' needs as many seeds as split files "
                            f"({len(task.seeds)} seeds, {len(files)} files: {[f.name for f in files]})")
