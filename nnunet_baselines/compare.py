"""Put nnU-Net and foundation-model result records side by side (docs/design.md contract 5).

Everything numeric comes from :mod:`ultradino_monai.evaluation.aggregate`: records are
loaded with ``load_results``, the paper's Table 1 layout (rows ``method (backbone)``, reduced
budgets labelled ``[reduced budget: ...]``, cells ``mean ± SEM`` x 100) comes from
``table1`` / ``write_table1_csv``, and the long table of every segmentation group (method,
backbone, dataset, split kind, budget; mean ± SEM over seeds / draws, ``n`` runs) from
``aggregate`` / ``write_aggregate_csv``. Budgets are a grouping key, so a reduced nnU-Net run
is never averaged with a full one.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ultradino_monai.utils.files import write_text_atomic

logger = logging.getLogger(__name__)

__all__ = ["GROUP_BY", "compare_results"]

#: One row of the long table per (method, backbone, dataset, split kind, budget).
GROUP_BY = ("method", "backbone", "task", "dataset", "split_kind", "budget")


def compare_results(
    result_dirs: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    metric: str = "foreground_dice",
) -> dict[str, Any]:
    """Write ``comparison.md``, ``table1.csv`` and ``groups.csv`` into ``out_dir``.

    Args:
        result_dirs: folders searched recursively for result records (the nnU-Net
            ``workdir/results`` and the bundles' run folders, in any mix).
        out_dir: destination folder.
        metric: record metric to aggregate in the long table (Table 1 fixes its own).

    Returns:
        ``{"markdown": text, "records": n, "paths": {...}}``.

    Raises:
        ultradino_monai.evaluation.aggregate.ResultError: no records, or records that
            cannot be tabulated (e.g. one row mixing split kinds in a Table 1 column).
    """
    from ultradino_monai.evaluation.aggregate import (
        ResultError,
        aggregate,
        load_results,
        table1,
        write_aggregate_csv,
        write_table1_csv,
    )

    records = []
    for directory in result_dirs:
        records.extend(load_results(directory))
    if not records:
        raise ResultError(f"no result records under {[str(d) for d in result_dirs]}")
    out_dir = Path(out_dir)
    groups = aggregate(records, group_by=GROUP_BY, metric=metric)
    lines = [
        "# nnU-Net vs foundation models",
        "",
        f"{len(records)} result records from {', '.join(str(d) for d in result_dirs)}.",
        "Cells: mean ± SEM over seeds (full data) or draws (few-shot), ×100; SEM is 0.00 for n = 1.",
        "Rows marked `[reduced budget: ...]` did not run the paper's schedule and are not comparable to it.",
        "",
        "## Table 1 layout",
        "",
        table1(records).rstrip("\n"),
        "",
        f"## All groups ({metric})",
        "",
        "| method | backbone | dataset | split kind | budget | n | mean ± SEM (×100) |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in groups:
        lines.append(
            f"| {row['method']} | {row['backbone']} | {row['dataset']} | {row['split_kind']} | "
            f"{row['budget']} | {row['n']} | {row['mean'] * 100:.2f} ± {row['sem'] * 100:.2f} |"
        )
    markdown = "\n".join(lines) + "\n"
    paths = {
        "markdown": out_dir / "comparison.md",
        "table1_csv": out_dir / "table1.csv",
        "groups_csv": out_dir / "groups.csv",
    }
    write_text_atomic(paths["markdown"], markdown)
    write_table1_csv(paths["table1_csv"], records)
    write_aggregate_csv(paths["groups_csv"], groups)
    logger.info("compared %d records (%d groups) -> %s", len(records), len(groups), out_dir)
    return {
        "markdown": markdown,
        "records": len(records),
        "groups": groups,
        "paths": {k: str(v) for k, v in paths.items()},
    }
