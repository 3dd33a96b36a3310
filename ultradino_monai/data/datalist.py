"""Decathlon-style datalists (docs/design.md contract 1).

A datalist is a JSON file ``{"training": [...], "validation": [...], "test": [...]}``
whose items are dicts with an ``"image"`` path (relative to the JSON file), an
optional ``"label"`` (a path for segmentation, an int for classification) and a
``"patient"`` pseudonym. Classification files add a top-level ``"classes"`` list,
segmentation files a ``"labels"`` name-to-index mapping.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ultradino_monai.utils.errors import UserInputError
from ultradino_monai.utils.files import write_json_atomic

PATH_KEYS = ("image", "label")


class DatalistError(UserInputError):
    """A datalist is missing, malformed, or names files that do not exist (a ``UserInputError``, so a ``ValueError``).

    :mod:`ultradino_monai.data.validate` checks a whole datalist before a run starts.
    """


def load_datalist(
    path: str | os.PathLike,
    section: str = "training",
    check_files: bool = True,
) -> list[dict[str, Any]]:
    """Return the items of one section with paths made absolute.

    Args:
        path: the datalist JSON file.
        section: ``"training"``, ``"validation"``, ``"test"`` or any other top-level list.
        check_files: raise :class:`DatalistError` if a referenced file is missing.
    """
    path = Path(path)
    document = read_datalist(path)
    if section not in document:
        available = [k for k, v in document.items() if isinstance(v, list) and k not in ("classes",)]
        raise DatalistError(f"{path}: no section {section!r}; sections present: {available}")
    items = document[section]
    if not isinstance(items, list):
        raise DatalistError(f"{path}: section {section!r} is not a list")
    root = path.parent
    resolved = []
    for index, item in enumerate(items):
        if not isinstance(item, Mapping) or "image" not in item:
            raise DatalistError(f"{path}: {section}[{index}] has no 'image' entry")
        entry = dict(item)
        for key in PATH_KEYS:
            value = entry.get(key)
            if isinstance(value, str):
                absolute = value if os.path.isabs(value) else str(root / value)
                if check_files and not os.path.exists(absolute):
                    raise DatalistError(f"{path}: {section}[{index}] {key} file not found: {value}")
                entry[key] = absolute
        resolved.append(entry)
    return resolved


def read_datalist(path: str | os.PathLike) -> dict[str, Any]:
    """Read a datalist JSON document, with a clear error when it is missing or broken."""
    path = Path(path)
    if not path.is_file():
        raise DatalistError(f"datalist not found: {path}")
    try:
        document = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise DatalistError(f"{path}: not valid JSON ({error})") from error
    if not isinstance(document, dict):
        raise DatalistError(f"{path}: expected a JSON object at top level")
    return document


def write_datalist(
    path: str | os.PathLike,
    sections: Mapping[str, Sequence[Mapping[str, Any]]],
    **top_level: Any,
) -> None:
    """Write a datalist with paths stored relative to the file's folder.

    Absolute ``image``/``label`` paths are converted to paths relative to the datalist's
    folder; relative paths are taken as already relative to that folder.

    ``top_level`` adds keys such as ``classes=[...]`` or ``labels={...}``.
    """
    path = Path(path)
    root = path.parent.resolve()
    document: dict[str, Any] = dict(top_level)
    for name, items in sections.items():
        relative_items = []
        for item in items:
            entry = dict(item)
            for key in PATH_KEYS:
                value = entry.get(key)
                if isinstance(value, (str, os.PathLike)) and os.path.isabs(value):
                    entry[key] = Path(os.path.relpath(Path(value).resolve(), root)).as_posix()
            relative_items.append(entry)
        document[name] = relative_items
    write_json_atomic(path, document)
