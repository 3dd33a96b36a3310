"""Run the jobs of an experiment (:mod:`ultradino_monai.experiments.plan`), resumably, on one or more workers.

Layout of ``RESULTS_DIR``::

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
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ultradino_monai.experiments.plan import Job, _select, plan_jobs, write_experiment_snapshot
from ultradino_monai.experiments.prepare import prepare_datasets
from ultradino_monai.experiments.spec import ExperimentSpec
from ultradino_monai.utils.files import write_json_atomic

logger = logging.getLogger(__name__)

__all__ = [
    "GridSummary",
    "worker_environments",
    "run_grid",
    "read_status",
]


ATTEMPTS_DIR = "_attempts"


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


# ---------------------------------------------------------------------------- running
def worker_environments(gpus: Sequence[str] | None = None, workers: int | None = None) -> list[dict[str, str]]:
    """One environment update per worker: ``CUDA_VISIBLE_DEVICES`` per GPU, or CPU workers sharing the cores.

    Raises:
        ValueError: ``workers`` below 1 (it is never silently raised to 1).
    """
    if gpus:
        return [{"CUDA_VISIBLE_DEVICES": str(gpu)} for gpu in gpus]
    workers = 1 if workers is None else int(workers)
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
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

    def __init__(
        self,
        spec: ExperimentSpec,
        jobs: Sequence[Job],
        environments: Sequence[Mapping[str, str]],
        poll_seconds: float = 0.5,
        kill_grace_seconds: float = 10.0,
        command: Sequence[str] | None = None,
    ) -> None:
        self.spec = spec
        self.command = list(command) if command else None
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
        logger.info(
            "[%d/%d done | %d running | %d failed | %d pending] %s",
            counts["done"],
            total,
            counts["running"],
            counts["failed"],
            counts["pending"],
            message,
        )
        self._write_status()

    def _write_status(self) -> None:
        write_json_atomic(
            self.spec.results_dir / "status.json",
            {
                "experiment": self.spec.name,
                "updated": _now(),
                "runner_pid": os.getpid(),
                "command": self.command,
                "counts": self._counts(),
                "jobs": self.state,
            },
        )

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
        process = subprocess.Popen(
            [sys.executable, "-m", "ultradino_monai.experiments.cell", str(job_file)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        self._set(
            job,
            "running",
            slot=slot,
            started=_now(),
            pid=process.pid,
            log=str(job.run_dir / "cell.log"),
            worker_env=self.environments[slot],
        )
        return _Running(job, process, slot, time.perf_counter(), log)

    def _finish(self, running: _Running, returncode: int) -> bool:
        running.log.close()
        job = running.job
        seconds = round(time.perf_counter() - running.started, 1)
        if returncode == 0 and job.is_done():
            self._set(job, "done", seconds=seconds, finished=_now())
            self._progress(f"finished {job.job_id} in {seconds:.0f} s{_headline(job) if job.kind == 'cell' else ''}")
            return True
        reason = (
            f"exit code {returncode}"
            if returncode != 0
            else "exited without writing its result"
            if job.kind == "cell"
            else "exited without its marker"
        )
        tail = _log_tail(job.run_dir / "cell.log")
        write_json_atomic(
            job.run_dir / "failed.json",
            {"job_id": job.job_id, "reason": reason, "seconds": seconds, "time": _now(), "log_tail": tail},
        )
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
        self._progress(
            f"{len(skipped)} cell(s) already have results; "
            f"{sum(1 for j in self.jobs if self.state[j.job_id]['state'] == 'pending')} job(s) to run on "
            f"{len(self.environments)} worker(s)"
        )
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
                    logger.warning(
                        "signal %d: stopping %d running job(s); rerun the same command to resume",
                        self._stop_signal,
                        len(running),
                    )
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
                    ready = next(
                        (job for job in pending if all(self.state[r]["state"] == "done" for r in job.requires)), None
                    )
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
                if (
                    not running
                    and pending
                    and not any(all(self.state[r]["state"] == "done" for r in job.requires) for job in pending)
                ):
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
    command: Sequence[str] | None = None,
) -> GridSummary:
    """Prepare data and split files, plan the jobs, write ``experiment.json`` and run what is missing.

    Args:
        gpus: GPU ids, one worker each (``CUDA_VISIBLE_DEVICES``).
        workers: CPU workers when no GPUs are given (default 1).
        tasks, backbones: run only these (the snapshot still lists the whole grid).
        command: the command line of this run, kept in ``status.json`` (the README block shows it).
    """
    prepare_datasets(spec)
    jobs = plan_jobs(spec)
    spec.results_dir.mkdir(parents=True, exist_ok=True)
    write_experiment_snapshot(spec, jobs)
    selected = _select(jobs, tasks, backbones)
    runner = GridRunner(spec, selected, worker_environments(gpus, workers), poll_seconds=poll_seconds, command=command)
    return runner.run()


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
    return {
        "experiment": snapshot["name"],
        "runner_alive": alive,
        "counts": counts,
        "cells": cells,
        "updated": status.get("updated"),
        "command": status.get("command"),
    }
