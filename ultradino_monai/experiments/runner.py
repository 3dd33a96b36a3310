"""Expand an experiment into cells and run them, resumably, on one or more workers.

A **cell** is one backbone × task × (split file, seed): one repetition of the task's bundle
(segmentation, classification fine-tune or linear probe), planned by
:func:`ultradino_monai.evaluation.repeat.plan_runs` (the same overrides contract as the
repeat driver: ``seed``, ``split_file``, ``run_name``, ``output_dir``, ``model_dir``,
``result_path``) and executed by :func:`~ultradino_monai.evaluation.repeat.execute_run`
(``python -m monai.bundle run`` per stage), or, for an nnU-Net backbone, the nnU-Net
harness's ``train`` / ``predict`` / ``score`` for that split file's fold after one ``export`` +
``plan`` job per dataset. Layout of ``RESULTS_DIR``::

    experiment.json                       the validated experiment (what `report` reads)
    status.json                           state of every job, rewritten on every change
    <task>/<backbone>/<cell id>/          one cell: result.json, job.json, cell.log, <stage>.log,
                                          <stage>_args.json, models/, ...
    _work/nnunet/<backbone>/              nnU-Net raw / preprocessed / results folders
    _work/feature_cache/                  linear-probe feature cache (shared by the cells)
    _attempts/<task>/<backbone>/<cell id>/<time>/   earlier, unfinished attempts (logs kept)

A cell whose ``result.json`` exists is skipped, so an interrupted grid resumes; the bundles
write results atomically, so a killed cell never leaves a half-written one. An unfinished or
failed cell is moved to ``_attempts`` and run again. Each job runs in its own process group
(:mod:`ultradino_monai.experiments.cell`); one worker per GPU (``CUDA_VISIBLE_DEVICES``) or
``workers`` CPU workers (``OMP_NUM_THREADS`` = cores / workers unless set).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ultradino_monai.data.datalist import write_json_atomic
from ultradino_monai.evaluation.repeat import RepeatError, plan_runs
from ultradino_monai.experiments.prepare import prepare_datasets
from ultradino_monai.experiments.spec import (
    BackboneSpec,
    ExperimentSpec,
    SpecError,
    TaskSpec,
    task_configs,
)

logger = logging.getLogger(__name__)

__all__ = [
    "Job",
    "GridSummary",
    "plan_jobs",
    "bundle_overrides",
    "worker_environments",
    "write_experiment_snapshot",
    "run_grid",
    "read_status",
]

RESULT_NAME = "result.json"
WORK_DIR = "_work"
ATTEMPTS_DIR = "_attempts"


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


@dataclass
class GridSummary:
    jobs: list[Job]
    skipped: list[str]
    finished: list[str]
    failed: dict[str, str]
    interrupted: bool = False

    @property
    def cells(self) -> list[Job]:
        return [job for job in self.jobs if job.kind == "cell"]


# --------------------------------------------------------------------------- planning
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


def plan_jobs(spec: ExperimentSpec) -> list[Job]:
    """Every job of the grid, cells in task → backbone → split → seed order (split files must exist)."""
    results = spec.results_dir
    jobs: list[Job] = []
    files_of = {task.name: spec.datasets[task.dataset].resolve_splits(task.splits, f"tasks.{task.name}.splits")
                for task in spec.tasks.values()}
    # nnU-Net: one export + plan per (backbone, dataset) holding every split file it trains on
    nnunet_folds: dict[tuple[str, str], list[Path]] = {}
    for task, backbone in spec.pairs():
        if backbone.kind == "nnunet":
            folds = nnunet_folds.setdefault((backbone.name, task.dataset), [])
            for path, _ in _pairs(task, files_of[task.name]):
                resolved = path.resolve()
                if resolved in folds:
                    raise SpecError(f"tasks.{task.name}: nnU-Net ({backbone.name}) trains one model per split file, "
                                    f"but {path.name} is used twice on dataset {task.dataset} (another seed or task)")
                folds.append(resolved)
    prepare_ids: dict[tuple[str, str], str] = {}
    for (backbone_name, dataset_name), folds in nnunet_folds.items():
        backbone, dataset = spec.backbones[backbone_name], spec.datasets[dataset_name]
        workdir = results / WORK_DIR / "nnunet" / backbone_name
        nn = dataset.nnunet
        size = nn.get("size", 224)
        sizes = [str(int(s)) for s in (size if isinstance(size, list) else [size])]
        common = ["--workdir", str(workdir), *_nnunet_args(backbone)]
        export = [sys.executable, "-m", "nnunet_baselines", "export", str(dataset.datalist.resolve()),
                  "--split-file", *map(str, folds), "--dataset-id", str(nn["dataset_id"]), "--name", nn["name"],
                  "--size", *sizes, "--bit-depth", str(nn.get("bit_depth", 8)), "--dataset-name", dataset_name, *common]
        plan = [sys.executable, "-m", "nnunet_baselines", "plan", "--dataset-id", str(nn["dataset_id"]),
                "--planner", str(backbone.nnunet.get("planner", "ExperimentPlanner")), *common]
        job_id = f"_prepare/{backbone_name}/{dataset_name}"
        run_dir = workdir / f"_prepare_{dataset_name}"
        marker = (workdir / f"prepared_{dataset_name}.json",
                  {"dataset_id": nn["dataset_id"], "size": sizes, "split_files": [str(f) for f in folds]})
        jobs.append(Job(job_id=job_id, kind="prepare", run_dir=run_dir, backbone=backbone_name, marker=marker,
                        description={"kind": "commands", "run_dir": str(run_dir),
                                     "stages": [{"name": "export", "argv": export}, {"name": "plan", "argv": plan}],
                                     "marker": {"path": str(marker[0]), "content": marker[1]}}))
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
                where = ["--workdir", str(workdir), "--dataset-id", str(dataset.nnunet["dataset_id"]),
                         "--fold", str(split_file.resolve()), "--trainer", backbone.nnunet["trainer"],
                         *_nnunet_args(backbone)]
                device = ["--device", str(backbone.nnunet.get("device", "auto"))]
                train = base + ["train", *where, *device, "--seed", str(seed)]
                if backbone.nnunet.get("da_workers") is not None:
                    train += ["--da-workers", str(int(backbone.nnunet["da_workers"]))]
                predict = base + ["predict", *where, *device,
                                  "--checkpoint", str(backbone.nnunet.get("checkpoint_rule", "auto"))]
                if backbone.nnunet.get("disable_tta"):
                    predict.append("--disable-tta")
                score = base + ["score", *where, "--seed", str(seed), "--out", str(run_dir / RESULT_NAME)]
                description = {"kind": "commands", "run_dir": str(run_dir), "result_path": str(run_dir / RESULT_NAME),
                               "stages": [{"name": "train", "argv": train}, {"name": "predict", "argv": predict},
                                          {"name": "score", "argv": score}]}
                requires = [prepare_ids[(backbone.name, task.dataset)]]
            else:
                try:
                    (run,) = plan_runs(output_dir, seeds=[seed], split_files=[split_file],
                                       overrides=bundle_overrides(spec, task, backbone))
                except RepeatError as error:
                    raise SpecError(f"tasks.{task.name} / backbones.{backbone.name}: {error}") from error
                configs, eval_configs = task_configs(task)
                description = {"kind": "bundle", "run_dir": str(run.run_dir),
                               "run": {"run_id": run.run_id, "run_dir": str(run.run_dir), "seed": run.seed,
                                       "split_file": run.split_file, "overrides": run.overrides},
                               "configs": configs, "eval_configs": eval_configs}
                requires = []
            jobs.append(Job(job_id=job_id, kind="cell", run_dir=run_dir, description=description, task=task.name,
                            backbone=backbone.name, cell_id=cell_id, split_file=str(split_file), seed=seed,
                            result_path=run_dir / RESULT_NAME, requires=requires))
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
            "kind": backbone.kind, "method": backbone.method, "label": backbone.label,
            "checkpoint": None if backbone.checkpoint is None else str(backbone.checkpoint.resolve()),
            "source": backbone.source, "in_chans": backbone.in_chans,
            "architecture": spec.architecture(backbone) if backbone.kind == "vit" else None,
        }
    document = {
        "name": spec.name,
        "spec_file": None if spec.path is None else str(Path(spec.path).resolve()),
        "written": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "datasets": {name: {"datalist": str(d.datalist.resolve()),
                            "split_dir": None if d.split_dir is None else str(d.split_dir.resolve())}
                     for name, d in spec.datasets.items()},
        "backbones": backbones,
        "tasks": {name: {"kind": t.kind, "dataset": t.dataset, "column": t.column, "seeds": t.seeds,
                         "splits": t.splits} for name, t in spec.tasks.items()},
        "report": spec.report,
        "cells": [{"job_id": job.job_id, "task": job.task, "backbone": job.backbone, "cell_id": job.cell_id,
                   "split_file": job.split_file, "seed": job.seed,
                   "result": str(job.result_path.relative_to(spec.results_dir))}
                  for job in jobs if job.kind == "cell"],
        "document": spec.raw,
    }
    path = spec.results_dir / "experiment.json"
    write_json_atomic(path, document)
    return path


# ---------------------------------------------------------------------------- running
def worker_environments(gpus: Sequence[str] | None = None, workers: int | None = None) -> list[dict[str, str]]:
    """One environment update per worker: ``CUDA_VISIBLE_DEVICES`` per GPU, or CPU workers sharing the cores."""
    if gpus:
        return [{"CUDA_VISIBLE_DEVICES": str(gpu)} for gpu in gpus]
    workers = max(1, int(workers or 1))
    environment: dict[str, str] = {}
    if "OMP_NUM_THREADS" not in os.environ:
        threads = str(max(1, (os.cpu_count() or 1) // workers))
        environment = {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    return [dict(environment) for _ in range(workers)]


@dataclass
class _Running:
    job: Job
    process: subprocess.Popen
    slot: int
    started: float
    log: Any


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _archive_attempt(results_dir: Path, job: Job) -> None:
    """Move an unfinished cell folder to ``_attempts`` (its logs stay readable) so the rerun starts clean."""
    if job.kind != "cell" or not job.run_dir.exists():
        return
    target = results_dir / ATTEMPTS_DIR / job.job_id / datetime.now().strftime("%Y%m%dT%H%M%S_%f")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(job.run_dir), str(target))
    logger.info("%s: earlier unfinished attempt moved to %s", job.job_id, target)


def _log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _headline(job: Job) -> str:
    try:
        metrics = json.loads(job.result_path.read_text())["metrics"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError):
        return ""
    for name in ("foreground_dice", "macro_f1"):
        if isinstance(metrics.get(name), (int, float)):
            return f", test {name} {100 * metrics[name]:.2f} (x100)"
    return ""


class GridRunner:
    """Runs jobs on worker slots, respecting ``requires``; see :func:`run_grid`."""

    def __init__(self, spec: ExperimentSpec, jobs: Sequence[Job], environments: Sequence[Mapping[str, str]],
                 poll_seconds: float = 0.5, kill_grace_seconds: float = 10.0) -> None:
        self.spec = spec
        self.jobs = list(jobs)
        self.environments = [dict(env) for env in environments]
        self.poll_seconds = poll_seconds
        self.kill_grace_seconds = kill_grace_seconds
        self.state: dict[str, dict[str, Any]] = {}
        self._stop_signal: int | None = None

    # ---- bookkeeping
    def _counts(self) -> dict[str, int]:
        counts = {"done": 0, "running": 0, "failed": 0, "pending": 0}
        for job in self.jobs:
            if job.kind == "cell":
                state = self.state[job.job_id]["state"]
                counts["done" if state in ("done", "skipped") else state] += 1
        return counts

    def _progress(self, message: str) -> None:
        counts = self._counts()
        total = sum(counts.values())
        logger.info("[%d/%d done | %d running | %d failed | %d pending] %s", counts["done"], total,
                    counts["running"], counts["failed"], counts["pending"], message)
        self._write_status()

    def _write_status(self) -> None:
        write_json_atomic(self.spec.results_dir / "status.json", {
            "experiment": self.spec.name, "updated": _now(), "runner_pid": os.getpid(),
            "counts": self._counts(), "jobs": self.state,
        })

    def _set(self, job: Job, state: str, **extra: Any) -> None:
        self.state[job.job_id] = {**self.state.get(job.job_id, {}), "state": state, "kind": job.kind, **extra}

    # ---- processes
    def _start(self, job: Job, slot: int) -> _Running:
        _archive_attempt(self.spec.results_dir, job)
        job.run_dir.mkdir(parents=True, exist_ok=True)
        (job.run_dir / "failed.json").unlink(missing_ok=True)
        job_file = job.run_dir / "job.json"
        write_json_atomic(job_file, job.description)
        log = open(job.run_dir / "cell.log", "w")
        env = {**os.environ, **self.environments[slot]}
        process = subprocess.Popen([sys.executable, "-m", "ultradino_monai.experiments.cell", str(job_file)],
                                   stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self._set(job, "running", slot=slot, started=_now(), pid=process.pid, log=str(job.run_dir / "cell.log"),
                  worker_env=self.environments[slot])
        return _Running(job, process, slot, time.perf_counter(), log)

    def _finish(self, running: _Running, returncode: int) -> bool:
        running.log.close()
        job = running.job
        seconds = round(time.perf_counter() - running.started, 1)
        if returncode == 0 and job.is_done():
            self._set(job, "done", seconds=seconds, finished=_now())
            self._progress(f"finished {job.job_id} in {seconds:.0f} s{_headline(job) if job.kind == 'cell' else ''}")
            return True
        reason = (f"exit code {returncode}" if returncode != 0
                  else "exited without writing its result" if job.kind == "cell" else "exited without its marker")
        tail = _log_tail(job.run_dir / "cell.log")
        write_json_atomic(job.run_dir / "failed.json", {"job_id": job.job_id, "reason": reason, "seconds": seconds,
                                                        "time": _now(), "log_tail": tail})
        self._set(job, "failed", seconds=seconds, reason=reason, finished=_now())
        self._progress(f"FAILED {job.job_id} after {seconds:.0f} s ({reason}); log {job.run_dir / 'cell.log'}")
        return False

    def _terminate(self, running: Sequence[_Running]) -> None:
        for item in running:
            try:
                os.killpg(item.process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + self.kill_grace_seconds
        for item in running:
            try:
                item.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(item.process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                item.process.wait()
            item.log.close()
            self._set(item.job, "pending", interrupted=_now())

    def _on_signal(self, signum, frame) -> None:  # noqa: ARG002 - signal handler signature
        self._stop_signal = signum

    # ---- main loop
    def run(self) -> GridSummary:
        skipped: list[str] = []
        for job in self.jobs:
            if job.is_done():
                self._set(job, "skipped" if job.kind == "cell" else "done")
                if job.kind == "cell":
                    skipped.append(job.job_id)
            else:
                self._set(job, "pending")
        self._progress(f"{len(skipped)} cell(s) already have results; "
                       f"{sum(1 for j in self.jobs if self.state[j.job_id]['state'] == 'pending')} job(s) to run on "
                       f"{len(self.environments)} worker(s)")
        pending = [job for job in self.jobs if self.state[job.job_id]["state"] == "pending"]
        running: list[_Running] = []
        finished: list[str] = []
        failed: dict[str, str] = {}
        handlers = {}
        in_main_thread = _is_main_thread()
        if in_main_thread:
            for signum in (signal.SIGINT, signal.SIGTERM):
                handlers[signum] = signal.signal(signum, self._on_signal)
        try:
            while pending or running:
                if self._stop_signal is not None:
                    logger.warning("signal %d: stopping %d running job(s); rerun the same command to resume",
                                   self._stop_signal, len(running))
                    self._terminate(running)
                    self._progress("interrupted")
                    return GridSummary(self.jobs, skipped, finished, failed, interrupted=True)
                # jobs whose prerequisite failed fail too
                for job in list(pending):
                    broken = [r for r in job.requires if self.state[r]["state"] == "failed"]
                    if broken:
                        pending.remove(job)
                        reason = f"prerequisite {broken[0]} failed"
                        self._set(job, "failed", reason=reason)
                        failed[job.job_id] = reason
                        self._progress(f"FAILED {job.job_id} ({reason})")
                busy = {item.slot for item in running}
                for slot in range(len(self.environments)):
                    if slot in busy:
                        continue
                    ready = next((job for job in pending
                                  if all(self.state[r]["state"] == "done" for r in job.requires)), None)
                    if ready is None:
                        break
                    pending.remove(ready)
                    running.append(self._start(ready, slot))
                    busy.add(slot)
                    self._progress(f"started {ready.job_id} on worker {slot}")
                time.sleep(self.poll_seconds)
                for item in list(running):
                    returncode = item.process.poll()
                    if returncode is None:
                        continue
                    running.remove(item)
                    if self._finish(item, returncode):
                        finished.append(item.job.job_id)
                    else:
                        failed[item.job.job_id] = self.state[item.job.job_id]["reason"]
                if not running and pending and not any(
                        all(self.state[r]["state"] == "done" for r in job.requires) for job in pending):
                    if all(any(self.state[r]["state"] == "failed" for r in job.requires) for job in pending):
                        continue  # the failure pass above marks them
                    raise RuntimeError(f"deadlock: {[job.job_id for job in pending]} wait on jobs that never run")
        finally:
            if in_main_thread:
                for signum, handler in handlers.items():
                    signal.signal(signum, handler)
        self._progress("grid finished")
        return GridSummary(self.jobs, skipped, finished, failed)


def _is_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def run_grid(
    spec: ExperimentSpec,
    gpus: Sequence[str] | None = None,
    workers: int | None = None,
    tasks: Sequence[str] | None = None,
    backbones: Sequence[str] | None = None,
    poll_seconds: float = 0.5,
) -> GridSummary:
    """Prepare data and split files, plan the jobs, write ``experiment.json`` and run what is missing.

    Args:
        gpus: GPU ids, one worker each (``CUDA_VISIBLE_DEVICES``).
        workers: CPU workers when no GPUs are given (default 1).
        tasks, backbones: run only these (the snapshot still lists the whole grid).
    """
    prepare_datasets(spec)
    jobs = plan_jobs(spec)
    spec.results_dir.mkdir(parents=True, exist_ok=True)
    write_experiment_snapshot(spec, jobs)
    selected = _select(jobs, tasks, backbones)
    runner = GridRunner(spec, selected, worker_environments(gpus, workers), poll_seconds=poll_seconds)
    return runner.run()


def _select(jobs: Sequence[Job], tasks: Sequence[str] | None, backbones: Sequence[str] | None) -> list[Job]:
    if not tasks and not backbones:
        return list(jobs)
    cells = [job for job in jobs if job.kind == "cell" and (not tasks or job.task in tasks)
             and (not backbones or job.backbone in backbones)]
    needed = {requirement for job in cells for requirement in job.requires}
    return [job for job in jobs if job in cells or job.job_id in needed]


def read_status(results_dir: str | os.PathLike) -> dict[str, Any]:
    """Current state of a results folder: the last ``status.json`` checked against the files.

    A job recorded as running whose runner is gone is reported as ``interrupted``; cells
    with a result file are ``done`` whatever the status file says.
    """
    results_dir = Path(results_dir)
    snapshot_path = results_dir / "experiment.json"
    if not snapshot_path.is_file():
        raise FileNotFoundError(f"{snapshot_path} not found: not an experiment results folder (run `run` first)")
    snapshot = json.loads(snapshot_path.read_text())
    status_path = results_dir / "status.json"
    status = json.loads(status_path.read_text()) if status_path.is_file() else {"jobs": {}}
    pid = status.get("runner_pid")
    alive = False
    if pid:
        try:
            os.kill(int(pid), 0)
            alive = True
        except (ProcessLookupError, PermissionError):
            alive = pid == os.getpid()
    cells = {}
    for cell in snapshot["cells"]:
        recorded = status["jobs"].get(cell["job_id"], {})
        if (results_dir / cell["result"]).is_file():
            state = "done"
        elif recorded.get("state") == "running":
            state = "running" if alive else "interrupted"
        elif (results_dir / Path(cell["result"]).parent / "failed.json").is_file():
            state = "failed"
        else:
            state = "pending"
        cells[cell["job_id"]] = {**recorded, "state": state}
    counts: dict[str, int] = {}
    for entry in cells.values():
        counts[entry["state"]] = counts.get(entry["state"], 0) + 1
    return {"experiment": snapshot["name"], "runner_alive": alive, "counts": counts, "cells": cells,
            "updated": status.get("updated")}
