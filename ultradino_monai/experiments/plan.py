"""Expand an experiment into jobs: cells (one bundle or nnU-Net run each) and nnU-Net prepare steps.

A **cell** is one backbone × task × (split file, seed): one repetition of the task's bundle
(segmentation, classification fine-tune or linear probe), planned by
:func:`ultradino_monai.evaluation.repeat.plan_runs` (the same overrides contract as the
repeat driver: ``seed``, ``split_file``, ``run_name``, ``output_dir``, ``model_dir``,
``result_path``) and executed by :func:`~ultradino_monai.evaluation.repeat.execute_run`
(``python -m monai.bundle run`` per stage), or, for an nnU-Net backbone, the nnU-Net
harness's ``train`` / ``predict`` / ``score`` for that split file's fold after one ``export`` +
``plan`` job per dataset. :mod:`ultradino_monai.experiments.runner` runs them.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ultradino_monai.evaluation.repeat import RepeatError, plan_runs
from ultradino_monai.experiments.budget import (
    StepBudget,
    budget_trainer_name,
    config_value,
    nnunet_schedule,
    segmentation_budget,
)
from ultradino_monai.experiments.spec import (
    BackboneSpec,
    ExperimentSpec,
    SpecError,
    TaskSpec,
    task_configs,
)
from ultradino_monai.utils.files import write_json_atomic

__all__ = [
    "Job",
    "plan_jobs",
    "bundle_overrides",
    "nnunet_trainer",
    "arm_budgets",
    "write_experiment_snapshot",
]


RESULT_NAME = "result.json"
WORK_DIR = "_work"


@dataclass
class Job:
    """One unit of work: a cell (writes ``result_path``) or an nnU-Net prepare step (writes ``marker``)."""

    job_id: str
    kind: str  # "cell" | "prepare"
    run_dir: Path
    description: dict[str, Any]
    task: str | None = None
    backbone: str | None = None
    cell_id: str | None = None
    split_file: str | None = None
    seed: int | None = None
    result_path: Path | None = None
    marker: tuple[Path, dict[str, Any]] | None = None
    requires: list[str] = field(default_factory=list)

    def is_done(self) -> bool:
        if self.kind == "cell":
            return self.result_path is not None and self.result_path.is_file()
        path, content = self.marker
        if not path.is_file():
            return False
        try:
            return json.loads(path.read_text()) == content
        except json.JSONDecodeError:
            return False


def _random_init_default(config: str, key: str) -> dict[str, Any]:
    try:
        value = json.loads(Path(config).read_text()).get(key)
    except (OSError, json.JSONDecodeError):
        return {}
    return dict(value) if isinstance(value, Mapping) else {}


def bundle_overrides(spec: ExperimentSpec, task: TaskSpec, backbone: BackboneSpec) -> dict[str, Any]:
    """Config overrides of every cell of (task, ViT backbone); the run-specific keys are added by ``plan_runs``.

    The checkpoint goes to ``pretrained_ckpt`` (``"none"`` for a random init: the bundle CLI
    drops ``null`` overrides). A random init gets the backbone's architecture
    (:meth:`ExperimentSpec.architecture`) as the bundle's ``scratch_*`` keys (segmentation) or
    ``random_init`` (classification, merged into the config's own ``random_init``). The
    classification bundles get ``if_missing: error`` so a missing file never silently becomes
    a random init. Then the task's ``overrides`` and the backbone's per-bundle ``overrides``.
    """
    dataset = spec.datasets[task.dataset]
    checkpoint = "none" if backbone.checkpoint is None else str(backbone.checkpoint)
    overrides: dict[str, Any] = {
        "pretrained_ckpt": checkpoint,
        "backbone_source": backbone.source,
        "in_chans": backbone.in_chans,
        "dataset_dir": str(dataset.datalist.parent),
    }
    architecture = spec.architecture(backbone)
    configs, _ = task_configs(task)
    if task.kind == "segmentation":
        family = "segmentation"
        overrides.update({"method": backbone.method, "backbone": backbone.label})
        if architecture:
            shape = dict(architecture)
            overrides["scratch_arch"] = shape.pop("arch", "vit_small")
            if "init_values" in shape:
                overrides["scratch_init_values"] = shape.pop("init_values")
            shape.pop("num_register_tokens", None)  # the segmentation bundle's random ViT keeps 4 registers
            overrides["scratch_overrides"] = shape
    else:
        family = "classification"
        overrides["if_missing"] = "error"
        if architecture:
            overrides["random_init"] = {**_random_init_default(configs[0], "random_init"), **architecture}
        if task.kind == "classification_linear_probe":
            overrides["cache_dir"] = str(spec.results_dir / WORK_DIR / "feature_cache")
    overrides.update(task.overrides)
    overrides.update(backbone.overrides.get(family, {}))
    return overrides


def _cell_id(split_file: Path, seed: int) -> str:
    return f"{split_file.stem}_seed{seed}"


def _split_replicate(path: Path) -> int:
    split = json.loads(Path(path).read_text()).get("split") or {}
    for key in ("replicate", "draw"):
        if isinstance(split.get(key), int):
            return int(split[key])
    raise SpecError(f"{path}: pairing 'replicate' needs split.replicate or split.draw in the split file")


def _pairs(task: TaskSpec, files: Sequence[Path]) -> list[tuple[Path, int]]:
    if task.pairing == "zip":
        return list(zip(files, task.seeds))
    if task.pairing == "replicate":
        return [(path, _split_replicate(path)) for path in files]
    return [(path, seed) for path in files for seed in task.seeds]


def _nnunet_args(backbone: BackboneSpec) -> list[str]:
    args = []
    if backbone.nnunet.get("processes") is not None:
        args += ["--processes", str(int(backbone.nnunet["processes"]))]
    if backbone.nnunet.get("no_compile"):
        args.append("--no-compile")
    return args


def _nnunet_budget(task: TaskSpec, vit: StepBudget) -> StepBudget:
    """A ``budget: matched`` nnU-Net's steps × batch in ``task``: the ViT arms', or the task's wall-clock steps."""
    if task.budget.get("match") == "wall_clock":
        return StepBudget(steps=int(task.budget["nnunet_steps"]), batch=vit.batch)
    return vit


def nnunet_trainer(task: TaskSpec, backbone: BackboneSpec) -> str:
    """The nnU-Net trainer of (task, nnU-Net backbone): the backbone's, or the task's budget trainer.

    ``budget: matched``: ``nnUNetTrainer_UltraDINOBudget_<E>x<I>_b<B>`` with the task's ViT
    segmentation budget (:func:`~ultradino_monai.experiments.budget.segmentation_budget`), or the
    task's ``budget.nnunet_steps`` at the ViT batch size when it is matched by wall-clock.
    """
    if backbone.nnunet.get("budget") != "matched":
        return str(backbone.nnunet["trainer"])
    configs, _ = task_configs(task)
    try:
        return budget_trainer_name(_nnunet_budget(task, segmentation_budget(configs, task.overrides)))
    except ValueError as error:
        raise SpecError(f"tasks.{task.name} / backbones.{backbone.name} (budget: matched): {error}") from error


def arm_budgets(spec: ExperimentSpec, task: TaskSpec) -> dict[str, Any]:
    """What every arm of a task trains on, for the report: ``{"matched_by": ..., "arms": {backbone: text}}``.

    ``matched_by``: ``"steps x batch"`` when every arm of a segmentation task has the same
    optimiser steps × batch (the ViT arms and a ``budget: matched`` nnU-Net); ``"wall-clock"``
    (plus the task's ``budget.note``) when the ViT arms share steps × batch and nnU-Net gets the
    task's wall-clock steps; ``"recipe"`` when the ViT arms of a classification task share epochs ×
    batch of one bundle config; ``"none"`` otherwise (e.g. nnU-Net on its own 1000-epoch schedule,
    as in the paper, or a ViT arm with its own overrides).
    """
    configs, _ = task_configs(task)
    family = "segmentation" if task.kind == "segmentation" else "classification"
    wall_clock = task.budget.get("match") == "wall_clock"
    arms: dict[str, str] = {}
    vit_budgets: set[tuple[int, int]] = set()
    nnunet_budgets: set[tuple[int, int]] = set()
    own_schedule = False
    for task_spec, backbone in spec.pairs():
        if task_spec.name != task.name:
            continue
        trainer = nnunet_trainer(task, backbone) if backbone.kind == "nnunet" else None
        if backbone.kind == "nnunet" and backbone.nnunet.get("budget") != "matched":
            arms[backbone.name] = f"{trainer} (nnU-Net's own schedule)"
            own_schedule = True
            continue
        overrides = task.overrides if trainer else {**task.overrides, **backbone.overrides.get(family, {})}
        if task.kind != "segmentation":
            epochs, batch = (config_value(configs, overrides, key) for key in ("epochs", "batch_size"))
            arms[backbone.name] = f"{epochs} epochs × batch {batch}"
            vit_budgets.add((epochs, batch))
            continue
        try:
            budget = segmentation_budget(configs, overrides)
        except ValueError:  # an expression in the config: say so rather than guess
            arms[backbone.name] = "the segmentation configs' schedule (not a plain number)"
            own_schedule = True
            continue
        if trainer:
            budget = _nnunet_budget(task, budget)
            epochs, per_epoch = nnunet_schedule(budget.steps)
            arms[backbone.name] = (
                f"{epochs * per_epoch} steps × batch {budget.batch} ({epochs} epochs × {per_epoch}, {trainer})"
            )
            nnunet_budgets.add((epochs * per_epoch, budget.batch))
        else:
            arms[backbone.name] = budget.describe()
            vit_budgets.add((budget.steps, budget.batch))
    if own_schedule or len(vit_budgets) > 1 or len(nnunet_budgets) > 1:
        matched_by = "none"
    elif task.kind != "segmentation":
        matched_by = "recipe"
    elif wall_clock and nnunet_budgets:
        note = task.budget.get("note")
        matched_by = "wall-clock" + (f" ({note})" if note else "")
    elif nnunet_budgets and nnunet_budgets != vit_budgets and vit_budgets:
        matched_by = "none"
    else:
        matched_by = "steps x batch"
    return {"matched_by": matched_by, "arms": arms}


def plan_jobs(spec: ExperimentSpec) -> list[Job]:
    """Every job of the grid, cells in task → backbone → split → seed order (split files must exist)."""
    results = spec.results_dir
    jobs: list[Job] = []
    files_of = {
        task.name: spec.datasets[task.dataset].resolve_splits(task.splits, f"tasks.{task.name}.splits")
        for task in spec.tasks.values()
    }
    # nnU-Net: one export + plan per (backbone, dataset) holding every split file it trains on
    nnunet_folds: dict[tuple[str, str], list[Path]] = {}
    for task, backbone in spec.pairs():
        if backbone.kind == "nnunet":
            folds = nnunet_folds.setdefault((backbone.name, task.dataset), [])
            for path, _ in _pairs(task, files_of[task.name]):
                resolved = path.resolve()
                if resolved in folds:
                    raise SpecError(
                        f"tasks.{task.name}: nnU-Net ({backbone.name}) trains one model per split file, "
                        f"but {path.name} is used twice on dataset {task.dataset} (another seed or task)"
                    )
                folds.append(resolved)
    prepare_ids: dict[tuple[str, str], str] = {}
    for (backbone_name, dataset_name), folds in nnunet_folds.items():
        backbone, dataset = spec.backbones[backbone_name], spec.datasets[dataset_name]
        workdir = results / WORK_DIR / "nnunet" / backbone_name
        nn = dataset.nnunet
        size = nn.get("size", 224)
        sizes = [str(int(s)) for s in (size if isinstance(size, list) else [size])]
        common = ["--workdir", str(workdir), *_nnunet_args(backbone)]
        export = [
            sys.executable,
            "-m",
            "nnunet_baselines",
            "export",
            str(dataset.datalist.resolve()),
            "--split-file",
            *map(str, folds),
            "--dataset-id",
            str(nn["dataset_id"]),
            "--name",
            nn["name"],
            "--size",
            *sizes,
            "--bit-depth",
            str(nn.get("bit_depth", 8)),
            "--dataset-name",
            dataset_name,
            *common,
        ]
        plan = [
            sys.executable,
            "-m",
            "nnunet_baselines",
            "plan",
            "--dataset-id",
            str(nn["dataset_id"]),
            "--planner",
            str(backbone.nnunet.get("planner", "ExperimentPlanner")),
            *common,
        ]
        job_id = f"_prepare/{backbone_name}/{dataset_name}"
        run_dir = workdir / f"_prepare_{dataset_name}"
        marker = (
            workdir / f"prepared_{dataset_name}.json",
            {"dataset_id": nn["dataset_id"], "size": sizes, "split_files": [str(f) for f in folds]},
        )
        jobs.append(
            Job(
                job_id=job_id,
                kind="prepare",
                run_dir=run_dir,
                backbone=backbone_name,
                marker=marker,
                description={
                    "kind": "commands",
                    "run_dir": str(run_dir),
                    "stages": [{"name": "export", "argv": export}, {"name": "plan", "argv": plan}],
                    "marker": {"path": str(marker[0]), "content": marker[1]},
                },
            )
        )
        prepare_ids[(backbone_name, dataset_name)] = job_id

    for task, backbone in spec.pairs():
        output_dir = results / task.name / backbone.name
        for split_file, seed in _pairs(task, files_of[task.name]):
            cell_id = _cell_id(split_file, seed)
            run_dir = output_dir / cell_id
            job_id = f"{task.name}/{backbone.name}/{cell_id}"
            if backbone.kind == "nnunet":
                dataset = spec.datasets[task.dataset]
                workdir = results / WORK_DIR / "nnunet" / backbone.name
                base = [sys.executable, "-m", "nnunet_baselines"]
                where = [
                    "--workdir",
                    str(workdir),
                    "--dataset-id",
                    str(dataset.nnunet["dataset_id"]),
                    "--fold",
                    str(split_file.resolve()),
                    "--trainer",
                    nnunet_trainer(task, backbone),
                    *_nnunet_args(backbone),
                ]
                device = ["--device", str(backbone.nnunet.get("device", "auto"))]
                train = base + ["train", *where, *device, "--seed", str(seed)]
                if backbone.nnunet.get("da_workers") is not None:
                    train += ["--da-workers", str(int(backbone.nnunet["da_workers"]))]
                predict = base + [
                    "predict",
                    *where,
                    *device,
                    "--checkpoint",
                    str(backbone.nnunet.get("checkpoint_rule", "auto")),
                ]
                if backbone.nnunet.get("disable_tta"):
                    predict.append("--disable-tta")
                score = base + ["score", *where, "--seed", str(seed), "--out", str(run_dir / RESULT_NAME)]
                description = {
                    "kind": "commands",
                    "run_dir": str(run_dir),
                    "result_path": str(run_dir / RESULT_NAME),
                    "stages": [
                        {"name": "train", "argv": train},
                        {"name": "predict", "argv": predict},
                        {"name": "score", "argv": score},
                    ],
                }
                requires = [prepare_ids[(backbone.name, task.dataset)]]
            else:
                try:
                    (run,) = plan_runs(
                        output_dir,
                        seeds=[seed],
                        split_files=[split_file],
                        overrides=bundle_overrides(spec, task, backbone),
                    )
                except RepeatError as error:
                    raise SpecError(f"tasks.{task.name} / backbones.{backbone.name}: {error}") from error
                configs, eval_configs = task_configs(task)
                description = {
                    "kind": "bundle",
                    "run_dir": str(run.run_dir),
                    "run": {
                        "run_id": run.run_id,
                        "run_dir": str(run.run_dir),
                        "seed": run.seed,
                        "split_file": run.split_file,
                        "overrides": run.overrides,
                    },
                    "configs": configs,
                    "eval_configs": eval_configs,
                }
                requires = []
            jobs.append(
                Job(
                    job_id=job_id,
                    kind="cell",
                    run_dir=run_dir,
                    description=description,
                    task=task.name,
                    backbone=backbone.name,
                    cell_id=cell_id,
                    split_file=str(split_file),
                    seed=seed,
                    result_path=run_dir / RESULT_NAME,
                    requires=requires,
                )
            )
    ids = [job.job_id for job in jobs]
    if len(set(ids)) != len(ids):
        duplicates = sorted({job_id for job_id in ids if ids.count(job_id) > 1})
        raise SpecError(f"the grid has duplicate cells {duplicates[:5]} (the same split file and seed twice in a task)")
    return jobs


def write_experiment_snapshot(spec: ExperimentSpec, jobs: Sequence[Job]) -> Path:
    """``RESULTS_DIR/experiment.json``: what the report needs without the YAML file."""
    backbones = {}
    for backbone in spec.backbones.values():
        backbones[backbone.name] = {
            "kind": backbone.kind,
            "method": backbone.method,
            "label": backbone.label,
            "checkpoint": None if backbone.checkpoint is None else str(backbone.checkpoint.resolve()),
            "source": backbone.source,
            "in_chans": backbone.in_chans,
            "architecture": spec.architecture(backbone) if backbone.kind == "vit" else None,
        }
    document = {
        "name": spec.name,
        "spec_file": None if spec.path is None else str(Path(spec.path).resolve()),
        "written": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "datasets": {
            name: {
                "datalist": str(d.datalist.resolve()),
                "split_dir": None if d.split_dir is None else str(d.split_dir.resolve()),
            }
            for name, d in spec.datasets.items()
        },
        "backbones": backbones,
        "tasks": {
            name: {
                "kind": t.kind,
                "dataset": t.dataset,
                "column": t.column,
                "seeds": t.seeds,
                "splits": t.splits,
                "budget": arm_budgets(spec, t),
                "budget_match": t.budget,
            }
            for name, t in spec.tasks.items()
        },
        "report": spec.report,
        "cells": [
            {
                "job_id": job.job_id,
                "task": job.task,
                "backbone": job.backbone,
                "cell_id": job.cell_id,
                "split_file": job.split_file,
                "seed": job.seed,
                "result": str(job.result_path.relative_to(spec.results_dir)),
            }
            for job in jobs
            if job.kind == "cell"
        ],
        "document": spec.raw,
    }
    path = spec.results_dir / "experiment.json"
    write_json_atomic(path, document)
    return path


def _select(jobs: Sequence[Job], tasks: Sequence[str] | None, backbones: Sequence[str] | None) -> list[Job]:
    if not tasks and not backbones:
        return list(jobs)
    cells = [
        job
        for job in jobs
        if job.kind == "cell" and (not tasks or job.task in tasks) and (not backbones or job.backbone in backbones)
    ]
    needed = {requirement for job in cells for requirement in job.requires}
    return [job for job in jobs if job in cells or job.job_id in needed]
