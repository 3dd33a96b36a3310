"""The checks a bundle runs first, before it builds a network or writes a file (docs/bundles.md, "Errors").

Every bundle's ``run`` list starts with :func:`check_run_inputs`: the numbers that must be counts, the files
that must exist and the datalist sections the run reads (:func:`ultradino_monai.data.validate.check_datalist`).
A problem raises a :class:`~ultradino_monai.utils.errors.UserInputError`, which the bundle exit hook turns
into one ``error:`` line and exit status 2, and nothing (``model.json``, run folders, TensorBoard logs) has
been written yet.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from ultradino_monai.data.validate import check_datalist
from ultradino_monai.engines.config_values import check_count, optional_int, optional_path
from ultradino_monai.utils.errors import MissingInputError, UserInputError

__all__ = ["check_run_inputs", "optional_int"]


def check_run_inputs(
    datalist: str | os.PathLike | None,
    task: str,
    sections: Sequence[str],
    *,
    counts: Mapping[str, Any] | None = None,
    non_negative: Mapping[str, Any] | None = None,
    files: Mapping[str, Any] | None = None,
    less_than: Mapping[str, tuple[Any, str, Any]] | None = None,
    at_most: Mapping[str, tuple[Any, str, Any]] | None = None,
    labels: Mapping[str, int] | None = None,
    ignore_index: Any = None,
    ignore_sections: Sequence[str] | None = None,
    decode: str = "header",
) -> str | None:
    """Check a run's arguments and its datalist; return the datalist path.

    Args:
        datalist: the datalist / split file the run reads (``None``: no datalist, e.g. an optional monitor set).
        task: ``"images"``, ``"classification"`` or ``"segmentation"`` (:func:`check_datalist`).
        sections: the sections the run reads.
        counts: option name -> value that must be an integer >= 1 (batch size, epochs, iterations).
        non_negative: option name -> value that must be an integer >= 0 (warmup, workers).
        files: option name -> path that must be an existing file (a model, a checkpoint); ``None`` / ``"none"``
            values are skipped (switched off).
        less_than, at_most: option name -> ``(value, other option's name, its value)``: the value must be below
            (at most) the other, e.g. ``{"warmup_iterations": (20, "max_iterations", 200)}``.
        labels, ignore_index, ignore_sections, decode: as in :func:`check_datalist` (``ignore_index`` may come
            from the command line as text; ``none`` switches it off).
    """
    for name, value in (counts or {}).items():
        check_count(name, value, 1)
    for name, value in (non_negative or {}).items():
        check_count(name, value, 0)
    for name, (value, limit_name, limit) in (less_than or {}).items():
        if not value < limit:
            raise UserInputError(f"--{name} ({value}) must be less than --{limit_name} ({limit})")
    for name, (value, limit_name, limit) in (at_most or {}).items():
        if not value <= limit:
            raise UserInputError(f"--{name} ({value}) must not exceed --{limit_name} ({limit})")
    for name, value in (files or {}).items():
        path = optional_path(value)
        if path is not None and not os.path.isfile(path):
            raise MissingInputError(f"--{name}: file not found: {path}")
    if datalist is None:
        return None
    check_datalist(
        datalist,
        list(sections),
        task,
        labels=labels,
        ignore_index=optional_int("ignore_index", ignore_index),
        ignore_sections=ignore_sections,
        decode=str(decode),
    )
    return str(datalist)
