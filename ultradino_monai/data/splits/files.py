"""Writing split files (format in the package docstring) and their ``index.json``."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ultradino_monai.data.datalist import PATH_KEYS, read_datalist
from ultradino_monai.data.splits.grouping import SECTIONS, UNUSED, check_patient_disjoint, datalist_items
from ultradino_monai.utils.files import sha256_file, write_json_atomic

logger = logging.getLogger(__name__)


# Top-level datalist keys that describe the dataset and travel into every split file.
_CARRIED_KEYS = ("dataset", "labels", "classes")


def _counts(items: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    return {"images": len(items), "patients": len({item["patient"] for item in items})}


def _rebase(item: Mapping[str, Any], datalist_dir: str, split_dir: str) -> dict[str, Any]:
    entry = dict(item)
    for key in PATH_KEYS:
        value = entry.get(key)
        if isinstance(value, str) and not os.path.isabs(value):
            absolute = os.path.normpath(os.path.join(datalist_dir, value))
            entry[key] = Path(os.path.relpath(absolute, split_dir)).as_posix()
    return entry


def write_split_file(
    path: str | os.PathLike,
    sections: Mapping[str, Sequence[Mapping[str, Any]]],
    *,
    datalist_path: str | os.PathLike,
    metadata: Mapping[str, Any],
    unused: Sequence[Mapping[str, Any]] = (),
    patient_grouped: bool = True,
) -> dict[str, Any]:
    """Write one split file (format in the module docstring) atomically and return its document.

    Args:
        path: the split JSON to write.
        sections: ``{"training": [...], "validation": [...], "test": [...]}`` with item
            paths relative to ``datalist_path``'s folder (as read from the datalist).
        datalist_path: the datalist the items come from (for re-basing and provenance).
        metadata: ``kind``, ``family``, ``dataset``, ``seed``, ``draw``, ``protocol``, ...
        unused: items deliberately left out of every section (only counted).
        patient_grouped: check that no patient is in two sections (always, except for
            the explicitly non-grouped JNU paper-validation variant).
    """
    path = Path(path)
    datalist_path = Path(datalist_path)
    if patient_grouped:
        check_patient_disjoint(sections, where=str(path))
    else:
        check_patient_disjoint(
            {name: items for name, items in sections.items() if name != "validation"}, where=str(path)
        )
        check_patient_disjoint({name: items for name, items in sections.items() if name != "training"}, where=str(path))
    split_dir = os.path.abspath(path.parent)
    datalist_dir = os.path.abspath(datalist_path.parent)
    document_source = read_datalist(datalist_path)

    document: dict[str, Any] = {key: document_source[key] for key in _CARRIED_KEYS if key in document_source}
    counts = {name: _counts(items) for name, items in sections.items()}
    if unused:
        counts[UNUSED] = _counts(unused)
    document["split"] = {
        **metadata,
        "source_datalist": Path(os.path.relpath(os.path.abspath(datalist_path), split_dir)).as_posix(),
        "source_sha256": sha256_file(datalist_path),
        "patient_grouped": patient_grouped,
        "counts": counts,
    }
    for name in SECTIONS:
        document[name] = [_rebase(item, datalist_dir, split_dir) for item in sections.get(name, [])]
    write_json_atomic(path, document)
    logger.info(
        "wrote %s: %s",
        path,
        ", ".join(f"{name} {c['images']} images / {c['patients']} patients" for name, c in counts.items()),
    )
    return document


def _load(datalist: str | os.PathLike) -> tuple[Path, dict[str, Any], list[dict[str, Any]]]:
    datalist = Path(datalist)
    document = read_datalist(datalist)
    return datalist, document, datalist_items(document, str(datalist))


def _write_index(out_dir: Path, dataset: str, seed: int, written: list[tuple[Path, dict[str, Any]]]) -> Path:
    index = {
        "dataset": dataset,
        "seed": seed,
        "files": [
            {
                "file": path.name,
                "kind": doc["split"]["kind"],
                "family": doc["split"]["family"],
                **{key: doc["split"][key] for key in ("draw", "replicate") if key in doc["split"]},
                "counts": doc["split"]["counts"],
            }
            for path, doc in written
        ],
    }
    index_path = out_dir / "index.json"
    write_json_atomic(index_path, index)
    return index_path
