"""Result records and the Table 1 layout (docs/design.md contract 5).

Every evaluation (segmentation bundle, classification fine-tune / linear probe,
nnU-Net baseline) writes one JSON **result record** with :func:`write_result`:

.. code-block:: json

    {
      "schema": "ultradino_monai.result/v1",       # added by write_result
      "task": "segmentation",                       # | "classification_finetune" | "classification_linear_probe"
      "dataset": "fass",                            # | "jnu_ifm" | "fetal_planes"
      "split_file": "data/fass/splits/fewshot_n20_draw3.json",
      "split_kind": "fewshot_n20",                  # the split file's split.kind ("full", "fewshot_p4", ...)
      "seed": 0,                                    # training seed (int)
      "backbone": "vit_base_patch16",
      "checkpoint": "models/backbone.pt",           # null for training from scratch
      "checkpoint_sha256": "64 hex digits",         # null iff checkpoint is null
      "method": "UltraDINO",                        # row family: UltraDINO, DINOv2, iBOT, USFM, nnUNet, scratch, ...
      "budget": "paper",                            # "paper" = the paper's schedule; anything else is a
                                                    # reduced budget, e.g. "nnUNetTrainer_5epochs"
      "metrics": {"foreground_dice": 0.7424, ...},  # fractions in [0, 1]; NaN is stored as null
      "created": "2025-01-01T12:00:00+00:00"        # ISO 8601
    }

Extra keys (``draw``, ``config``, ``notes``, ...) are allowed and kept. Headline
metric names: ``foreground_dice`` (pooled foreground Dice, the ``foreground_mean``
of :mod:`ultradino_monai.evaluation.metrics`) for segmentation and ``macro_f1``
for classification; :func:`segmentation_metrics` / :func:`classification_metrics`
build the metric dicts with the project's names.

Aggregation (:func:`aggregate`): records are grouped (default by method,
backbone, task, dataset, split kind); each group gives mean, sample standard
deviation (ddof = 1) and standard error of the mean SEM = std / √n over its
runs (seeds for full data, draws for few-shot; docs/paper.md "mean over 3
seeds or 5 training splits, with standard error of the mean"). For n = 1 the
SEM is reported as 0.00 (the paper prints "± 0.00" for its single nnU-Net
runs), not NaN; ``n`` is always reported next to it. A group that mixes
budgets is refused unless ``budget`` is one of the grouping keys, so reduced
runs never get averaged with paper-budget runs; two records with the same
``(split_file, seed)`` in one group are refused as duplicates.

Table 1 (:func:`table1`, :func:`write_table1_csv`): rows = ``method (backbone)``
(plus ``[reduced budget: <budget>]`` for non-paper budgets), columns = JNU
(p=4), FASS (n=20), FASS (full), FT F1, LP F1, cells ``mean ± SEM`` on the ×100
scale with 2 decimals, ``–`` where no run exists.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from ultradino_monai.utils.files import sha256_file, write_json_atomic, write_text_atomic

logger = logging.getLogger(__name__)

__all__ = [
    "SCHEMA",
    "REQUIRED_KEYS",
    "PAPER_BUDGET",
    "TASKS",
    "DEFAULT_GROUP_BY",
    "TABLE1_COLUMNS",
    "ResultError",
    "Table1Column",
    "make_record",
    "validate_record",
    "write_result",
    "load_results",
    "mean_sem",
    "aggregate",
    "write_aggregate_csv",
    "table1_rows",
    "table1",
    "write_table1_csv",
    "segmentation_metrics",
    "classification_metrics",
]

SCHEMA = "ultradino_monai.result/v1"
REQUIRED_KEYS = (
    "task",
    "dataset",
    "split_file",
    "split_kind",
    "seed",
    "backbone",
    "checkpoint",
    "checkpoint_sha256",
    "method",
    "budget",
    "metrics",
    "created",
)
PAPER_BUDGET = "paper"
TASKS = ("segmentation", "classification_finetune", "classification_linear_probe")
DEFAULT_GROUP_BY = ("method", "backbone", "task", "dataset", "split_kind")
_STRING_KEYS = ("task", "dataset", "split_file", "split_kind", "backbone", "method", "budget", "created")
# Metrics that must be fractions; catches a record written on the x100 scale.
_FRACTION_METRICS = ("foreground_dice", "dice_with_background", "per_image_dice", "macro_f1", "accuracy")


class ResultError(ValueError):
    """A result record is malformed, or records cannot be aggregated as asked."""


@dataclass(frozen=True)
class Table1Column:
    """One Table 1 column: which records feed it and which metric it shows."""

    title: str
    task: str
    datasets: tuple[str, ...]
    split_kinds: tuple[str, ...] | None
    metric: str

    def matches(self, record: Mapping[str, Any]) -> bool:
        return (
            record["task"] == self.task
            and record["dataset"] in self.datasets
            and (self.split_kinds is None or record["split_kind"] in self.split_kinds)
        )


# docs/paper.md §4 (Table 1). JNU (p=4): few-shot 4 patients; FASS (n=20): few-shot 20
# images; FASS (full): the full split (paper header "n=942"); F1 columns: Fetal Planes DB.
TABLE1_COLUMNS = (
    Table1Column("JNU (p=4)", "segmentation", ("jnu_ifm",), ("fewshot_p4",), "foreground_dice"),
    Table1Column("FASS (n=20)", "segmentation", ("fass",), ("fewshot_n20",), "foreground_dice"),
    Table1Column("FASS (full)", "segmentation", ("fass",), ("full",), "foreground_dice"),
    Table1Column("FT F1", "classification_finetune", ("fetal_planes", "fetal_planes_db"), None, "macro_f1"),
    Table1Column("LP F1", "classification_linear_probe", ("fetal_planes", "fetal_planes_db"), None, "macro_f1"),
)


def _clean_number(value: Any) -> Any:
    """NaN / inf -> None (strict JSON); numpy / torch scalars -> Python numbers; recurse into containers."""
    if isinstance(value, Mapping):
        return {str(key): _clean_number(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean_number(item) for item in value]
    if hasattr(value, "tolist") and getattr(value, "ndim", None) is not None:
        # numpy / torch arrays and scalars
        return _clean_number(value.tolist()) if value.ndim > 0 else _clean_number(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def make_record(
    *,
    task: str,
    dataset: str,
    split_file: str | os.PathLike,
    split_kind: str,
    seed: int,
    backbone: str,
    method: str,
    metrics: Mapping[str, Any],
    checkpoint: str | os.PathLike | None = None,
    budget: str = PAPER_BUDGET,
    **extra: Any,
) -> dict[str, Any]:
    """Build a record, hashing ``checkpoint`` and stamping ``created`` (UTC now).

    ``extra`` keys (``draw=3``, ``config={...}``) are stored alongside.
    """
    record = {
        "task": task,
        "dataset": dataset,
        "split_file": str(split_file),
        "split_kind": split_kind,
        "seed": seed,
        "backbone": backbone,
        "checkpoint": None if checkpoint is None else str(checkpoint),
        "checkpoint_sha256": None if checkpoint is None else sha256_file(checkpoint),
        "method": method,
        "budget": budget,
        "metrics": _clean_number(dict(metrics)),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **extra,
    }
    validate_record(record)
    return record


def validate_record(record: Mapping[str, Any], where: str = "record") -> None:
    """Check a record against the schema (module docstring).

    Raises:
        ResultError: naming every missing key and the first wrong type / value.
    """
    if not isinstance(record, Mapping):
        raise ResultError(f"{where}: a result record must be a JSON object, got {type(record).__name__}")
    missing = [key for key in REQUIRED_KEYS if key not in record]
    if missing:
        raise ResultError(f"{where}: missing required key(s) {missing}")
    for key in _STRING_KEYS:
        if not isinstance(record[key], str) or not record[key]:
            raise ResultError(f"{where}: {key!r} must be a non-empty string, got {record[key]!r}")
    if record["task"] not in TASKS:
        raise ResultError(f"{where}: task {record['task']!r} is not one of {TASKS}")
    if isinstance(record["seed"], bool) or not isinstance(record["seed"], int):
        raise ResultError(f"{where}: 'seed' must be an integer, got {record['seed']!r}")
    checkpoint, digest = record["checkpoint"], record["checkpoint_sha256"]
    if checkpoint is None:
        if digest is not None:
            raise ResultError(f"{where}: 'checkpoint_sha256' is set but 'checkpoint' is null")
    else:
        if not isinstance(checkpoint, str) or not checkpoint:
            raise ResultError(f"{where}: 'checkpoint' must be a path string or null")
        if not (isinstance(digest, str) and len(digest) == 64 and all(c in "0123456789abcdef" for c in digest)):
            raise ResultError(f"{where}: 'checkpoint_sha256' must be 64 lower-case hex digits, got {digest!r}")
    try:
        datetime.fromisoformat(record["created"])
    except ValueError as error:
        raise ResultError(f"{where}: 'created' is not an ISO 8601 time: {record['created']!r}") from error
    metrics = record["metrics"]
    if not isinstance(metrics, Mapping) or not metrics:
        raise ResultError(f"{where}: 'metrics' must be a non-empty object")
    for name in _FRACTION_METRICS:
        value = metrics.get(name)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and not 0.0 <= value <= 1.0:
            raise ResultError(f"{where}: metric {name}={value} is not a fraction in [0, 1] (store fractions, not x100)")


def write_result(path: str | os.PathLike, record: Mapping[str, Any]) -> Path:
    """Validate ``record`` and write it atomically as JSON (NaN stored as null). Returns the path."""
    path = Path(path)
    document = _clean_number(dict(record))
    document.pop("schema", None)
    validate_record(document, where=str(path))
    write_json_atomic(path, {"schema": SCHEMA, **document})
    return path


def load_results(directory: str | os.PathLike, pattern: str = "**/*.json") -> list[dict[str, Any]]:
    """Every result record under ``directory`` (recursively), sorted by file path.

    JSON files without ``"schema": "ultradino_monai.result/v1"`` (split files,
    configs) are skipped; a file that claims the schema but breaks it raises.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise ResultError(f"results folder not found: {directory}")
    records = []
    for path in sorted(directory.glob(pattern)):
        if not path.is_file():
            continue
        try:
            document = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            logger.debug("skipping %s: not JSON", path)
            continue
        if not isinstance(document, dict) or document.get("schema") != SCHEMA:
            logger.debug("skipping %s: not a result record", path)
            continue
        validate_record(document, where=str(path))
        records.append(document)
    logger.info("loaded %d result records from %s", len(records), directory)
    return records


def mean_sem(values: Sequence[float]) -> tuple[float, float, float]:
    """``(mean, sample std (ddof=1), SEM = std / sqrt(n))``; std and SEM are 0.0 for n = 1."""
    array = np.asarray(values, dtype=np.float64)
    if array.size == 0:
        raise ResultError("mean_sem of no values")
    if array.size == 1:
        return float(array[0]), 0.0, 0.0
    std = float(array.std(ddof=1))
    return float(array.mean()), std, std / math.sqrt(array.size)


def _metric_value(record: Mapping[str, Any], metric: str) -> float | None:
    value = record["metrics"].get(metric)
    if value is None and metric in record["metrics"]:
        raise ResultError(f"{record['split_file']} (seed {record['seed']}): metric {metric!r} is null/NaN")
    if value is None:
        return None
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise ResultError(
            f"{record['split_file']} (seed {record['seed']}): metric {metric!r} is not a number: {value!r}"
        )
    return float(value)


def aggregate(
    records: Iterable[Mapping[str, Any]],
    group_by: Sequence[str] = DEFAULT_GROUP_BY,
    metric: str = "foreground_dice",
) -> list[dict[str, Any]]:
    """Mean ± SEM of ``metric`` per group of records.

    Records without ``metric`` are skipped (e.g. classification records when
    aggregating Dice).

    Returns:
        one dict per group, sorted by the group values: the ``group_by`` keys,
        ``metric``, ``n``, ``mean``, ``std``, ``sem``, ``budget`` and the sorted
        ``runs`` as ``[split_file, seed, value]``.

    Raises:
        ResultError: a group mixes budgets (and ``budget`` is not a grouping key),
            or holds two records with the same ``(split_file, seed)``.
    """
    groups: dict[tuple, list[Mapping[str, Any]]] = {}
    for record in records:
        if _metric_value(record, metric) is None:
            continue
        key = tuple(record[name] for name in group_by)
        groups.setdefault(key, []).append(record)
    rows = []
    for key in sorted(groups, key=lambda k: tuple(str(part) for part in k)):
        members = groups[key]
        label = ", ".join(f"{name}={value}" for name, value in zip(group_by, key))
        budgets = sorted({record["budget"] for record in members})
        if len(budgets) > 1:
            raise ResultError(f"group ({label}) mixes budgets {budgets}; add 'budget' to group_by or filter records")
        runs = sorted((record["split_file"], record["seed"], _metric_value(record, metric)) for record in members)
        seen = set()
        for split_file, seed, _ in runs:
            if (split_file, seed) in seen:
                raise ResultError(f"group ({label}) has two records for split {split_file} seed {seed}")
            seen.add((split_file, seed))
        mean, std, sem = mean_sem([value for _, _, value in runs])
        rows.append(
            {
                **dict(zip(group_by, key)),
                "metric": metric,
                "n": len(runs),
                "mean": mean,
                "std": std,
                "sem": sem,
                "budget": budgets[0],
                "runs": [list(run) for run in runs],
            }
        )
    return rows


def write_aggregate_csv(path: str | os.PathLike, rows: Sequence[Mapping[str, Any]]) -> Path:
    """Write :func:`aggregate` rows as CSV (numbers unscaled, full precision; ``runs`` omitted)."""
    path = Path(path)
    columns = [name for name in (rows[0] if rows else {}) if name != "runs"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(path, buffer.getvalue())
    return path


def _row_label(method: str, backbone: str, budget: str) -> str:
    label = f"{method} ({backbone})"
    return label if budget == PAPER_BUDGET else f"{label} [reduced budget: {budget}]"


def table1_rows(
    records: Iterable[Mapping[str, Any]],
    columns: Sequence[Table1Column] = TABLE1_COLUMNS,
    scale: float = 100.0,
    decimals: int = 2,
) -> tuple[list[str], list[list[str]]]:
    """Table 1 cells: ``(header, rows)`` with rows in order of first appearance of (method, backbone, budget).

    Records that fit no column are ignored (logged at INFO).
    """
    records = list(records)
    row_keys: list[tuple[str, str, str]] = []
    for record in records:
        key = (record["method"], record["backbone"], record["budget"])
        if key not in row_keys and any(column.matches(record) for column in columns):
            row_keys.append(key)
    unplaced = [record for record in records if not any(column.matches(record) for column in columns)]
    if unplaced:
        logger.info(
            "%d records fit no Table 1 column (e.g. %s / %s / %s)",
            len(unplaced),
            unplaced[0]["task"],
            unplaced[0]["dataset"],
            unplaced[0]["split_kind"],
        )
    cells: dict[tuple[tuple[str, str, str], str], str] = {}
    for column in columns:
        matching = [record for record in records if column.matches(record)]
        kinds: dict[tuple[str, str, str], set[str]] = {}
        for record in matching:
            kinds.setdefault((record["method"], record["backbone"], record["budget"]), set()).add(record["split_kind"])
        for key, found in kinds.items():
            if len(found) > 1:
                raise ResultError(
                    f"Table 1 column {column.title!r}, row {_row_label(*key)!r} mixes split kinds {sorted(found)}; "
                    "filter the records to one protocol"
                )
        for row in aggregate(matching, group_by=("method", "backbone", "budget"), metric=column.metric):
            key = (row["method"], row["backbone"], row["budget"])
            cells[(key, column.title)] = f"{row['mean'] * scale:.{decimals}f} ± {row['sem'] * scale:.{decimals}f}"
    header = ["Method (backbone)", *[column.title for column in columns]]
    rows = [[_row_label(*key), *[cells.get((key, column.title), "–") for column in columns]] for key in row_keys]
    return header, rows


def table1(records: Iterable[Mapping[str, Any]], columns: Sequence[Table1Column] = TABLE1_COLUMNS) -> str:
    """Markdown table in the paper's Table 1 layout (module docstring)."""
    header, rows = table1_rows(records, columns)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_table1_csv(
    path: str | os.PathLike, records: Iterable[Mapping[str, Any]], columns: Sequence[Table1Column] = TABLE1_COLUMNS
) -> Path:
    """The same cells as :func:`table1`, as CSV (UTF-8)."""
    path = Path(path)
    header, rows = table1_rows(records, columns)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    write_text_atomic(path, buffer.getvalue())
    return path


def segmentation_metrics(dice: Mapping[str, Any], labels: Mapping[str, int]) -> dict[str, Any]:
    """Record metrics from :func:`ultradino_monai.evaluation.metrics.pooled_dice` output.

    Args:
        dice: the dict returned by ``PooledDice.compute()``.
        labels: the datalist's ``{"background": 0, name: index, ...}``.

    Returns:
        ``foreground_dice`` (headline), ``dice_with_background``, ``per_image_dice``,
        ``dice_per_class`` ``{name: value}`` (NaN → null when written), ``num_images``.
    """
    names = {index: name for name, index in labels.items()}
    per_class = dice["per_class"]
    if len(per_class) != len(names):
        raise ResultError(f"{len(per_class)} Dice values for {len(names)} labels {labels}")
    return {
        "foreground_dice": dice["foreground_mean"],
        "dice_with_background": dice["mean_with_background"],
        "per_image_dice": dice["per_image_mean"],
        "dice_per_class": {names[index]: value for index, value in enumerate(per_class)},
        "num_images": dice["num_images"],
    }


def classification_metrics(pred: Any, target: Any, classes: Sequence[str]) -> dict[str, Any]:
    """Record metrics for classification: ``macro_f1`` (headline), ``accuracy``, ``f1_per_class``."""
    from ultradino_monai.evaluation.metrics import accuracy, macro_f1, per_class_f1

    num_classes = len(classes)
    per_class = per_class_f1(pred, target, num_classes)
    return {
        "macro_f1": macro_f1(pred, target, num_classes),
        "accuracy": accuracy(pred, target, num_classes),
        "f1_per_class": {name: float(value) for name, value in zip(classes, per_class)},
        "num_images": int(len(np.asarray(target))),
    }
