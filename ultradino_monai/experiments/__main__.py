"""``python -m ultradino_monai.experiments {run,report,status}`` (see experiments/README.md).

* ``run EXPERIMENT.yaml [--gpus 0,1 | --workers N] [--results_dir DIR] [--tasks ...] [--backbones ...]
  [--dry_run]``: run every cell of the grid that has no result yet; prints a progress line per
  event and a summary at the end. Exit code 0 when every selected cell has a result, 1 when
  some failed, 130 when interrupted (rerun the same command to resume), 2 for a bad file or a bad
  option (``--workers`` below 1, an empty or repeated ``--gpus`` id, ``--gpus`` with ``--workers``).
* ``report RESULTS_DIR [--out DIR] [--no_attention] [--readme README.md]``: Table 1 (Markdown + CSV),
  budgets, paired verdicts and figures; ``--readme`` replaces the README's generated results block.
* ``status RESULTS_DIR``: done / running / failed / pending cells.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from ultradino_monai.experiments.parse import load_spec
from ultradino_monai.experiments.spec import SpecError
from ultradino_monai.utils.cli import positive_int
from ultradino_monai.utils.logs import setup_logging

__all__ = ["build_parser", "main"]


def _gpu_ids(text: str) -> list[str]:
    """``"0,1"`` -> ``["0", "1"]``: CUDA_VISIBLE_DEVICES entries (indices >= 0 or GPU-/MIG- UUIDs).

    An id listed k times gets k workers: ``0,0,0,0`` runs four cells side by side on one GPU.
    """
    ids = [part.strip() for part in text.split(",")]
    if not ids or any(not gpu for gpu in ids):
        raise argparse.ArgumentTypeError(f"expected comma-separated GPU ids such as 0,1, got {text!r}")
    for gpu in ids:
        if not (gpu.isdigit() or gpu.startswith(("GPU-", "MIG-"))):
            raise argparse.ArgumentTypeError(f"GPU id {gpu!r} is neither an index >= 0 nor a GPU-/MIG- UUID")
    return ids


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ultradino_monai.experiments",
        description="Run the paper's grid of backbones x tasks x seeds, and report it.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run the cells of an experiment file that have no result yet")
    run.add_argument("experiment", help="experiment YAML file (experiments/demo.yaml, experiments/paper.yaml)")
    run.add_argument("--results_dir", default=None, help="override the file's results_dir")
    where = run.add_mutually_exclusive_group()
    where.add_argument(
        "--gpus",
        type=_gpu_ids,
        default=None,
        help="comma-separated GPU ids, one worker each; repeat an id to share that GPU",
    )
    where.add_argument(
        "--workers", type=positive_int, default=None, help="CPU workers (>= 1) when no --gpus (default 1)"
    )
    run.add_argument("--tasks", nargs="+", default=None, help="run only these tasks")
    run.add_argument("--backbones", nargs="+", default=None, help="run only these backbones")
    run.add_argument("--dry_run", action="store_true", help="list the cells and whether they are done; run nothing")
    run.add_argument("--report", action="store_true", help="render the report when the grid has finished")
    report = commands.add_parser("report", help="Table 1 and figures from a results folder")
    report.add_argument("results_dir")
    report.add_argument("--out", default=None, help="output folder (default RESULTS_DIR/report)")
    report.add_argument("--no_attention", action="store_true", help="skip the attention-map figure")
    report.add_argument(
        "--readme", default=None, help="replace this file's generated results block (README.md) with the report's"
    )
    status = commands.add_parser("status", help="done / running / failed / pending cells of a results folder")
    status.add_argument("results_dir")
    status.add_argument("--json", action="store_true", help="print the full status as JSON")
    return parser


def _run(args) -> int:
    from ultradino_monai.experiments import plan, runner
    from ultradino_monai.experiments.prepare import prepare_datasets

    spec = load_spec(args.experiment, results_dir=args.results_dir)
    unknown = sorted(set(args.tasks or []) - set(spec.tasks)) + sorted(set(args.backbones or []) - set(spec.backbones))
    if unknown:
        raise SpecError(f"--tasks / --backbones name(s) not in {args.experiment}: {unknown}")
    if args.dry_run:
        prepare_datasets(spec)
        jobs = plan.plan_jobs(spec)
        for job in plan._select(jobs, args.tasks, args.backbones):
            print(f"{'done' if job.is_done() else 'todo'}  {job.job_id}")
        return 0
    summary = runner.run_grid(
        spec,
        gpus=args.gpus,
        workers=args.workers,
        tasks=args.tasks,
        backbones=args.backbones,
        command=["python", "-m", "ultradino_monai.experiments", *args.argv],
    )
    cells = summary.cells
    done = sum(1 for job in cells if job.is_done())
    finished = [job for job in summary.finished if not job.startswith("_prepare/")]
    failed_cells = [job for job in summary.failed if not job.startswith("_prepare/")]
    print(
        f"{len(cells)} cell(s): {len(summary.skipped)} already done, {len(finished)} run now, "
        f"{len(summary.failed)} failed, {len(cells) - done - len(failed_cells)} not run; results in {spec.results_dir}"
    )
    for job_id, reason in summary.failed.items():
        print(f"FAILED {job_id}: {reason}")
    if summary.interrupted:
        print("interrupted: rerun the same command to finish the remaining cells")
        return 130
    if args.report and done:
        from ultradino_monai.experiments.report import render_report

        outputs = render_report(spec.results_dir)
        print(outputs["table1"])
        print(outputs["verdicts"])
        print(f"report: {outputs['report_md']}")
    return 1 if summary.failed else 0


def _report(args) -> int:
    from ultradino_monai.experiments.report import render_report

    outputs = render_report(args.results_dir, args.out, attention=not args.no_attention, readme=args.readme)
    print(outputs["table1"])
    print(outputs["budgets"])
    print(outputs["verdicts"])
    print(f"{outputs['records']} of {outputs['cells']} cells have results")
    for name, path in outputs["figures"].items():
        print(f"{name}: {path}")
    print(f"table: {outputs['table1_md']}" + (f", {outputs['table1_csv']}" if "table1_csv" in outputs else ""))
    print(f"verdicts: {outputs['verdicts_md']}, {outputs['verdicts_csv']}")
    print(f"report: {outputs['report_md']}")
    if "readme" in outputs:
        print(f"results block of {outputs['readme']} replaced")
    return 0


def _status(args) -> int:
    from ultradino_monai.experiments.runner import read_status

    status = read_status(args.results_dir)
    if args.json:
        print(json.dumps(status, indent=2))
        return 0
    counts = status["counts"]
    print(
        f"{status['experiment']}: "
        + ", ".join(f"{counts.get(k, 0)} {k}" for k in ("done", "running", "failed", "interrupted", "pending"))
        + f" (runner {'running' if status['runner_alive'] else 'not running'}; updated {status['updated']})"
    )
    for job_id, entry in status["cells"].items():
        if entry["state"] != "done":
            extra = f" ({entry['reason']})" if entry.get("reason") else ""
            print(f"  {entry['state']:<11} {job_id}{extra}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    setup_logging()
    try:
        return {"run": _run, "report": _report, "status": _status}[args.command](args)
    except (SpecError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
