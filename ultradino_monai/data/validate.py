"""Check a whole datalist before a run starts: keys, types, files, sizes, label values.

One check, shared by the bundles (segmentation, classification, linear probe, pretraining) and the experiment
runner, so a bad entry stops a run in seconds with a message naming the datalist, the section, the entry and
the file, instead of an ``IndexError`` an hour in or, worse, a silently wrong result::

    demo_data/fass/datalist.json: training[3] label value 255 not in labels {0..4} (file masks/x.png);
    pass --ignore_index 255 if it marks ignored pixels

What :func:`check_datalist` checks, per task:

* every task: the file is a JSON object; each listed section exists and is a non-empty list (unless
  ``allow_empty``); each entry is an object with an ``image`` path string;
* ``"classification"``: a top-level ``classes`` list of distinct names; each entry has a ``label`` that is an
  integer class index in ``0..len(classes)-1`` (``2.7``, ``true`` and ``"2"`` are errors) or a class name, which
  is mapped to its index (an unknown name is an error naming the classes);
* ``"segmentation"``: a top-level ``labels`` mapping name -> index with indices exactly ``0..K-1``; each entry
  has a ``label`` path string; image and label map have the same size; the label map holds only values of
  ``labels`` (or ``ignore_index`` where the caller allows one; by default none, so 255 is an error).

Files, by ``decode`` level: ``"none"`` no file access (keys, types, class indices only); ``"exists"`` every file
is a regular, non-empty file (``os.stat``); ``"header"`` (default) also opens every image with Pillow, which
reads the header only (format and size), so a zero-byte or non-image file fails here; ``"full"`` decodes every
image and label map completely (as the training loader does, :class:`LoadUltrasoundImage`).

Scale (docs/bundles.md, "Input checks", has the measured speeds; ``benchmarks/datalist_check.py`` measures them):
the key/type checks and ``os.stat`` run on every entry. Header reads (about 30 µs a file) run on every file up
to ``header_limit`` files per section and on an evenly spaced sample of ``header_limit`` beyond (``stat`` still
covers all); label-value checks read pixels (about 1 ms a label map) and run on every label map up to
``label_value_limit`` per section and on an evenly spaced sample beyond. ``decode="full"`` lifts both limits. A
value the sample missed still stops training (the losses reject out-of-range class ids) and evaluation
(:class:`~ultradino_monai.evaluation.metrics.PooledDice` rejects values outside ``0..K-1`` and ``ignore_index``).
"""

from __future__ import annotations

import logging
import os
import stat
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ultradino_monai.data.datalist import DatalistError, read_datalist

logger = logging.getLogger(__name__)

__all__ = ["check_datalist", "task_of", "DECODE_LEVELS", "TASKS"]

DECODE_LEVELS = ("none", "exists", "header", "full")
TASKS = ("images", "classification", "segmentation", "auto")
_PIL_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp", ".pgm", ".ppm")


def task_of(document: Mapping[str, Any]) -> str:
    """``"classification"`` (a top-level ``classes``), ``"segmentation"`` (``labels``) or ``"images"``."""
    if "classes" in document:
        return "classification"
    if "labels" in document:
        return "segmentation"
    return "images"


def check_datalist(
    path: str | os.PathLike,
    sections: Sequence[str] = ("training",),
    task: str = "auto",
    *,
    labels: Mapping[str, int] | None = None,
    ignore_index: int | None = None,
    ignore_sections: Sequence[str] | None = None,
    decode: str = "header",
    header_limit: int | None = 100_000,
    label_value_limit: int | None = 5_000,
    allow_empty: bool = False,
) -> dict[str, list[dict[str, Any]]]:
    """Check ``sections`` of a datalist and return their entries, paths absolute, class names mapped to indices.

    Args:
        path: the datalist (or split file) JSON.
        sections: the sections the run reads.
        task: ``"images"`` (pretraining: ``image`` only), ``"classification"``, ``"segmentation"`` or ``"auto"``
            (from the top-level keys, :func:`task_of`).
        labels: segmentation: name -> index mapping to check against (default: the file's own ``labels``), e.g.
            the trained model's labels when evaluating.
        ignore_index: segmentation: a label value that marks pixels to leave out (allowed in
            ``ignore_sections`` only). ``None`` (default): every value must be a class index.
        ignore_sections: the sections where ``ignore_index`` is allowed (``None``: all of ``sections``). The
            segmentation bundle allows it in the evaluated sections, not in training (the losses need every
            pixel labelled).
        decode: ``"none"``, ``"exists"``, ``"header"`` (default) or ``"full"`` (see the module docstring).
        header_limit: header reads per section before sampling (``None``: no limit).
        label_value_limit: label maps whose pixel values are read per section before sampling (``None``: all).
        allow_empty: accept empty sections.

    Returns:
        ``{section: [entry, ...]}``: copies of the entries with ``image`` / ``label`` paths absolute (relative
        paths are relative to the datalist's folder) and classification labels as ``int``.

    Raises:
        DatalistError: the first problem found, naming the file, the section, the entry index and the file.
    """
    if decode not in DECODE_LEVELS:
        raise ValueError(f"decode must be one of {DECODE_LEVELS}, got {decode!r}")
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    start = time.perf_counter()
    name = str(path)
    document = read_datalist(path)
    task = task_of(document) if task == "auto" else task
    root = os.path.dirname(os.path.abspath(name))
    class_index = _class_index(name, document) if task == "classification" else None
    label_values = _label_values(name, document, labels) if task == "segmentation" else None
    checked: dict[str, list[dict[str, Any]]] = {}
    for section in sections:
        items = _section(name, document, section, allow_empty)
        entries = _check_entries(name, section, items, task, root, class_index)
        if decode != "none":
            ignore_here = ignore_index is not None and (ignore_sections is None or section in ignore_sections)
            _check_files(
                name,
                section,
                items,
                entries,
                task,
                decode,
                header_limit,
                label_value_limit,
                label_values,
                int(ignore_index) if ignore_here else None,
                ignore_index,
            )
        checked[section] = entries
    logger.info(
        "checked %s (%s): %s; files %s in %.1f s",
        name,
        task,
        ", ".join(f"{s} {len(v)}" for s, v in checked.items()),
        {"none": "not opened", "exists": "exist", "header": "exist, headers read", "full": "decoded"}[decode],
        time.perf_counter() - start,
    )
    return checked


# ------------------------------------------------------------------------------------------ document level
def _class_index(name: str, document: Mapping[str, Any]) -> dict[str, int]:
    classes = document.get("classes")
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) and c for c in classes):
        raise DatalistError(f"{name}: a classification datalist needs a top-level 'classes' list of names")
    if len(set(classes)) != len(classes):
        raise DatalistError(f"{name}: 'classes' lists a name twice: {classes}")
    return {class_name: index for index, class_name in enumerate(classes)}


def _label_values(name: str, document: Mapping[str, Any], labels: Mapping[str, int] | None) -> set[int]:
    mapping = labels if labels is not None else document.get("labels")
    if not isinstance(mapping, Mapping) or not mapping:
        raise DatalistError(f"{name}: a segmentation datalist needs a top-level 'labels' mapping (name -> index)")
    values = list(mapping.values())
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in values) or sorted(values) != list(
        range(len(values))
    ):
        raise DatalistError(f"{name}: label indices {values} are not the integers 0..{len(values) - 1}")
    return set(values)


def _section(name: str, document: Mapping[str, Any], section: str, allow_empty: bool) -> list:
    if section not in document:
        present = [key for key, value in document.items() if isinstance(value, list) and key != "classes"]
        raise DatalistError(f"{name}: no section {section!r}; sections present: {present}")
    items = document[section]
    if not isinstance(items, list):
        raise DatalistError(f"{name}: section {section!r} is not a list")
    if not items and not allow_empty:
        raise DatalistError(f"{name}: section {section!r} is empty")
    return items


# ------------------------------------------------------------------------------------------ entry level
def _check_entries(
    name: str, section: str, items: list, task: str, root: str, class_index: dict[str, int] | None
) -> list[dict[str, Any]]:
    """Keys and types of every entry (pure Python, about a microsecond an entry)."""
    isabs, join = os.path.isabs, os.path.join
    entries = []
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise DatalistError(f"{name}: {section}[{index}] is a {type(item).__name__}, not an object")
        entry = dict(item)
        image = entry.get("image")
        if not isinstance(image, str) or not image:
            what = "has no 'image' entry" if "image" not in entry else f"'image' is {image!r}, not a file path"
            raise DatalistError(f"{name}: {section}[{index}] {what}")
        entry["image"] = image if isabs(image) else join(root, image)
        if task == "classification":
            entry["label"] = _class_label(name, section, index, entry, class_index)
        elif task == "segmentation":
            label = entry.get("label")
            if not isinstance(label, str) or not label:
                what = "has no 'label' entry" if "label" not in entry else f"'label' is {label!r}, not a file path"
                raise DatalistError(f"{name}: {section}[{index}] {what} (a segmentation entry needs a label map)")
            entry["label"] = label if isabs(label) else join(root, label)
        entries.append(entry)
    return entries


def _class_label(name: str, section: str, index: int, entry: dict, class_index: dict[str, int]) -> int:
    where = f"{name}: {section}[{index}]"
    if "label" not in entry:
        raise DatalistError(f"{where} has no 'label' entry (file {entry['image']})")
    label = entry["label"]
    count = len(class_index)
    if type(label) is int:  # bool is an int subclass, and True must not pass as class 1
        if not 0 <= label < count:
            raise DatalistError(f"{where} label {label} is not a class index 0..{count - 1} of {list(class_index)}")
        return label
    if isinstance(label, str):
        if label in class_index:
            return class_index[label]
        raise DatalistError(f"{where} label {label!r} is not one of the classes {list(class_index)}")
    raise DatalistError(f"{where} label {label!r} is not an integer class index 0..{count - 1} or a class name")


# ------------------------------------------------------------------------------------------ file level
def _check_files(
    name: str,
    section: str,
    items: list,
    entries: list[dict[str, Any]],
    task: str,
    decode: str,
    header_limit: int | None,
    label_value_limit: int | None,
    label_values: set[int] | None,
    ignore_here: int | None,
    ignore_index: int | None,
) -> None:
    keys = ("image", "label") if task == "segmentation" else ("image",)
    for index, entry in enumerate(entries):
        for key in keys:
            _check_exists(name, section, index, key, items[index][key], entry[key])
    if decode == "exists":
        return
    full = decode == "full"
    header_indices = _spread(len(entries), None if full else header_limit)
    for index in header_indices:
        entry = entries[index]
        image_size = _image_size(name, section, index, "image", items[index]["image"], entry["image"], full)
        if task == "segmentation":
            label_size = _image_size(name, section, index, "label", items[index]["label"], entry["label"], full)
            if label_size != image_size:
                raise DatalistError(
                    f"{name}: {section}[{index}] label map is {label_size[0]}x{label_size[1]} but the image is "
                    f"{image_size[0]}x{image_size[1]} (H x W; files {items[index]['image']}, {items[index]['label']})"
                )
    if len(header_indices) < len(entries):
        logger.info(
            "%s: %s: headers read for %d of %d entries (evenly spaced); every file exists. Full check: decode='full'",
            name,
            section,
            len(header_indices),
            len(entries),
        )
    if task != "segmentation" or label_values is None:
        return
    allowed = label_values | ({ignore_here} if ignore_here is not None else set())
    value_indices = _spread(len(entries), None if full else label_value_limit)
    for index in value_indices:
        values = _values(_decode(name, section, index, "label", items[index]["label"], entries[index]["label"]))
        bad = [int(v) for v in values if int(v) not in allowed]
        if bad:
            shown = ", ".join(str(v) for v in bad[:5]) + (", ..." if len(bad) > 5 else "")
            noun = "value" if len(bad) == 1 else "values"
            hint = None
            if ignore_index is None:
                hint = f"pass --ignore_index {bad[0]} if it marks ignored pixels"
            elif ignore_index in bad:
                hint = f"ignore_index {ignore_index} applies to evaluated sections only; training needs class indices"
            raise DatalistError(
                f"{name}: {section}[{index}] label {noun} {shown} not in labels {{0..{len(label_values) - 1}}} "
                f"(file {items[index]['label']})" + (f"; {hint}" if hint else "")
            )
    if len(value_indices) < len(entries):
        logger.warning(
            "%s: %s: label values read in %d of %d label maps (evenly spaced); the loss and the metric reject "
            "other values when they meet them. All: decode='full'",
            name,
            section,
            len(value_indices),
            len(entries),
        )


def _values(array: np.ndarray) -> np.ndarray:
    """The distinct values of a label map (a histogram for 8/16-bit maps: several times faster than a sort)."""
    if array.dtype in (np.uint8, np.uint16):
        return np.flatnonzero(np.bincount(array.ravel()))
    return np.unique(array)


def _spread(count: int, limit: int | None) -> list[int]:
    """All indices ``0..count-1``, or ``limit`` evenly spaced ones (first and last included)."""
    if limit is None or count <= limit:
        return list(range(count))
    return sorted(set(np.linspace(0, count - 1, num=max(1, int(limit))).round().astype(int).tolist()))


def _check_exists(name: str, section: str, index: int, key: str, shown: str, path: str) -> None:
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise DatalistError(f"{name}: {section}[{index}] {key} file not found: {shown}") from None
    except OSError as error:
        raise DatalistError(f"{name}: {section}[{index}] {key} file cannot be read: {shown} ({error})") from None
    if not stat.S_ISREG(info.st_mode):
        raise DatalistError(f"{name}: {section}[{index}] {key} is not a file: {shown}")
    if info.st_size == 0:
        raise DatalistError(f"{name}: {section}[{index}] {key} file is empty (0 bytes): {shown}")


def _image_size(name: str, section: str, index: int, key: str, shown: str, path: str, full: bool) -> tuple[int, int]:
    """(H, W) of an image file: from the header (Pillow opens lazily), or by decoding it (``full``)."""
    if full or not path.lower().endswith(_PIL_SUFFIXES):
        return tuple(_decode(name, section, index, key, shown, path).shape[-2:])
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            width, height = image.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        where = f"{name}: {section}[{index}] {key}"
        raise DatalistError(f"{where} file is not a readable image: {shown} ({error})") from None
    return height, width


def _decode(name: str, section: str, index: int, key: str, shown: str, path: str) -> np.ndarray:
    """The pixels as the loaders see them (``[C, H, W]``; label maps as class indices)."""
    from ultradino_monai.transforms.ultrasound.array import LoadUltrasoundImage

    try:
        return np.asarray(LoadUltrasoundImage(as_label=key == "label")(path))
    except (OSError, ValueError, SyntaxError, EOFError) as error:
        raise DatalistError(f"{name}: {section}[{index}] {key} file cannot be decoded: {shown} ({error})") from None
