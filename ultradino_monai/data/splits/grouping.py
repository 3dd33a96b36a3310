"""Patient grouping shared by every split protocol: the datalist's items, the stable order, patient-disjoint cuts.

Randomness and grouping rules: the package docstring.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ultradino_monai.data.datalist import DatalistError

SECTIONS = ("training", "validation", "test")
# Items that are in no section of a split (few-shot leftovers of training patients).
UNUSED = "unused"


class SplitError(DatalistError):
    """A split cannot be made as asked (too few patients / images, bad fractions, leaking patients)."""


def stable_order(keys: Iterable[str], *salt: Any) -> list[str]:
    """Shuffle ``keys`` reproducibly: sort by ``sha256("salt|...|key")`` (ties by the key itself).

    The order depends only on the salt values (seed, protocol name, draw) and the
    key strings, so it is the same on every machine and library version.
    """
    prefix = "|".join(str(part) for part in salt)

    def digest(key: str) -> str:
        return hashlib.sha256(f"{prefix}|{key}".encode()).hexdigest()

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


def _fixed_test(
    items: Sequence[Mapping[str, Any]], test_fraction: float, seed: int, salt: Sequence[Any], by: str
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    if not 0 < test_fraction < 1:
        raise SplitError(f"test_fraction must be in (0, 1), got {test_fraction}")
    pool, test = patient_grouped_split(items, (1 - test_fraction, test_fraction), seed, by=by, salt=salt)
    return test, pool
