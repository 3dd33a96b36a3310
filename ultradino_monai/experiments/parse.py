"""Load an experiment file (YAML), expand ``${VAR}``, validate it into an :class:`ExperimentSpec`.

Layout of the file: :mod:`ultradino_monai.experiments.spec`.

``${VAR}`` and ``${VAR:-default}`` are replaced from the environment in every string.
Validation names the offending key (``tasks.fass_fewshot.dataset``) and, unless
``check_files=False``, checks that every checkpoint and datalist exists before anything runs.
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ultradino_monai.experiments.spec import (
    BACKBONE_KINDS,
    PAIRINGS,
    SOURCES,
    SPLIT_PROTOCOLS,
    TASK_KINDS,
    BackboneSpec,
    DatasetSpec,
    ExperimentSpec,
    SpecError,
    TaskSpec,
    task_configs,
)

__all__ = ["expand_env", "load_spec", "parse_spec"]


_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


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
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(item, int) and not isinstance(item, bool) for item in value)
    ):
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
        splits["out_dir"] = (
            _path(out_dir, base, f"{where}.splits.out_dir") if out_dir else dataset.datalist.parent / "splits"
        )
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
        _unknown(
            entry,
            (
                "kind",
                "method",
                "label",
                "tasks",
                "trainer",
                "device",
                "da_workers",
                "planner",
                "checkpoint_rule",
                "disable_tta",
                "processes",
                "no_compile",
                "budget",
            ),
            where,
        )
        if entry.get("budget") not in (None, "matched"):
            raise SpecError(f"{where}.budget must be 'matched' (the ViT arms' steps x batch) or absent")
        if entry.get("budget") == "matched" and "trainer" in entry:
            raise SpecError(f"{where}: 'budget: matched' names its own trainer per task; remove 'trainer'")
        options = {
            key: entry[key]
            for key in (
                "budget",
                "trainer",
                "device",
                "da_workers",
                "planner",
                "checkpoint_rule",
                "disable_tta",
                "processes",
                "no_compile",
            )
            if key in entry
        }
        if "budget" not in options:
            options.setdefault("trainer", "nnUNetTrainer")
        backbone = BackboneSpec(
            name=name,
            kind="nnunet",
            method=str(entry.get("method", "nnUNet")),
            label=str(entry.get("label", "UNet")),
            nnunet=options,
        )
    else:
        _unknown(
            entry,
            ("kind", "method", "label", "checkpoint", "source", "in_chans", "arch", "arch_like", "overrides", "tasks"),
            where,
        )
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
            name=name,
            kind="vit",
            method=str(entry.get("method", "scratch" if checkpoint is None else "UltraDINO")),
            label=str(entry.get("label", name)),
            checkpoint=None if checkpoint is None else _path(checkpoint, base, f"{where}.checkpoint"),
            source=source,
            in_chans=int(in_chans),
            arch=arch,
            arch_like=entry.get("arch_like"),
            overrides={k: dict(v) for k, v in overrides.items()},
        )
        if checkpoint is not None and (arch is not None or backbone.arch_like is not None):
            raise SpecError(f"{where}: 'arch' / 'arch_like' describe a random init; this backbone has a checkpoint")
    if entry.get("tasks") is not None:
        backbone.tasks = _str_list(entry["tasks"], f"{where}.tasks")
    return backbone


def _parse_task(name: str, entry: Any, base: Path) -> TaskSpec:
    where = f"tasks.{name}"
    entry = _expect(entry, where)
    _unknown(
        entry,
        (
            "kind",
            "dataset",
            "splits",
            "seeds",
            "pairing",
            "column",
            "overrides",
            "backbones",
            "configs",
            "eval_configs",
            "budget",
        ),
        where,
    )
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
        name=name,
        kind=kind,
        dataset=str(entry["dataset"]),
        splits=_str_list(entry["splits"], f"{where}.splits"),
        seeds=_int_list(entry.get("seeds", [0]), f"{where}.seeds"),
        pairing=pairing,
        column=None if entry.get("column") is None else str(entry["column"]),
        overrides=_expect(entry.get("overrides") or {}, f"{where}.overrides"),
    )
    if entry.get("budget") is not None:
        budget = dict(_expect(entry["budget"], f"{where}.budget"))
        _unknown(budget, ("match", "nnunet_steps", "note"), f"{where}.budget")
        match = budget.get("match", "steps")
        if match not in ("steps", "wall_clock"):
            raise SpecError(f"{where}.budget.match must be 'steps' or 'wall_clock', got {match!r}")
        steps = budget.get("nnunet_steps")
        if match == "wall_clock" and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
            raise SpecError(f"{where}.budget: match 'wall_clock' needs nnunet_steps, a positive integer")
        if match == "steps" and steps is not None:
            raise SpecError(f"{where}.budget: nnunet_steps belongs to match 'wall_clock'")
        task.budget = {**budget, "match": match}
    if entry.get("backbones") is not None:
        task.backbones = _str_list(entry["backbones"], f"{where}.backbones")
    for key in ("configs", "eval_configs"):
        if entry.get(key) is not None:
            setattr(task, key, [str(_path(p, base, f"{where}.{key}")) for p in _str_list(entry[key], f"{where}.{key}")])
    return task


def parse_spec(
    document: Any,
    path: Path | None = None,
    base: Path | None = None,
    check_files: bool = True,
    results_dir: str | os.PathLike | None = None,
) -> ExperimentSpec:
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
    datasets = {
        _name(k, f"datasets.{k}"): _parse_dataset(k, v, base, results)
        for k, v in _expect(document["datasets"], "datasets").items()
    }
    backbones = {
        _name(k, f"backbones.{k}"): _parse_backbone(k, v, base)
        for k, v in _expect(document["backbones"], "backbones").items()
    }
    tasks = {_name(k, f"tasks.{k}"): _parse_task(k, v, base) for k, v in _expect(document["tasks"], "tasks").items()}

    labels: dict[tuple[str, str], str] = {}
    for backbone in backbones.values():
        key = (backbone.method, backbone.label)
        if key in labels:
            raise SpecError(
                f"backbones.{backbone.name}: method/label {key} is already used by backbones.{labels[key]} "
                "(Table 1 rows would merge)"
            )
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
                raise SpecError(
                    f"{where}.backbones: unknown backbone {backbone_name!r}; backbones are {sorted(backbones)}"
                )
            if not backbones[backbone_name].can_run(task.kind):
                raise SpecError(
                    f"{where}.backbones: {backbone_name} ({backbones[backbone_name].kind}) cannot run a "
                    f"{task.kind} task"
                )
            if backbones[backbone_name].kind == "nnunet" and not datasets[task.dataset].nnunet:
                raise SpecError(
                    f"{where}: nnU-Net runs on dataset {task.dataset!r}, which has no 'nnunet' entry "
                    "(dataset_id, name, size)"
                )
    report = _expect(document.get("report") or {}, "report")
    _unknown(report, ("label_efficiency", "fewshot_bars", "attention", "comparisons"), "report")
    for key, value in report.items():
        entry = _expect(value, f"report.{key}")
        if key == "comparisons":
            _unknown(entry, ("treatments", "baselines"), "report.comparisons")
            for side in ("treatments", "baselines"):
                for backbone_name in _str_list(entry.get(side, []), f"report.comparisons.{side}"):
                    if backbone_name not in backbones:
                        raise SpecError(f"report.comparisons.{side}: unknown backbone {backbone_name!r}")
            continue
        for task_name in entry.get("tasks", []) + ([entry["task"]] if "task" in entry else []):
            if task_name not in tasks:
                raise SpecError(f"report.{key}: unknown task {task_name!r}")
        for backbone_name in entry.get("backbones", []):
            if backbone_name not in backbones or backbones[backbone_name].kind != "vit":
                raise SpecError(f"report.{key}.backbones: {backbone_name!r} is not a ViT backbone of this file")
        if "dataset" in entry and entry["dataset"] not in datasets:
            raise SpecError(f"report.{key}.dataset: unknown dataset {entry['dataset']!r}")
    spec = ExperimentSpec(
        name=name,
        path=path,
        results_dir=results,
        datasets=datasets,
        backbones=backbones,
        tasks=tasks,
        report=report,
        raw=copy.deepcopy(document),
    )
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


def load_spec(
    path: str | os.PathLike, check_files: bool = True, results_dir: str | os.PathLike | None = None
) -> ExperimentSpec:
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
