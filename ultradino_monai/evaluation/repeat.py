"""Run a bundle over seeds and/or split files, then report mean ± SEM: one driver for every task.

docs/paper.md reports the mean over 3 seeds (full data) or 5 training splits (few-shot)
with the standard error of the mean. This module runs those repetitions for the segmentation
*and* the classification bundles::

    python -m ultradino_monai.evaluation.repeat \\
        --config_file bundles/segmentation/configs/train.json bundles/segmentation/configs/paper.json \\
        --eval_config_file bundles/segmentation/configs/evaluate.json \\
        --split_files data/fass/splits/fewshot_n20_draw{0,1,2,3,4}.json \\
        --output_dir runs/fass_fewshot_ultradino --override pretrained_ckpt=models/backbone.pt

One run per (split file, seed) pair (``--seeds`` defaults to ``0``; without
``--split_files`` the bundle's own ``split_file`` is used). Each run gets its own folder
``OUTPUT_DIR/<run id>/`` and these config overrides (the contract a bundle must accept;
rename keys with ``--key NAME=CONFIG_KEY``):

=============  ===========================================  ====================
role           value                                        default config key
=============  ===========================================  ====================
seed           the seed                                     ``seed``
split_file     the split file (only with ``--split_files``)  ``split_file``
run_name       the run id                                   ``run_name``
output_dir     ``OUTPUT_DIR/<run id>``                      ``output_dir``
model_dir      ``OUTPUT_DIR/<run id>/models``               ``model_dir``
result_path    ``OUTPUT_DIR/<run id>/result.json``          ``result_path``
=============  ===========================================  ====================

plus every ``--override KEY=VALUE`` (VALUE parsed as JSON when it is valid JSON, else kept as
a string). A run has up to two stages: ``train`` runs ``--config_file``; ``evaluate`` (when
``--eval_config_file`` is given) runs ``--config_file`` + ``--eval_config_file`` merged, and
must write the result record (docs/design.md contract 5) to ``result_path``. A run whose
``result.json`` already exists is skipped, so an interrupted sweep resumes where it stopped.

Each stage runs in a fresh ``python -m monai.bundle run`` process (the default: isolated
memory, logging and ``sys.modules``) or in this process through
:class:`monai.bundle.ConfigWorkflow` (``--in_process``). The overrides of every stage are
stored in the run folder (``<stage>_args.json``, handed to MONAI as ``--args_file``) and the
process output in ``<stage>.log``.

At the end the result records under ``OUTPUT_DIR`` are aggregated with
:func:`ultradino_monai.evaluation.aggregate.aggregate` (mean, std, SEM = std / √n) and
written to ``OUTPUT_DIR/summary.json`` and ``summary.csv``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ultradino_monai.evaluation.aggregate import DEFAULT_GROUP_BY, aggregate, load_results, write_aggregate_csv
from ultradino_monai.utils.files import write_json_atomic
from ultradino_monai.utils.logs import setup_logging

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_KEYS",
    "RepeatError",
    "RepeatRun",
    "RepeatSummary",
    "execute_run",
    "main",
    "parse_override",
    "plan_runs",
    "repeat",
    "summarise",
]

#: Role -> config key of the overrides each run receives (module docstring).
DEFAULT_KEYS: dict[str, str] = {
    "seed": "seed",
    "split_file": "split_file",
    "run_name": "run_name",
    "output_dir": "output_dir",
    "model_dir": "model_dir",
    "result_path": "result_path",
}
RESULT_NAME = "result.json"


class RepeatError(RuntimeError):
    """A run failed, or the sweep is misconfigured."""


@dataclass
class RepeatRun:
    """One repetition: where it writes and which overrides it gets.

    Attributes:
        run_id: folder name, ``<split stem>_seed<s>`` or ``seed<s>``.
        run_dir: ``OUTPUT_DIR/<run_id>``.
        seed: training seed.
        split_file: the split file, or None to keep the bundle's.
        overrides: config key -> value for every stage.
    """

    run_id: str
    run_dir: Path
    seed: int
    split_file: str | None
    overrides: dict[str, Any] = field(default_factory=dict)

    @property
    def result_path(self) -> Path:
        return self.run_dir / RESULT_NAME


@dataclass
class RepeatSummary:
    """What :func:`repeat` returns: the runs, which were skipped / failed, and the aggregate rows."""

    runs: list[RepeatRun]
    skipped: list[str]
    failed: dict[str, str]
    rows: list[dict[str, Any]]
    metric: str | None


def parse_override(text: str) -> tuple[str, Any]:
    """``"key=value"`` -> ``(key, value)``; the value is JSON-decoded when possible (``1e-4``, ``null``, ``[1,2]``)."""
    if "=" not in text:
        raise RepeatError(f"override {text!r} is not KEY=VALUE")
    key, value = text.split("=", 1)
    key = key.strip()
    if not key:
        raise RepeatError(f"override {text!r} has an empty key")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "run"


def plan_runs(
    output_dir: str | os.PathLike,
    seeds: Sequence[int] | None = None,
    split_files: Sequence[str | os.PathLike] | None = None,
    overrides: Mapping[str, Any] | None = None,
    keys: Mapping[str, str] | None = None,
) -> list[RepeatRun]:
    """One :class:`RepeatRun` per (split file, seed); see the module docstring for the overrides."""
    keys = {**DEFAULT_KEYS, **dict(keys or {})}
    dropped = sorted(key for key, value in dict(overrides or {}).items() if value is None)
    if dropped:
        # monai.bundle ignores None overrides, so the config default would silently run instead
        raise RepeatError(
            f"override(s) {dropped} are None, which monai.bundle ignores; pass the string "
            "'none' (e.g. pretrained_ckpt=none for random init)"
        )
    unknown = sorted(set(keys) - set(DEFAULT_KEYS))
    if unknown:
        raise RepeatError(f"unknown key role(s) {unknown}; roles are {sorted(DEFAULT_KEYS)}")
    seeds = [0] if not seeds else [int(s) for s in seeds]
    if len(set(seeds)) != len(seeds):
        raise RepeatError(f"duplicate seeds {seeds}")
    splits: list[str | None] = [None]
    if split_files:
        splits = [str(Path(f)) for f in split_files]
        missing = [f for f in splits if not Path(f).is_file()]
        if missing:
            raise RepeatError(f"split file(s) not found: {missing}")
        stems = [_slug(Path(f).stem) for f in splits]
        if len(set(stems)) != len(stems):
            raise RepeatError(f"split files must have distinct names (run folders are named after them): {splits}")
    output_dir = Path(output_dir)
    runs = []
    for split in splits:
        for seed in seeds:
            run_id = f"seed{seed}" if split is None else f"{_slug(Path(split).stem)}_seed{seed}"
            run_dir = output_dir / run_id
            values = {
                "seed": seed,
                "run_name": run_id,
                "output_dir": str(run_dir),
                "model_dir": str(run_dir / "models"),
                "result_path": str(run_dir / RESULT_NAME),
            }
            if split is not None:
                values["split_file"] = split
            run_overrides = {keys[role]: value for role, value in values.items()}
            clash = sorted(set(run_overrides) & set(overrides or {}))
            if clash:
                raise RepeatError(f"--override must not set {clash}: the driver sets them per run")
            run_overrides.update(dict(overrides or {}))
            runs.append(RepeatRun(run_id, run_dir, seed, split, run_overrides))
    return runs


def _stage_configs(config_files: Sequence[str], eval_config_files: Sequence[str] | None) -> list[tuple[str, list[str]]]:
    stages = [("train", list(config_files))]
    if eval_config_files:
        stages.append(("evaluate", list(config_files) + list(eval_config_files)))
    return stages


def _run_subprocess(
    stage: str, configs: list[str], run: RepeatRun, meta_file: str | None, logging_file: str | None
) -> None:
    args_file = run.run_dir / f"{stage}_args.json"
    write_json_atomic(args_file, run.overrides)
    command = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        json.dumps(configs),
        "--args_file",
        str(args_file),
    ]
    if meta_file:
        command += ["--meta_file", str(meta_file)]
    if logging_file:
        command += ["--logging_file", str(logging_file)]
    log_path = run.run_dir / f"{stage}.log"
    started = time.perf_counter()
    with open(log_path, "w") as log:
        completed = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, check=False)
    if completed.returncode != 0:
        tail = log_path.read_text(errors="replace").splitlines()[-25:]
        raise RepeatError(
            f"{run.run_id}: stage {stage} failed (exit code {completed.returncode}); last lines of {log_path}:\n"
            + "\n".join(tail)
        )
    logger.info("%s: %s finished in %.0f s (log %s)", run.run_id, stage, time.perf_counter() - started, log_path)


def _run_in_process(
    stage: str, configs: list[str], run: RepeatRun, meta_file: str | None, logging_file: str | None
) -> None:
    from monai.bundle import ConfigWorkflow

    write_json_atomic(run.run_dir / f"{stage}_args.json", run.overrides)
    kwargs: dict[str, Any] = {"config_file": configs, "workflow_type": "train"}
    if meta_file:
        kwargs["meta_file"] = str(meta_file)
    if logging_file:
        kwargs["logging_file"] = str(logging_file)
    workflow = ConfigWorkflow(**kwargs, **run.overrides)
    workflow.initialize()
    workflow.run()
    workflow.finalize()


def execute_run(
    run: RepeatRun,
    config_files: Sequence[str],
    eval_config_files: Sequence[str] | None = None,
    meta_file: str | None = None,
    logging_file: str | None = None,
    in_process: bool = False,
) -> Path:
    """Run the stages of one repetition; returns its result path (which must exist afterwards)."""
    run.run_dir.mkdir(parents=True, exist_ok=True)
    runner = _run_in_process if in_process else _run_subprocess
    for stage, configs in _stage_configs(config_files, eval_config_files):
        logger.info("%s: %s (%s)", run.run_id, stage, ", ".join(configs))
        runner(stage, configs, run, meta_file, logging_file)
    if not run.result_path.is_file():
        raise RepeatError(
            f"{run.run_id}: the bundle finished but wrote no {run.result_path}; its evaluation must write the "
            "result record to the 'result_path' config key (pass --eval_config_file if evaluation is a separate config)"
        )
    return run.result_path


def summarise(
    output_dir: str | os.PathLike, metric: str = "auto", group_by: Sequence[str] = DEFAULT_GROUP_BY
) -> tuple[list[dict[str, Any]], str | None]:
    """Aggregate every result record under ``output_dir``; write ``summary.json`` / ``summary.csv``.

    ``metric="auto"``: ``foreground_dice`` when any record has it, else ``macro_f1``.
    """
    output_dir = Path(output_dir)
    records = load_results(output_dir)
    if not records:
        return [], None
    if metric == "auto":
        metric = "foreground_dice" if any("foreground_dice" in r["metrics"] for r in records) else "macro_f1"
    rows = aggregate(records, group_by=group_by, metric=metric)
    write_json_atomic(output_dir / "summary.json", {"metric": metric, "group_by": list(group_by), "rows": rows})
    write_aggregate_csv(output_dir / "summary.csv", rows)
    return rows, metric


def repeat(
    config_file: str | Sequence[str],
    output_dir: str | os.PathLike,
    seeds: Sequence[int] | None = None,
    split_files: Sequence[str | os.PathLike] | None = None,
    eval_config_file: str | Sequence[str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    keys: Mapping[str, str] | None = None,
    meta_file: str | None = None,
    logging_file: str | None = None,
    in_process: bool = False,
    metric: str = "auto",
    group_by: Sequence[str] = DEFAULT_GROUP_BY,
    stop_on_error: bool = False,
) -> RepeatSummary:
    """Run every (split file, seed) repetition not yet done, then aggregate (module docstring).

    Failed runs are logged and reported in :attr:`RepeatSummary.failed` (the sweep goes on
    unless ``stop_on_error``); the aggregate covers every result record present.
    """
    config_files = [config_file] if isinstance(config_file, (str, os.PathLike)) else list(config_file)
    eval_files = None
    if eval_config_file:
        eval_files = [eval_config_file] if isinstance(eval_config_file, (str, os.PathLike)) else list(eval_config_file)
    for path in config_files + (eval_files or []):
        if not Path(path).is_file():
            raise RepeatError(f"config file not found: {path}")
    runs = plan_runs(output_dir, seeds, split_files, overrides, keys)
    skipped, failed = [], {}
    for index, run in enumerate(runs, 1):
        if run.result_path.is_file():
            logger.info("[%d/%d] %s: %s exists, skipped", index, len(runs), run.run_id, run.result_path)
            skipped.append(run.run_id)
            continue
        logger.info("[%d/%d] %s", index, len(runs), run.run_id)
        try:
            execute_run(
                run,
                [str(p) for p in config_files],
                [str(p) for p in eval_files] if eval_files else None,
                meta_file,
                logging_file,
                in_process,
            )
        except Exception as error:  # one failed repetition must not lose the others
            if stop_on_error:
                raise
            logger.error("%s failed: %s", run.run_id, error)
            failed[run.run_id] = str(error)
    rows, used_metric = summarise(output_dir, metric, group_by)
    return RepeatSummary(runs=runs, skipped=skipped, failed=failed, rows=rows, metric=used_metric)


def _markdown(rows: Sequence[Mapping[str, Any]], group_by: Sequence[str], metric: str | None) -> str:
    header = [*group_by, "n", f"{metric} mean ± SEM (x100)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [str(row[key]) for key in group_by] + [
            str(row["n"]),
            f"{100 * row['mean']:.2f} ± {100 * row['sem']:.2f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ultradino_monai.evaluation.repeat",
        description="Run a MONAI bundle over seeds and/or split files and report mean ± SEM.",
    )
    parser.add_argument("--config_file", nargs="+", required=True, help="bundle config(s) of the training stage")
    parser.add_argument(
        "--eval_config_file",
        nargs="+",
        default=None,
        help="config(s) merged after --config_file for the evaluation stage (e.g. evaluate.json)",
    )
    parser.add_argument("--split_files", nargs="+", default=None, help="split files (one run per file and seed)")
    parser.add_argument("--seeds", nargs="+", type=int, default=None, help="training seeds (default: 0)")
    parser.add_argument("--output_dir", required=True, help="one sub-folder per run, summary.json / summary.csv")
    parser.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override for every run (repeatable; VALUE parsed as JSON when valid)",
    )
    parser.add_argument(
        "--key",
        action="append",
        default=[],
        metavar="ROLE=CONFIG_KEY",
        help=f"rename the config key of a role (roles: {', '.join(DEFAULT_KEYS)})",
    )
    parser.add_argument("--meta_file", default=None)
    parser.add_argument("--logging_file", default=None)
    parser.add_argument("--in_process", action="store_true", help="run stages through ConfigWorkflow in this process")
    parser.add_argument("--metric", default="auto", help="metric to aggregate (default: foreground_dice or macro_f1)")
    parser.add_argument("--group_by", nargs="+", default=list(DEFAULT_GROUP_BY))
    parser.add_argument("--stop_on_error", action="store_true")
    parser.add_argument("--dry_run", action="store_true", help="print the planned runs and their overrides")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    try:
        overrides = dict(parse_override(text) for text in args.override)
        keys = {}
        for text in args.key:
            role, name = parse_override(text)
            keys[role] = str(name)
        if args.dry_run:
            for run in plan_runs(args.output_dir, args.seeds, args.split_files, overrides, keys):
                state = "done" if run.result_path.is_file() else "todo"
                print(f"{run.run_id} [{state}]: {json.dumps(run.overrides)}")
            return 0
        summary = repeat(
            args.config_file,
            args.output_dir,
            seeds=args.seeds,
            split_files=args.split_files,
            eval_config_file=args.eval_config_file,
            overrides=overrides,
            keys=keys,
            meta_file=args.meta_file,
            logging_file=args.logging_file,
            in_process=args.in_process,
            metric=args.metric,
            group_by=args.group_by,
            stop_on_error=args.stop_on_error,
        )
    except RepeatError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(
        f"{len(summary.runs)} run(s): {len(summary.runs) - len(summary.skipped) - len(summary.failed)} run now, "
        f"{len(summary.skipped)} skipped (result present), {len(summary.failed)} failed"
    )
    for run_id, message in summary.failed.items():
        print(f"FAILED {run_id}: {message.splitlines()[0]}")
    if summary.rows:
        print(_markdown(summary.rows, args.group_by, summary.metric))
        print(f"summary: {Path(args.output_dir) / 'summary.json'}, {Path(args.output_dir) / 'summary.csv'}")
    return 1 if summary.failed else 0


if __name__ == "__main__":
    sys.exit(main())
