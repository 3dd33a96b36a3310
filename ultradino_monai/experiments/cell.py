"""Execute one job of the experiment grid: ``python -m ultradino_monai.experiments.cell JOB.json``.

The grid runner (:mod:`ultradino_monai.experiments.runner`) starts one such process per job,
in its own session (process group), with the worker's environment (``CUDA_VISIBLE_DEVICES``,
``OMP_NUM_THREADS``). A job is either

* ``{"kind": "bundle", "run": {...}, "configs": [...], "eval_configs": [...]}``: one
  repetition of a MONAI bundle, run by :func:`ultradino_monai.evaluation.repeat.execute_run`
  (``python -m monai.bundle run`` per stage, ``<stage>_args.json`` and ``<stage>.log`` in
  the run folder); or
* ``{"kind": "commands", "stages": [{"name": ..., "argv": [...]}], "result_path": ...,
  "marker": {"path": ..., "content": {...}}}``: command lines run in turn (the nnU-Net harness),
  each logged to ``<run_dir>/<name>.log``; the optional marker is written when all succeeded.

If the runner dies (even by SIGKILL), a watchdog thread notices that the parent changed and
terminates this job's whole process group, so no orphaned training keeps writing into a
folder that the next run will use.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from ultradino_monai.evaluation.repeat import RepeatRun, execute_run
from ultradino_monai.utils.files import write_json_atomic
from ultradino_monai.utils.logs import setup_logging

logger = logging.getLogger(__name__)

__all__ = ["run_job", "main"]


def _watch_parent(parent: int, interval: float = 1.0) -> None:
    while True:
        time.sleep(interval)
        if os.getppid() != parent:
            logger.error("the grid runner (pid %d) is gone: stopping this job", parent)
            try:
                if os.getpgrp() == os.getpid():  # started in its own session by the runner
                    os.killpg(os.getpgrp(), signal.SIGTERM)
            finally:
                os._exit(143)


def _run_commands(job: dict, run_dir: Path) -> None:
    for stage in job["stages"]:
        log_path = run_dir / f"{stage['name']}.log"
        started = time.perf_counter()
        logger.info("%s: %s", stage["name"], " ".join(stage["argv"]))
        with open(log_path, "w") as log:
            completed = subprocess.run(
                stage["argv"],
                stdout=log,
                stderr=subprocess.STDOUT,
                check=False,
                env={**os.environ, **stage.get("env", {})},
            )
        if completed.returncode != 0:
            tail = log_path.read_text(errors="replace").splitlines()[-25:]
            raise RuntimeError(
                f"stage {stage['name']} failed (exit code {completed.returncode}); last lines of "
                f"{log_path}:\n" + "\n".join(tail)
            )
        logger.info("%s finished in %.0f s (log %s)", stage["name"], time.perf_counter() - started, log_path)
    result_path = job.get("result_path")
    if result_path and not Path(result_path).is_file():
        raise RuntimeError(f"the commands finished but wrote no {result_path}")
    marker = job.get("marker")
    if marker:
        write_json_atomic(marker["path"], marker["content"])


def run_job(job: dict) -> None:
    """Run one job description (module docstring)."""
    run_dir = Path(job["run_dir"])
    run_dir.mkdir(parents=True, exist_ok=True)
    if job["kind"] == "bundle":
        spec = job["run"]
        run = RepeatRun(
            run_id=spec["run_id"],
            run_dir=Path(spec["run_dir"]),
            seed=int(spec["seed"]),
            split_file=spec["split_file"],
            overrides=dict(spec["overrides"]),
        )
        execute_run(run, job["configs"], job.get("eval_configs") or None)
    elif job["kind"] == "commands":
        _run_commands(job, run_dir)
    else:
        raise ValueError(f"unknown job kind {job['kind']!r}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m ultradino_monai.experiments.cell JOB.json", file=sys.stderr)
        return 2
    setup_logging()
    job = json.loads(Path(argv[0]).read_text())
    if job.get("watch_parent", True):
        threading.Thread(target=_watch_parent, args=(os.getppid(),), daemon=True).start()
    try:
        run_job(job)
    except Exception as error:  # the log is what the runner shows; keep it readable
        logger.error("%s", error)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
