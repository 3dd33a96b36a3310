"""Patient-grouped, seeded, deterministic split files (DESIGN contract 1).

Every training / validation / test partition used anywhere in the project (the
segmentation and classification bundles, the linear probe, the nnU-Net
baseline) is a *split file* written by this module, never made by hand:

.. code-block:: json

    {
      "labels": {"background": 0, ...},            # copied from the datalist ("classes" too)
      "split": {                                    # provenance, no timestamps (bytes are reproducible)
        "kind": "fewshot_n20",                      # the name results records use as "split_kind"
        "family": "fewshot",                        # full | fewshot | label_efficiency
        "dataset": "fass", "seed": 0, "draw": 3,
        "source_datalist": "../datalist.json", "source_sha256": "...",
        "patient_grouped": true, "protocol": "...", # one sentence saying how it was drawn
        "counts": {"training": {"images": 20, "patients": 20}, "validation": {...},
                   "test": {...}, "unused": {...}}
      },
      "training": [...], "validation": [...], "test": [...]
    }

Items are copies of the datalist items; their relative ``image`` / ``label``
paths are re-based so they resolve from the split file's own folder, and the
file can be handed to :func:`ultradino_monai.data.datalist.load_datalist` as is.

Randomness. Patients (and images inside a patient) are put in a random order by
sorting on ``sha256(salt, seed, name)``, not by a PRNG: this order is identical
on every platform and every Python / NumPy version (NumPy's ``Generator``
streams are not guaranteed stable across releases), so a published split can
always be re-derived from ``(datalist, seed)``. The same seed gives
byte-identical files.

Grouping. No patient ever appears in two of training / validation / test
(checked before a file is written). Where a protocol takes only *some* images of
a training patient (few-shot), the patient's remaining images go to no section
and are counted as ``"unused"``; they are never moved into validation.

Protocols (paper: PAPER_RESULTS.md "Evaluation protocol"; reference
datasets_and_nnunet.md §1.1/§1.2; ultradino_and_dinov2_recipe.md §1.5):

* FASS (:func:`fass_splits`): one fixed test set of 20 % of the *images*,
  patient-grouped, shared by every file.

  - ``full_seed{s}.json``: the rest split 80/20 (images, patient-grouped) into
    training / validation, ``num_seeds`` = 3 seeds (paper: mean over 3 seeds).
  - ``fewshot_n20_draw{d}.json``: exactly n = 20 training images, 5 draws. The
    paper draws "n = 20 images"; a random draw of 20 of ~1,270 images almost
    always hits 20 different patients, so by default one image per patient is
    taken from 20 randomly ordered patients (``fewshot_max_per_patient=1``).
    Validation = every non-test image of the patients not used for training
    (the paper's "rest val", minus the training patients' other images).
  - ``label_efficiency_p{10,25,50}_seed{s}.json``: 10/25/50 % of the training
    *patients* of ``full_seed{s}`` (at least one), same validation and test as
    ``full_seed{s}``; nested (p10 ⊂ p25 ⊂ p50) for a given seed. 100 % is
    ``full_seed{s}``.

  The paper's Table 1 header says FASS full has n = 942 training images; 80/20
  of the remaining 80 % gives about 1,016. The UltraDINO split lists are not
  published (§1.1 "Splits"), so this cannot be matched exactly.
* JNU-IFM (:func:`jnu_splits`): about half of the *patients* held out as test.

  - ``fewshot_p4_draw{d}.json``: 4 patients, at most 10 images each (a random
    subset of that patient's frames), 5 draws. Validation = every non-test image
    of the other patients. The paper says "val = all images not used for
    training"; taken literally that puts the training patients' other frames
    (near-duplicates of the training frames) into validation and breaks the
    patient-grouping contract, so it is only available as the explicit switch
    ``val_includes_train_patients=True`` (metadata then says
    ``"patient_grouped": false``).
  - ``full_seed{s}.json``: the non-test pool split 80/20 (images, patient-grouped).
* Any datalist with a fixed ``"test"`` section (e.g. FETAL_PLANES_DB's official
  test split, :func:`holdout_splits`): the other items split 80/20 into
  training / validation by patient, ``full_seed{s}.json``.

Every call also writes ``index.json`` listing the files with their counts.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ultradino_monai.data.datalist import PATH_KEYS, DatalistError, read_datalist, write_json_atomic
from ultradino_monai.utils.logs import setup_logging

logger = logging.getLogger(__name__)

__all__ = [
    "SECTIONS",
    "SplitError",
    "stable_order",
    "datalist_items",
    "group_by_patient",
    "patient_grouped_split",
    "check_patient_disjoint",
    "write_split_file",
    "fass_splits",
    "jnu_splits",
    "holdout_splits",
    "main",
]

SECTIONS = ("training", "validation", "test")
# Items that are in no section of a split (few-shot leftovers of training patients).
UNUSED = "unused"
# Top-level datalist keys that describe the dataset and travel into every split file.
_CARRIED_KEYS = ("dataset", "labels", "classes")


class SplitError(DatalistError):
    """A split cannot be made as asked (too few patients / images, bad fractions, leaking patients)."""


def stable_order(keys: Iterable[str], *salt: Any) -> list[str]:
    """Shuffle ``keys`` reproducibly: sort by ``sha256("salt|...|key")`` (ties by the key itself).

    The order depends only on the salt values (seed, protocol name, draw) and the
    key strings, so it is the same on every machine and library version.
    """
    prefix = "|".join(str(part) for part in salt)

    def digest(key: str) -> str:
        return hashlib.sha256(f"{prefix}|{key}".encode("utf-8")).hexdigest()

    return sorted(keys, key=lambda key: (digest(key), key))


def datalist_items(document: Mapping[str, Any], source: str = "datalist") -> list[dict[str, Any]]:
    """All items of a datalist: the union of its ``training`` / ``validation`` / ``test`` lists.

    Raises:
        SplitError: an item lacks ``image`` or a non-empty string ``patient``, or the
            same image appears twice.
    """
    items: list[dict[str, Any]] = []
    seen: dict[str, str] = {}
    for section in SECTIONS:
        for index, item in enumerate(document.get(section) or []):
            where = f"{source}: {section}[{index}]"
            if not isinstance(item, Mapping) or not isinstance(item.get("image"), str):
                raise SplitError(f"{where} has no 'image' path")
            patient = item.get("patient")
            if not isinstance(patient, str) or not patient:
                raise SplitError(f"{where} ({item['image']}) has no 'patient' id; splits must be patient-grouped")
            if item["image"] in seen:
                raise SplitError(f"{where}: image {item['image']} is listed twice (also in {seen[item['image']]})")
            seen[item["image"]] = section
            items.append(dict(item))
    if not items:
        raise SplitError(f"{source}: no items in any of the sections {SECTIONS}")
    return items


def group_by_patient(items: Sequence[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    """``{patient: [items in input order]}``, patients in first-appearance order."""
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for item in items:
        groups.setdefault(item["patient"], []).append(item)
    return groups


def _round_half_up(value: float) -> int:
    return int(math.floor(value + 0.5))


def patient_grouped_split(
    items: Sequence[Mapping[str, Any]],
    fractions: Sequence[float],
    seed: int,
    *,
    by: str = "images",
    salt: Sequence[Any] = (),
) -> list[list[dict[str, Any]]]:
    """Split items into ``len(fractions)`` patient-disjoint parts.

    Patients are put in the :func:`stable_order` for ``(salt, seed)`` and cut into
    consecutive runs whose sizes come closest to the requested fractions.

    Args:
        items: dicts with a ``"patient"`` key.
        fractions: non-negative, summing to 1, e.g. ``(0.8, 0.2)``.
        seed: any integer; the same seed (and salt) gives the same split.
        by: ``"images"``: fractions of the number of images (whole patients are
            moved, so sizes are approximate); ``"patients"``: fractions of the
            number of patients.
        salt: extra values mixed into the order (protocol name, draw index) so that
            different protocols drawn with one seed are independent.

    Returns:
        one list per fraction; items keep their input order inside each part.
        Every part with a positive fraction gets at least one patient.

    Raises:
        SplitError: bad fractions, or fewer patients than parts with a positive fraction.
    """
    if by not in ("images", "patients"):
        raise SplitError(f"by must be 'images' or 'patients', got {by!r}")
    if not fractions or any(f < 0 for f in fractions) or not math.isclose(sum(fractions), 1.0, abs_tol=1e-6):
        raise SplitError(f"fractions must be non-negative and sum to 1, got {list(fractions)}")
    groups = group_by_patient(items)
    needed = sum(1 for f in fractions if f > 0)
    if len(groups) < needed:
        raise SplitError(f"cannot split {len(groups)} patient(s) into {needed} non-empty patient-disjoint parts")
    order = stable_order(groups, *salt, seed)
    weights = [len(groups[p]) if by == "images" else 1 for p in order]
    cumulative = [0]
    for weight in weights:
        cumulative.append(cumulative[-1] + weight)
    total = cumulative[-1]

    boundaries = [0]
    running = 0.0
    for index, fraction in enumerate(fractions[:-1]):
        running += fraction
        low = boundaries[-1] + (1 if fraction > 0 else 0)
        # leave at least one patient for every later part with a positive fraction
        high = len(order) - sum(1 for f in fractions[index + 1 :] if f > 0)
        target = running * total
        best = min(range(low, high + 1), key=lambda j: (abs(cumulative[j] - target), j))
        boundaries.append(best)
    boundaries.append(len(order))

    position = {id(item): n for n, item in enumerate(items)}
    parts: list[list[dict[str, Any]]] = []
    for start, stop in zip(boundaries[:-1], boundaries[1:]):
        members = [item for patient in order[start:stop] for item in groups[patient]]
        members.sort(key=lambda item: position[id(item)])
        parts.append([dict(item) for item in members])
    return parts


def check_patient_disjoint(sections: Mapping[str, Sequence[Mapping[str, Any]]], where: str = "split") -> None:
    """Raise :class:`SplitError` if one patient appears in two sections."""
    owner: dict[str, str] = {}
    for name, items in sections.items():
        for item in items:
            patient = item["patient"]
            if owner.setdefault(patient, name) != name:
                raise SplitError(f"{where}: patient {patient} is in both {owner[patient]!r} and {name!r}")


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


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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
        check_patient_disjoint(
            {name: items for name, items in sections.items() if name != "training"}, where=str(path)
        )
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
        "source_sha256": _sha256_file(datalist_path),
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
            {"file": path.name, "kind": doc["split"]["kind"], "family": doc["split"]["family"],
             **{key: doc["split"][key] for key in ("draw", "replicate") if key in doc["split"]},
             "counts": doc["split"]["counts"]}
            for path, doc in written
        ],
    }
    index_path = out_dir / "index.json"
    write_json_atomic(index_path, index)
    return index_path


def _take_images(
    groups: Mapping[str, Sequence[Mapping[str, Any]]],
    patient_order: Sequence[str],
    total: int | None,
    per_patient: int | None,
    salt: Sequence[Any],
) -> tuple[list[Mapping[str, Any]], set[str]]:
    """Walk patients in order, taking up to ``per_patient`` randomly ordered images each, until ``total``."""
    chosen: list[Mapping[str, Any]] = []
    used_patients: set[str] = set()
    for patient in patient_order:
        if total is not None and len(chosen) >= total:
            break
        by_image = {item["image"]: item for item in groups[patient]}
        picks = stable_order(by_image, *salt, patient)
        if per_patient is not None:
            picks = picks[:per_patient]
        if total is not None:
            picks = picks[: total - len(chosen)]
        chosen.extend(by_image[name] for name in picks)
        used_patients.add(patient)
    return chosen, used_patients


def _in_order(items: Sequence[Mapping[str, Any]], selected: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    wanted = {item["image"] for item in selected}
    return [dict(item) for item in items if item["image"] in wanted]


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
        meta = {"kind": "full", "family": "full", **common, "replicate": replicate,
                "protocol": f"fixed {test_fraction:.0%} patient-grouped test set; the rest split "
                            f"{1 - val_fraction:.0%}/{val_fraction:.0%} train/val by patient"}
        written.append((path, write_split_file(
            path, {"training": training, "validation": validation, "test": test},
            datalist_path=datalist, metadata=meta)))

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
        meta = {"kind": f"fewshot_n{fewshot_images}", "family": "fewshot", **common, "draw": draw,
                "protocol": f"{fewshot_images} training images from randomly ordered non-test patients, at most "
                            f"{fewshot_max_per_patient or 'all'} per patient; validation = all non-test images "
                            "of the other patients; the training patients' other images are unused"}
        written.append((path, write_split_file(
            path, {"training": training, "validation": validation, "test": test},
            datalist_path=datalist, metadata=meta, unused=unused)))

    for replicate, (full_training, validation) in enumerate(full_splits):
        train_groups = group_by_patient(full_training)
        order = stable_order(train_groups, "fass", "label_efficiency", replicate, seed)
        for percent in sorted(label_percentages):
            if not 0 < percent < 100:
                raise SplitError(f"label percentages must be in (0, 100), got {percent}")
            keep = set(order[: max(1, _round_half_up(percent / 100 * len(order)))])
            training = [dict(item) for item in full_training if item["patient"] in keep]
            path = out_dir / f"label_efficiency_p{percent}_seed{replicate}.json"
            meta = {"kind": f"label_efficiency_p{percent}", "family": "label_efficiency", **common,
                    "replicate": replicate, "percent": percent,
                    "training_image_fraction": round(len(training) / len(full_training), 6),
                    "protocol": f"{percent}% of the training patients of full_seed{replicate} (nested across "
                                "percentages), same validation and test"}
            written.append((path, write_split_file(
                path, {"training": training, "validation": validation, "test": test},
                datalist_path=datalist, metadata=meta)))

    paths = [path for path, _ in written]
    paths.append(_write_index(out_dir, common["dataset"], seed, written))
    return paths


def _fixed_test(
    items: Sequence[Mapping[str, Any]], test_fraction: float, seed: int, salt: Sequence[Any], by: str
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    if not 0 < test_fraction < 1:
        raise SplitError(f"test_fraction must be in (0, 1), got {test_fraction}")
    pool, test = patient_grouped_split(items, (1 - test_fraction, test_fraction), seed, by=by, salt=salt)
    return test, pool


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
        chosen, train_patients = _take_images(
            groups, order, None, fewshot_max_images, ("jnu", "fewshot", draw, seed)
        )
        chosen_images = {item["image"] for item in chosen}
        training = _in_order(pool, chosen)
        if val_includes_train_patients:
            validation = [dict(item) for item in pool if item["image"] not in chosen_images]
            unused: list[dict[str, Any]] = []
        else:
            validation = [dict(item) for item in pool if item["patient"] not in train_patients]
            unused = [item for item in pool if item["patient"] in train_patients and item["image"] not in chosen_images]
        path = out_dir / f"fewshot_p{fewshot_patients}_draw{draw}.json"
        val_rule = ("all non-test images not used for training (training patients' other frames included)"
                    if val_includes_train_patients else
                    "all non-test images of the other patients; the training patients' other frames are unused")
        meta = {"kind": f"fewshot_p{fewshot_patients}", "family": "fewshot", **common, "draw": draw,
                "protocol": f"{fewshot_patients} randomly drawn non-test patients, at most {fewshot_max_images} "
                            f"random frames each; validation = {val_rule}"}
        written.append((path, write_split_file(
            path, {"training": training, "validation": validation, "test": test},
            datalist_path=datalist, metadata=meta, unused=unused,
            patient_grouped=not val_includes_train_patients)))

    for replicate in range(num_seeds):
        training, validation = patient_grouped_split(
            pool, (1 - val_fraction, val_fraction), seed, by="images", salt=("jnu", "full", replicate)
        )
        path = out_dir / f"full_seed{replicate}.json"
        meta = {"kind": "full", "family": "full", **common, "replicate": replicate,
                "protocol": f"fixed patient-grouped test set ({test_fraction:.0%} of patients); the rest split "
                            f"{1 - val_fraction:.0%}/{val_fraction:.0%} train/val by patient"}
        written.append((path, write_split_file(
            path, {"training": training, "validation": validation, "test": test},
            datalist_path=datalist, metadata=meta)))

    paths = [path for path, _ in written]
    paths.append(_write_index(out_dir, common["dataset"], seed, written))
    return paths


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
    80/20 train/val", PAPER_RESULTS.md).

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
        meta = {"kind": "full", "family": "full", **common, "replicate": replicate,
                "protocol": f"the datalist's test section as test; the rest split "
                            f"{1 - val_fraction:.0%}/{val_fraction:.0%} train/val by patient"}
        written.append((path, write_split_file(
            path, {"training": training, "validation": validation, "test": test},
            datalist_path=datalist, metadata=meta)))
    paths = [path for path, _ in written]
    paths.append(_write_index(out_dir, common["dataset"], seed, written))
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m ultradino_monai.data.splits {fass,jnu,holdout} DATALIST OUT_DIR [--seed N]``."""
    parser = argparse.ArgumentParser(
        prog="python -m ultradino_monai.data.splits",
        description="Write patient-grouped, seeded split files for a datalist.",
    )
    parser.add_argument("protocol", choices=("fass", "jnu", "holdout"))
    parser.add_argument("datalist", type=Path)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--jnu-val-includes-train-patients",
        action="store_true",
        help="JNU few-shot: put the training patients' unused frames into validation (the paper's literal "
        "wording; breaks patient grouping of train/val)",
    )
    args = parser.parse_args(argv)
    setup_logging()
    try:
        if args.protocol == "fass":
            paths = fass_splits(args.datalist, args.out_dir, args.seed)
        elif args.protocol == "jnu":
            paths = jnu_splits(
                args.datalist, args.out_dir, args.seed,
                val_includes_train_patients=args.jnu_val_includes_train_patients,
            )
        else:
            paths = holdout_splits(args.datalist, args.out_dir, args.seed)
    except DatalistError as error:
        parser.exit(2, f"error: {error}\n")
    print(f"wrote {len(paths)} files to {args.out_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
