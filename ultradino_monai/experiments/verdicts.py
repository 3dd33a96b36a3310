"""Paired verdicts of an experiment: every pretrained backbone against every baseline, per task.

For each task (and split kind within it: the label-efficiency task holds 10 / 25 / 50 %),
each *treatment* backbone is compared with each *baseline* backbone over the cells both ran,
paired by cell (the same split file and seed): mean difference of the task's headline metric,
its 95 % t interval and a verdict word (:mod:`ultradino_monai.evaluation.paired`). Defaults:
treatments = the ViT backbones with a checkpoint; baselines = the random-init ViTs and
nnU-Net. The experiment file's ``report.comparisons: {treatments: [...], baselines: [...]}``
names them explicitly. Every row carries the budget of both arms and how they were matched
(``experiment.json``'s ``tasks.<task>.budget``, from :func:`ultradino_monai.experiments.plan.arm_budgets`).
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ultradino_monai.evaluation.paired import VERDICTS, paired_by_key
from ultradino_monai.utils.files import atomic_write, write_text_atomic

logger = logging.getLogger(__name__)

__all__ = [
    "METRIC_OF_KIND",
    "budgets_markdown",
    "comparison_arms",
    "comparison_rows",
    "verdicts_markdown",
    "write_verdicts_csv",
    "plot_paired_differences",
]

METRIC_OF_KIND = {
    "segmentation": "foreground_dice",
    "classification_finetune": "macro_f1",
    "classification_linear_probe": "macro_f1",
}
_CSV_COLUMNS = (
    "task",
    "column",
    "split_kind",
    "metric",
    "treatment",
    "baseline",
    "treatment_backbone",
    "baseline_backbone",
    "n",
    "mean_difference",
    "low",
    "high",
    "verdict",
    "treatment_budget",
    "baseline_budget",
    "matched_by",
    "unpaired",
)


def _label(backbone: Mapping[str, Any]) -> str:
    return f"{backbone['method']} ({backbone['label']})"


def comparison_arms(snapshot: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """(treatment backbone names, baseline backbone names): the file's ``report.comparisons`` or the defaults."""
    backbones = snapshot["backbones"]
    chosen = (snapshot.get("report") or {}).get("comparisons") or {}
    treatments = chosen.get("treatments") or [
        name for name, b in backbones.items() if b["kind"] == "vit" and b.get("checkpoint")
    ]
    baselines = chosen.get("baselines") or [
        name for name, b in backbones.items() if b["kind"] == "nnunet" or not b.get("checkpoint")
    ]
    return list(treatments), [name for name in baselines if name not in treatments]


def _split_kind_order(kind: str) -> tuple[int, float, str]:
    # few-shot and label-efficiency fractions in increasing size, "full" last
    if kind == "full":
        return (1, 0.0, kind)
    digits = "".join(c for c in kind.rsplit("_", 1)[-1] if c.isdigit() or c == ".")
    return (0, float(digits) if digits else 0.0, kind)


def comparison_rows(
    snapshot: Mapping[str, Any], records: Sequence[Mapping[str, Any]], confidence: float = 0.95
) -> list[dict[str, Any]]:
    """One row per (task, split kind, treatment, baseline) with at least one paired cell.

    Values are unscaled (fractions); ``n`` counts the pairs, ``unpaired`` the cells that only
    one arm has (not used). Records need ``experiment_task`` / ``experiment_backbone`` /
    ``experiment_cell`` (:func:`ultradino_monai.experiments.report.load_cell_records`).
    """
    treatments, baselines = comparison_arms(snapshot)
    backbones = snapshot["backbones"]
    rows = []
    for task_name, task in snapshot["tasks"].items():
        metric = METRIC_OF_KIND[task["kind"]]
        scores: dict[tuple[str, str], dict[str, float]] = {}
        for record in records:
            value = record["metrics"].get(metric)
            if record["experiment_task"] != task_name or not isinstance(value, (int, float)):
                continue
            arm = scores.setdefault((record["split_kind"], record["experiment_backbone"]), {})
            arm[record["experiment_cell"]] = float(value)
        budget = task.get("budget") or {}
        arms_budget = budget.get("arms") or {}
        for split_kind in sorted({kind for kind, _ in scores}, key=_split_kind_order):
            for treatment in treatments:
                for baseline in baselines:
                    mine, theirs = scores.get((split_kind, treatment)), scores.get((split_kind, baseline))
                    if not mine or not theirs or not set(mine) & set(theirs):
                        continue
                    result, keys = paired_by_key(mine, theirs, confidence)
                    budgets = (arms_budget.get(treatment, "?"), arms_budget.get(baseline, "?"))
                    matched_by = budget.get("matched_by", "?")
                    if budgets[0] == budgets[1] != "?":
                        # two arms of one budget (one bundle config), whatever the task's other arms train on
                        matched_by = "steps x batch" if task["kind"] == "segmentation" else "recipe"
                    rows.append(
                        {
                            "task": task_name,
                            "column": task.get("column") or task_name,
                            "split_kind": split_kind,
                            "metric": metric,
                            "treatment": _label(backbones[treatment]),
                            "baseline": _label(backbones[baseline]),
                            "treatment_backbone": treatment,
                            "baseline_backbone": baseline,
                            "n": result.n,
                            "mean_difference": result.mean_difference,
                            "low": result.low,
                            "high": result.high,
                            "confidence": confidence,
                            "verdict": result.verdict,
                            "treatment_budget": budgets[0],
                            "baseline_budget": budgets[1],
                            "matched_by": matched_by,
                            "unpaired": len(set(mine) ^ set(theirs)),
                            "pairs": keys,
                        }
                    )
    return rows


def _interval(row: Mapping[str, Any], scale: float) -> str:
    if not math.isfinite(row["low"]):
        return "(n = 1: none)"
    return f"[{row['low'] * scale:+.2f}, {row['high'] * scale:+.2f}]"


def verdicts_markdown(rows: Sequence[Mapping[str, Any]], scale: float = 100.0) -> str:
    """Markdown table of :func:`comparison_rows` (differences ×100, 2 decimals), one comparison per line."""
    if not rows:
        return "(no paired cells yet)\n"
    percent = round(100 * rows[0]["confidence"])
    lines = [
        f"| task | split | pretrained | baseline | n pairs | mean difference | {percent} % t interval | verdict "
        "| budget (pretrained) | budget (baseline) | matched by |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['column']} | {row['split_kind']} | {row['treatment']} | {row['baseline']} | {row['n']} | "
            f"{row['mean_difference'] * scale:+.2f} | {_interval(row, scale)} | **{row['verdict']}** | "
            f"{row['treatment_budget']} | {row['baseline_budget']} | {row['matched_by']} |"
        )
    return "\n".join(lines) + "\n"


def write_verdicts_csv(path: str | os.PathLike, rows: Sequence[Mapping[str, Any]]) -> Path:
    """:func:`comparison_rows` as CSV (unscaled, full precision; infinite bounds for n = 1 as ``inf``)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=_CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return write_text_atomic(Path(path), buffer.getvalue())


def plot_paired_differences(
    rows: Sequence[Mapping[str, Any]], path: str | os.PathLike, title: str = "Pretrained minus baseline, paired"
) -> Path:
    """Forest plot: one line per comparison, mean difference (×100) with its interval as error bar, 0 marked.

    Colour and the word at the right give the verdict; an n = 1 comparison has no interval (a
    hollow marker).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = dict(zip(VERDICTS, ("tab:green", "tab:red", "0.45")))
    figure, axis = plt.subplots(figsize=(8.0, 0.42 * len(rows) + 1.4))
    for index, row in enumerate(rows):
        y = len(rows) - 1 - index
        mean = 100 * row["mean_difference"]
        colour = colours[row["verdict"]]
        if math.isfinite(row["low"]):
            error = [[mean - 100 * row["low"]], [100 * row["high"] - mean]]
            axis.errorbar(mean, y, xerr=error, fmt="o", color=colour, capsize=4, markersize=5)
        else:
            axis.plot(mean, y, "o", markerfacecolor="none", color=colour)
        axis.annotate(
            f"{row['verdict']} (n={row['n']})",
            xy=(1.01, y),
            xycoords=("axes fraction", "data"),
            va="center",
            fontsize=7,
            color=colour,
        )
    axis.axvline(0.0, color="0.2", linewidth=0.8)
    axis.set_yticks(range(len(rows)))
    axis.set_yticklabels(
        [
            f"{r['column']} [{r['split_kind']}]: {r['treatment_backbone']} − {r['baseline_backbone']}"
            for r in reversed(rows)
        ],
        fontsize=7,
    )
    percent = round(100 * rows[0]["confidence"]) if rows else 95
    axis.set_xlabel(f"paired difference of the test metric (×100), mean and {percent} % t interval")
    axis.set_title(title, fontsize=9)
    axis.grid(True, axis="x", alpha=0.3)
    result = atomic_write(
        Path(path), lambda temporary: figure.savefig(temporary, format="png", dpi=150, bbox_inches="tight")
    )
    plt.close(figure)
    return result


def budgets_markdown(snapshot: Mapping[str, Any], tasks: Sequence[str] | None = None) -> str:
    """One bullet per task (default: the tasks with a Table 1 column): how the arms were matched, each arm's budget."""
    lines = []
    for name, task in snapshot["tasks"].items():
        if (tasks is None and not task.get("column")) or (tasks is not None and name not in tasks):
            continue
        budget = task.get("budget") or {}
        arms = "; ".join(
            f"{_label(snapshot['backbones'][b])}: {text}" for b, text in (budget.get("arms") or {}).items()
        )
        lines.append(f"- **{task.get('column') or name}** (matched by {budget.get('matched_by', '?')}): {arms}")
    return "\n".join(lines) + ("\n" if lines else "")
