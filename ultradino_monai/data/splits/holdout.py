"""Split files for a datalist with a fixed (official) test section, e.g. FETAL_PLANES_DB."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ultradino_monai.data.splits.files import _load, _write_index, write_split_file
from ultradino_monai.data.splits.grouping import SplitError, check_patient_disjoint, patient_grouped_split


def holdout_splits(
    datalist: str | os.PathLike,
    out_dir: str | os.PathLike,
    seed: int = 0,
    *,
    val_fraction: float = 0.2,
    num_seeds: int = 3,
) -> list[Path]:
    """Split files for a datalist with a fixed (official) ``"test"`` section.

    The items outside ``"test"`` are split ``1 - val_fraction`` / ``val_fraction``
    into training / validation by patient (images-weighted), one file per seed
    ``full_seed{s}.json``. Used for FETAL_PLANES_DB (provided test split; "rest
    80/20 train/val", docs/paper.md).

    Raises:
        SplitError: the datalist has no ``"test"`` items, or a test patient also
            appears outside the test section.
    """
    datalist, document, items = _load(datalist)
    out_dir = Path(out_dir)
    test_images = {item["image"] for item in document.get("test") or []}
    if not test_images:
        raise SplitError(f"{datalist}: holdout splits need a non-empty 'test' section")
    test = [item for item in items if item["image"] in test_images]
    pool = [item for item in items if item["image"] not in test_images]
    check_patient_disjoint({"test": test, "pool": pool}, where=f"{datalist} (official test section)")
    common = {"dataset": document.get("dataset", Path(datalist).parent.name), "seed": seed}
    written: list[tuple[Path, dict[str, Any]]] = []
    for replicate in range(num_seeds):
        training, validation = patient_grouped_split(
            pool, (1 - val_fraction, val_fraction), seed, by="images", salt=("holdout", "full", replicate)
        )
        path = out_dir / f"full_seed{replicate}.json"
        meta = {
            "kind": "full",
            "family": "full",
            **common,
            "replicate": replicate,
            "protocol": f"the datalist's test section as test; the rest split "
            f"{1 - val_fraction:.0%}/{val_fraction:.0%} train/val by patient",
        }
        written.append(
            (
                path,
                write_split_file(
                    path,
                    {"training": training, "validation": validation, "test": test},
                    datalist_path=datalist,
                    metadata=meta,
                ),
            )
        )
    paths = [path for path, _ in written]
    paths.append(_write_index(out_dir, common["dataset"], seed, written))
    return paths
