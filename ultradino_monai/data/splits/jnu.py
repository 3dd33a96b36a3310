"""JNU-IFM split files: half the patients as test, ``fewshot_p4_draw{d}``, ``full_seed{s}``.

Protocol: the package docstring.
"""

from __future__ import annotations

import os
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


def jnu_splits(
    datalist: str | os.PathLike,
    out_dir: str | os.PathLike,
    seed: int = 0,
    *,
    test_fraction: float = 0.5,
    num_draws: int = 5,
    fewshot_patients: int = 4,
    fewshot_max_images: int = 10,
    num_seeds: int = 3,
    val_fraction: float = 0.2,
    val_includes_train_patients: bool = False,
) -> list[Path]:
    """Write the JNU-IFM split files (protocol in the module docstring) and return their paths.

    Args:
        datalist: the converter's ``datalist.json``.
        out_dir: folder for the split files.
        seed: base seed for the test set, the few-shot draws and the full splits.
        test_fraction: fraction of *patients* held out (paper: "about half").
        num_draws / fewshot_patients / fewshot_max_images: paper: 5 draws of 4
            patients with at most 10 images each.
        num_seeds / val_fraction: the ``full_seed{s}`` files (80/20 of the pool).
        val_includes_train_patients: ``True`` reproduces the paper's literal "val =
            all images not used for training", putting the training patients'
            other frames into validation (not patient-grouped).
    """
    datalist, document, items = _load(datalist)
    out_dir = Path(out_dir)
    test, pool = _fixed_test(items, test_fraction, seed, salt=("jnu", "test"), by="patients")
    written: list[tuple[Path, dict[str, Any]]] = []
    common = {"dataset": document.get("dataset", "jnu_ifm"), "seed": seed}

    groups = group_by_patient(pool)
    if len(groups) <= fewshot_patients:
        raise SplitError(
            f"few-shot needs {fewshot_patients} training patients plus at least one validation patient, "
            f"but the non-test pool has {len(groups)} patients"
        )
    for draw in range(num_draws):
        order = stable_order(groups, "jnu", "fewshot", draw, seed)[:fewshot_patients]
        chosen, train_patients = _take_images(groups, order, None, fewshot_max_images, ("jnu", "fewshot", draw, seed))
        chosen_images = {item["image"] for item in chosen}
        training = _in_order(pool, chosen)
        if val_includes_train_patients:
            validation = [dict(item) for item in pool if item["image"] not in chosen_images]
            unused: list[dict[str, Any]] = []
        else:
            validation = [dict(item) for item in pool if item["patient"] not in train_patients]
            unused = [item for item in pool if item["patient"] in train_patients and item["image"] not in chosen_images]
        path = out_dir / f"fewshot_p{fewshot_patients}_draw{draw}.json"
        val_rule = (
            "all non-test images not used for training (training patients' other frames included)"
            if val_includes_train_patients
            else "all non-test images of the other patients; the training patients' other frames are unused"
        )
        meta = {
            "kind": f"fewshot_p{fewshot_patients}",
            "family": "fewshot",
            **common,
            "draw": draw,
            "protocol": f"{fewshot_patients} randomly drawn non-test patients, at most {fewshot_max_images} "
            f"random frames each; validation = {val_rule}",
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
                    patient_grouped=not val_includes_train_patients,
                ),
            )
        )

    for replicate in range(num_seeds):
        training, validation = patient_grouped_split(
            pool, (1 - val_fraction, val_fraction), seed, by="images", salt=("jnu", "full", replicate)
        )
        path = out_dir / f"full_seed{replicate}.json"
        meta = {
            "kind": "full",
            "family": "full",
            **common,
            "replicate": replicate,
            "protocol": f"fixed patient-grouped test set ({test_fraction:.0%} of patients); the rest split "
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
