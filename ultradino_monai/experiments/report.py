"""Render an experiment's results: Table 1 (Markdown + CSV), the label-efficiency and few-shot
figures, and the attention-map figure (``python -m ultradino_monai.experiments report RESULTS_DIR``).

Rows are the experiment's backbones: every record of ``<task>/<backbone>/<cell>/result.json``
is labelled with that backbone's ``method`` and ``label`` from ``experiment.json`` (the
bundles name random inits "scratch" and derive architecture names themselves; the
experiment file's names are the ones the tables should show). Numbers are the records' own,
aggregated by :mod:`ultradino_monai.evaluation.aggregate` (mean ± SEM, SEM = sample std / √n,
×100). Outputs go to ``RESULTS_DIR/report/``:

=====================  ======================================================================
``table1.md``/``.csv``  Table 1 layout: one column per task with a ``column`` title
``groups.csv``          every (task, backbone) group: n, mean, std, SEM (unscaled)
``label_efficiency.png``  Dice vs % of training data, one line per backbone, 95 % t intervals (paper Fig. 1b)
``fewshot_<task>.png``  few-shot Dice per backbone, bars with 95 % t intervals (paper Fig. 1a)
``verdicts.md``/``.csv``  paired pretrained-vs-baseline differences, 95 % t intervals, verdict words
                        (:mod:`ultradino_monai.experiments.verdicts`)
``paired_differences.png``  the same as a forest plot: mean difference with its interval as error bar
``attention.png``       per-head CLS attention of two backbones on the same images (Fig. 4)
``report.md``           all of the above in one page
``readme_results.md``   the README's results block of this experiment (commands, Table 1, budgets, verdicts)
=====================  ======================================================================
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ultradino_monai.evaluation.aggregate import (
    ResultError,
    Table1Column,
    aggregate,
    mean_sem,
    table1,
    validate_record,
    write_aggregate_csv,
    write_table1_csv,
)
from ultradino_monai.evaluation.paired import t_half_width
from ultradino_monai.experiments.readme import replace_block, results_snippet
from ultradino_monai.experiments.verdicts import (
    METRIC_OF_KIND,
    budgets_markdown,
    comparison_rows,
    plot_paired_differences,
    verdicts_markdown,
    write_verdicts_csv,
)
from ultradino_monai.utils.files import atomic_write, write_text_atomic

logger = logging.getLogger(__name__)

__all__ = [
    "load_cell_records",
    "table_columns",
    "label_efficiency_points",
    "plot_label_efficiency",
    "plot_fewshot_bars",
    "plot_attention",
    "render_report",
]

_METRIC_TITLE = {"foreground_dice": "foreground Dice", "macro_f1": "macro F1"}


def _snapshot(results_dir: Path) -> dict[str, Any]:
    path = results_dir / "experiment.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: not an experiment results folder "
            "(python -m ultradino_monai.experiments run EXPERIMENT.yaml writes it)"
        )
    return json.loads(path.read_text())


def row_label(backbone: Mapping[str, Any]) -> str:
    return f"{backbone['method']} ({backbone['label']})"


def load_cell_records(
    results_dir: str | os.PathLike, snapshot: Mapping[str, Any] | None = None
) -> list[dict[str, Any]]:
    """Result records of the experiment's cells, relabelled with the backbone's method / label.

    Each returned record is a copy with ``method`` / ``backbone`` from ``experiment.json``,
    the bundle's own values kept as ``record_method`` / ``record_backbone``, and
    ``experiment_task`` / ``experiment_backbone`` / ``experiment_cell`` (split file stem and
    seed: the pairing key) naming the cell. Cells without a result are skipped.
    """
    results_dir = Path(results_dir)
    snapshot = snapshot or _snapshot(results_dir)
    records = []
    for cell in snapshot["cells"]:
        path = results_dir / cell["result"]
        if not path.is_file():
            continue
        record = json.loads(path.read_text())
        validate_record(record, where=str(path))
        backbone = snapshot["backbones"][cell["backbone"]]
        records.append(
            {
                **record,
                "record_method": record["method"],
                "record_backbone": record["backbone"],
                "method": backbone["method"],
                "backbone": backbone["label"],
                "experiment_task": cell["task"],
                "experiment_backbone": cell["backbone"],
                "experiment_cell": cell["cell_id"],
                "result_file": str(path),
            }
        )
    logger.info("%d of %d cells have results in %s", len(records), len(snapshot["cells"]), results_dir)
    return records


def table_columns(snapshot: Mapping[str, Any], records: Sequence[Mapping[str, Any]]) -> list[Table1Column]:
    """One :class:`Table1Column` per task with a ``column`` title, matching exactly that task's records."""
    columns = []
    for name, task in snapshot["tasks"].items():
        if not task.get("column"):
            continue
        own = [r for r in records if r["experiment_task"] == name]
        datasets = tuple(sorted({r["dataset"] for r in own})) or (task["dataset"],)
        kinds = tuple(sorted({r["split_kind"] for r in own})) or ("-",)
        columns.append(
            Table1Column(
                task["column"], own[0]["task"] if own else task["kind"], datasets, kinds, METRIC_OF_KIND[task["kind"]]
            )
        )
    titles = [c.title for c in columns]
    if len(set(titles)) != len(titles):
        raise ResultError(f"two tasks share a Table 1 column title: {titles}")
    for record in records:
        hits = [c.title for c in columns if c.matches(record)]
        owner = snapshot["tasks"][record["experiment_task"]].get("column")
        if len(hits) > 1 or (hits and hits != [owner]):
            raise ResultError(
                f"{record['result_file']} (task {record['experiment_task']}) would fall into column(s) "
                f"{hits}; give the tasks distinct datasets or split kinds"
            )
    return columns


def _percent(split_kind: str) -> float | None:
    if split_kind == "full":
        return 100.0
    match = re.fullmatch(r"label_efficiency_p(\d+(?:\.\d+)?)", split_kind)
    return float(match.group(1)) if match else None


def label_efficiency_points(
    records: Sequence[Mapping[str, Any]], tasks: Sequence[str], metric: str = "foreground_dice"
) -> dict[str, dict[float, tuple[float, float, int]]]:
    """``{row label: {percent: (mean, sem, n)}}`` from the records of ``tasks`` (``full`` = 100 %)."""
    values: dict[str, dict[float, list[float]]] = {}
    for record in records:
        if record["experiment_task"] not in tasks:
            continue
        percent = _percent(record["split_kind"])
        value = record["metrics"].get(metric)
        if percent is None or not isinstance(value, (int, float)):
            continue
        values.setdefault(f"{record['method']} ({record['backbone']})", {}).setdefault(percent, []).append(float(value))
    points = {}
    for label, by_percent in values.items():
        points[label] = {}
        for percent, items in sorted(by_percent.items()):
            mean, _, sem = mean_sem(items)
            points[label][percent] = (mean, sem, len(items))
    return points


def _error_bar(sem: float, n: int) -> float:
    """The 95 % t interval's half-width of a mean of n runs; 0 (no bar) for a single run."""
    return t_half_width(sem, n) if n > 1 else 0.0


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(figure, path: Path) -> Path:
    return atomic_write(path, lambda temporary: figure.savefig(temporary, format="png", dpi=150, bbox_inches="tight"))


def plot_label_efficiency(
    points: Mapping[str, Mapping[float, tuple[float, float, int]]],
    path: str | os.PathLike,
    title: str = "Label efficiency",
    metric: str = "foreground_dice",
) -> Path:
    """Line plot: metric (×100) vs % of training data, one line per backbone.

    Error bars: the 95 % t interval of each mean (:func:`~ultradino_monai.evaluation.paired.t_half_width`);
    a point from a single run has none.
    """
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6.4, 4.4))
    percents = sorted({p for series in points.values() for p in series})
    markers = "osD^v<>p*h"
    for index, (label, series) in enumerate(points.items()):
        xs = sorted(series)
        means = [100 * series[x][0] for x in xs]
        halves = [_error_bar(100 * series[x][1], series[x][2]) for x in xs]
        axis.errorbar(
            xs,
            means,
            yerr=halves,
            marker=markers[index % len(markers)],
            capsize=4,
            linewidth=1.8,
            markersize=6,
            label=label,
        )
    axis.set_xscale("log")
    axis.set_xticks(percents)
    axis.set_xticklabels([f"{p:g}%" for p in percents])
    axis.minorticks_off()
    axis.set_xlabel("training data used (% of the full training split, log scale)")
    axis.set_ylabel(f"test {_METRIC_TITLE.get(metric, metric)} (×100)")
    axis.set_title(title)
    axis.grid(True, alpha=0.3)
    axis.legend(fontsize=8, loc="best")
    n_values = sorted({series[x][2] for series in points.values() for x in series})
    axis.text(
        0.99,
        0.01,
        f"mean and 95 % t interval over n = {'/'.join(map(str, n_values))} runs",
        transform=axis.transAxes,
        ha="right",
        va="bottom",
        fontsize=7,
        color="0.35",
    )
    result = _save(figure, Path(path))
    plt.close(figure)
    return result


def plot_fewshot_bars(
    rows: Sequence[Mapping[str, Any]], path: str | os.PathLike, title: str, metric: str = "foreground_dice"
) -> Path:
    """Bar plot of :func:`aggregate` rows (one bar per backbone): mean ×100 with its 95 % t interval.

    The value and the interval are printed on each bar; a bar from a single run has no interval.
    """
    plt = _pyplot()
    labels = [f"{row['method']} ({row['backbone']})" for row in rows]
    means = np.array([100 * row["mean"] for row in rows])
    halves = np.array([_error_bar(100 * row["sem"], row["n"]) for row in rows])
    figure, axis = plt.subplots(figsize=(max(4.8, 1.5 * len(rows) + 1.5), 4.6))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    bars = axis.bar(
        range(len(rows)), means, yerr=halves, capsize=5, color=[colors[i % len(colors)] for i in range(len(rows))]
    )
    for bar, mean, half, row in zip(bars, means, halves, rows):
        interval = f"[{mean - half:.1f}, {mean + half:.1f}]" if row["n"] > 1 else "no interval"
        axis.text(
            bar.get_x() + bar.get_width() / 2,
            mean + half + 0.01 * max(1.0, means.max()),
            f"{mean:.1f}\n{interval}\n(n={row['n']})",
            ha="center",
            va="bottom",
            fontsize=8,
        )
    axis.set_xticks(range(len(rows)))
    axis.set_xticklabels(
        labels, rotation=20 if len(rows) > 3 else 0, ha="right" if len(rows) > 3 else "center", fontsize=8
    )
    axis.set_ylabel(f"test {_METRIC_TITLE.get(metric, metric)} (×100)")
    axis.set_ylim(0, max(1.0, float((means + halves).max())) * 1.3)
    axis.text(
        0.99,
        0.99,
        "bars: 95 % t interval of the mean",
        transform=axis.transAxes,
        ha="right",
        va="top",
        fontsize=7,
        color="0.35",
    )
    axis.set_title(title)
    axis.grid(True, axis="y", alpha=0.3)
    result = _save(figure, Path(path))
    plt.close(figure)
    return result


# -------------------------------------------------------------------------- attention
def _load_for_attention(backbone: Mapping[str, Any], image_size: int, seed: int = 0):
    import torch

    from ultradino_monai.networks.checkpoints import load_backbone

    if backbone.get("checkpoint"):
        return load_backbone(
            backbone["checkpoint"],
            source=backbone.get("source", "auto"),
            in_chans=int(backbone.get("in_chans", 1)),
            img_size=image_size,
        )
    shape = dict(backbone.get("architecture") or {})
    arch = shape.pop("arch", "vit_small")
    registers = shape.pop("num_register_tokens", None)
    torch.manual_seed(seed)
    return load_backbone(
        None,
        arch=arch,
        in_chans=int(backbone.get("in_chans", 1)),
        img_size=image_size,
        num_register_tokens=registers,
        **shape,
    )


def plot_attention(
    backbones: Sequence[Mapping[str, Any]],
    datalist: str | os.PathLike,
    path: str | os.PathLike,
    section: str = "validation",
    num_images: int = 3,
    image_size: int = 224,
    max_heads: int | None = None,
    title: str | None = None,
) -> Path:
    """Per-head last-block CLS attention of each backbone on the same images (paper Fig. 4).

    Rows: for every image, one row per backbone (image, then one overlay per head, each map
    min-max scaled on its own). Images: the first image of each of the first ``num_images``
    patients of ``section`` of the datalist, through the shared preprocessing at ``image_size``, normalised with each
    backbone's own statistics.
    """
    import torch

    from ultradino_monai.data.datalist import load_datalist
    from ultradino_monai.evaluation.attention import cls_attention_maps
    from ultradino_monai.transforms.ultrasound import ultrasound_preprocessing

    items, patients = [], set()
    for item in load_datalist(datalist, section):  # one image per patient: different anatomy in every row
        if item.get("patient") in patients:
            continue
        patients.add(item.get("patient"))
        items.append(item)
        if len(items) == num_images:
            break
    if not items:
        raise ResultError(f"{datalist}: section {section!r} is empty; no images for the attention figure")
    chain = ultrasound_preprocessing(
        "image", None, spatial_size=(image_size, image_size), normalization="none", in_chans=1, label_is_map=False
    )
    images = torch.stack([torch.as_tensor(chain({"image": item["image"]})["image"]) for item in items])  # [N,1,H,W]
    maps = []
    for backbone in backbones:
        loaded = _load_for_attention(backbone, image_size)
        model = loaded.model.eval()
        patch = getattr(model, "patch_size", 16)
        side = (image_size // patch) * patch
        x = images[..., :side, :side].repeat(1, loaded.in_chans, 1, 1)
        mean = torch.tensor(loaded.mean, dtype=torch.float32).view(1, -1, 1, 1)
        std = torch.tensor(loaded.std, dtype=torch.float32).view(1, -1, 1, 1)
        with torch.no_grad():
            attention = cls_attention_maps(model, (x - mean) / std).float()
        maps.append(attention[:, :max_heads] if max_heads else attention)
    heads = max(m.shape[1] for m in maps)
    plt = _pyplot()
    rows = len(items) * len(backbones)
    figure, axes = plt.subplots(
        rows,
        heads + 1,
        figsize=(1.5 * (heads + 1) + 1.4, 1.5 * rows + 0.5),
        squeeze=False,
        gridspec_kw={"wspace": 0.04, "hspace": 0.08},
    )
    for i in range(len(items)):
        image = images[i, 0].numpy()
        for b, backbone in enumerate(backbones):
            row = i * len(backbones) + b
            axes[row, 0].imshow(image, cmap="gray")
            axes[row, 0].set_ylabel(
                f"{row_label(backbone)}\nimage {i + 1}", fontsize=7, rotation=0, ha="right", va="center", labelpad=4
            )
            for head in range(heads):
                axis = axes[row, head + 1]
                if head >= maps[b].shape[1]:
                    axis.set_visible(False)
                    continue
                attention = maps[b][i, head][None, None]
                upsampled = torch.nn.functional.interpolate(attention, size=image.shape, mode="nearest")[0, 0].numpy()
                low, high = upsampled.min(), upsampled.max()
                axis.imshow(image, cmap="gray")
                axis.imshow((upsampled - low) / (high - low + 1e-12), cmap="inferno", alpha=0.6, vmin=0, vmax=1)
                if row == 0:
                    axis.set_title(f"head {head}", fontsize=8)
            if row == 0:
                axes[row, 0].set_title("input", fontsize=8)
    for axis in axes.flat:
        axis.set_xticks([])
        axis.set_yticks([])
    figure.suptitle(
        title
        or f"Last-block CLS attention per head ({section} images, {image_size} px;\neach map scaled to its own range)",
        fontsize=9,
    )
    result = _save(figure, Path(path))
    plt.close(figure)
    return result


# ----------------------------------------------------------------------------- report
def render_report(
    results_dir: str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    attention: bool = True,
    readme: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Write every output listed in the module docstring; returns their paths, Table 1 and the verdicts (Markdown).

    ``readme``: also replace that file's generated results block (:mod:`ultradino_monai.experiments.readme`).
    """
    results_dir = Path(results_dir)
    out_dir = Path(out_dir) if out_dir is not None else results_dir / "report"
    snapshot = _snapshot(results_dir)
    records = load_cell_records(results_dir, snapshot)
    if not records:
        raise ResultError(f"no cell of {results_dir} has a result yet")
    outputs: dict[str, Any] = {"records": len(records), "cells": len(snapshot["cells"])}

    columns = table_columns(snapshot, records)
    in_columns = [r for r in records if any(c.matches(r) for c in columns)]
    markdown = table1(in_columns, columns) if in_columns else "(no results for the Table 1 columns yet)\n"
    write_text_atomic(out_dir / "table1.md", markdown)
    if in_columns:
        outputs["table1_csv"] = str(write_table1_csv(out_dir / "table1.csv", in_columns, columns))
    outputs["table1_md"] = str(out_dir / "table1.md")
    outputs["table1"] = markdown

    rows = []
    for metric in ("foreground_dice", "macro_f1"):
        rows += aggregate(
            records, group_by=("experiment_task", "method", "backbone", "dataset", "split_kind"), metric=metric
        )
    outputs["groups_csv"] = str(write_aggregate_csv(out_dir / "groups.csv", rows))

    figures: dict[str, str] = {}
    report = snapshot.get("report") or {}
    if "label_efficiency" in report:
        tasks = report["label_efficiency"]["tasks"]
        points = label_efficiency_points(records, tasks)
        if points:
            dataset = snapshot["tasks"][tasks[0]]["dataset"]
            figures["label_efficiency"] = str(
                plot_label_efficiency(
                    points,
                    out_dir / "label_efficiency.png",
                    title=report["label_efficiency"].get("title", f"Label efficiency on {dataset} (test set)"),
                )
            )
        else:
            logger.warning("no label-efficiency results yet (tasks %s)", tasks)
    if "fewshot_bars" in report:
        task = report["fewshot_bars"]["task"]
        metric = METRIC_OF_KIND[snapshot["tasks"][task]["kind"]]
        bars = aggregate(
            [r for r in records if r["experiment_task"] == task],
            group_by=("experiment_backbone", "method", "backbone"),
            metric=metric,
        )
        order = list(snapshot["backbones"])
        bars.sort(key=lambda row: order.index(row["experiment_backbone"]))
        if bars:
            column = snapshot["tasks"][task].get("column") or task
            figures["fewshot_bars"] = str(
                plot_fewshot_bars(
                    bars,
                    out_dir / f"fewshot_{task}.png",
                    metric=metric,
                    title=report["fewshot_bars"].get("title", f"{column}: test {_METRIC_TITLE[metric]}"),
                )
            )
        else:
            logger.warning("no results yet for the few-shot bar plot (task %s)", task)
    if attention and "attention" in report:
        entry = report["attention"]
        dataset = snapshot["datasets"][entry["dataset"]]
        chosen = [{**snapshot["backbones"][name], "name": name} for name in entry["backbones"]]
        figures["attention"] = str(
            plot_attention(
                chosen,
                dataset["datalist"],
                out_dir / "attention.png",
                section=entry.get("section", "validation"),
                num_images=int(entry.get("images", 3)),
                image_size=int(entry.get("image_size", 224)),
                max_heads=entry.get("max_heads"),
            )
        )
    comparisons = comparison_rows(snapshot, records)
    verdicts = verdicts_markdown(comparisons)
    budgets = budgets_markdown(snapshot)
    write_text_atomic(out_dir / "verdicts.md", verdicts)
    outputs["verdicts_csv"] = str(write_verdicts_csv(out_dir / "verdicts.csv", comparisons))
    outputs["verdicts_md"] = str(out_dir / "verdicts.md")
    outputs["verdicts"] = verdicts
    outputs["comparisons"] = comparisons
    outputs["budgets"] = budgets
    if comparisons:
        figures["paired_differences"] = str(plot_paired_differences(comparisons, out_dir / "paired_differences.png"))
    outputs["figures"] = figures

    lines = [
        f"# Experiment `{snapshot['name']}`",
        "",
        f"{len(records)} of {len(snapshot['cells'])} cells have results. Cells: mean ± SEM (×100) over the "
        "cells of each task (seeds / draws); SEM = sample std / √n, 0.00 for n = 1. Rows marked "
        "`[reduced budget: ...]` did not run the paper's schedule.",
        "",
        "## Table 1",
        "",
        markdown,
        "Budgets (every arm of a cell; matched by optimiser steps × batch, by one bundle recipe, or not):",
        "",
        budgets,
        "## Paired comparisons",
        "",
        "Pretrained minus baseline on the same split file and seed (×100); 95 % Student t interval of the "
        "mean difference over the n pairs (t, not bootstrap: a bootstrap over n ≤ 5 pairs cannot be wider "
        "than the observed range and undercovers); `ahead`: the interval lies above 0, `behind`: below 0, "
        "`within noise`: it contains 0. `verdicts.csv` has the unscaled values.",
        "",
        verdicts,
    ]
    for name, figure in figures.items():
        lines += [f"## {name.replace('_', ' ')}", "", f"![{name}]({Path(figure).name})", ""]
    lines += ["## All groups", "", "`groups.csv` (unscaled; n, mean, std, SEM per task and backbone)", ""]
    write_text_atomic(out_dir / "report.md", "\n".join(lines))
    outputs["report_md"] = str(out_dir / "report.md")
    status_file = Path(results_dir) / "status.json"
    run_command = json.loads(status_file.read_text()).get("command") if status_file.is_file() else None
    snippet = results_snippet(snapshot, outputs, results_dir, run_command=run_command)
    outputs["readme_results"] = str(write_text_atomic(out_dir / "readme_results.md", snippet))
    if readme is not None:
        outputs["readme"] = str(replace_block(readme, snippet, snapshot["name"]))
    return outputs
