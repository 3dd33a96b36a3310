"""FASS split files: fixed test set, ``full_seed{s}``, ``fewshot_n20_draw{d}``, ``label_efficiency_p{p}_seed{s}``.

Protocol: the package docstring.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ultradino_monai.data.splits.files import _load, _write_index, write_split_file
from ultradino_monai.data.splits.grouping import (
    SplitError,
    _fixed_test,
    _in_order,
    _take_images,
    group_by_patient,
    patient_grouped_split,
    stable_order,
)


def _round_half_up(value: float) -> int:
    return int(math.floor(value + 0.5))


def fass_splits(
    datalist: str | os.PathLike,
    out_dir: str | os.PathLike,
    seed: int = 0,
    *,
    test_fraction: float = 0.2,
    val_fraction: float = 0.2,
    num_seeds: int = 3,
    num_draws: int = 5,
    fewshot_images: int = 20,
    fewshot_max_per_patient: int | None = 1,
    label_percentages: Sequence[int] = (10, 25, 50),
) -> list[Path]:
    """Write the FASS split files (protocol in the module docstring) and return their paths.

    Args:
        datalist: the converter's ``datalist.json`` (all images, with ``patient``).
        out_dir: folder for the split files (the converters use ``<datalist dir>/splits``).
        seed: the base seed; the test set, every ``full_seed{s}`` (s = 0..num_seeds-1),
            few-shot draw and label-efficiency subset derive from it.
        test_fraction / val_fraction: paper: 20 % test, 80/20 train/val of the rest.
        num_seeds: paper: 3 seeds for full data.
        num_draws / fewshot_images: paper: 5 draws of n = 20 images.
        fewshot_max_per_patient: images taken per training patient in the few-shot
            draws (``None``: all of a patient's images until ``fewshot_images``).
        label_percentages: paper Fig. 1b: 10/25/50 % (+ 100 % = full).
    """
    datalist, document, items = _load(datalist)
    out_dir = Path(out_dir)
    test, pool = _fixed_test(items, test_fraction, seed, salt=("fass", "test"), by="images")
    written: list[tuple[Path, dict[str, Any]]] = []
    common = {"dataset": document.get("dataset", "fass"), "seed": seed}

    full_splits = []
    for replicate in range(num_seeds):
        training, validation = patient_grouped_split(
            pool, (1 - val_fraction, val_fraction), seed, by="images", salt=("fass", "full", replicate)
        )
        full_splits.append((training, validation))
        path = out_dir / f"full_seed{replicate}.json"
        meta = {
            "kind": "full",
            "family": "full",
            **common,
            "replicate": replicate,
            "protocol": f"fixed {test_fraction:.0%} patient-grouped test set; the rest split "
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

    groups = group_by_patient(pool)
    reachable = sum(min(len(g), fewshot_max_per_patient or len(g)) for g in groups.values())
    if reachable < fewshot_images:
        raise SplitError(
            f"few-shot needs {fewshot_images} training images but the non-test pool only offers {reachable} "
            f"({len(groups)} patients, at most {fewshot_max_per_patient} each)"
        )
    for draw in range(num_draws):
        order = stable_order(groups, "fass", "fewshot", draw, seed)
        chosen, train_patients = _take_images(
            groups, order, fewshot_images, fewshot_max_per_patient, ("fass", "fewshot", draw, seed)
        )
        chosen_images = {item["image"] for item in chosen}
        training = _in_order(pool, chosen)
        validation = [dict(item) for item in pool if item["patient"] not in train_patients]
        unused = [item for item in pool if item["patient"] in train_patients and item["image"] not in chosen_images]
        if not validation:
            raise SplitError("few-shot draw left no validation patients; the pool is too small")
        path = out_dir / f"fewshot_n{fewshot_images}_draw{draw}.json"
        meta = {
            "kind": f"fewshot_n{fewshot_images}",
            "family": "fewshot",
            **common,
            "draw": draw,
            "protocol": f"{fewshot_images} training images from randomly ordered non-test patients, at most "
            f"{fewshot_max_per_patient or 'all'} per patient; validation = all non-test images "
            "of the other patients; the training patients' other images are unused",
        }
        written.append(
            (
                path,
                write_split_file(
                    path,
                    {"training": training, "validation": validation, "test": test},
                    datalist_path=datalist,
                    metadata=meta,
                    unused=unused,
                ),
            )
        )

    for replicate, (full_training, validation) in enumerate(full_splits):
        train_groups = group_by_patient(full_training)
        order = stable_order(train_groups, "fass", "label_efficiency", replicate, seed)
        for percent in sorted(label_percentages):
            if not 0 < percent < 100:
                raise SplitError(f"label percentages must be in (0, 100), got {percent}")
            keep = set(order[: max(1, _round_half_up(percent / 100 * len(order)))])
            training = [dict(item) for item in full_training if item["patient"] in keep]
            path = out_dir / f"label_efficiency_p{percent}_seed{replicate}.json"
            meta = {
                "kind": f"label_efficiency_p{percent}",
                "family": "label_efficiency",
                **common,
                "replicate": replicate,
                "percent": percent,
                "training_image_fraction": round(len(training) / len(full_training), 6),
                "protocol": f"{percent}% of the training patients of full_seed{replicate} (nested across "
                "percentages), same validation and test",
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
