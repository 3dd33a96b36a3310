"""Convert the FASS release (Fetal Abdominal Structures Segmentation) to PNGs + datalist + splits.

Usage::

    python -m data_prep.fass RAW OUT [--seed 0] [--expect-images N] [--expect-patients N]
                                     [--no-count-check] [--patient-regex RE] [--no-splits]

``RAW`` is the Mendeley release (dataset 4gcpm9dsc3, CC BY 4.0) exactly as
downloaded: the outer zip, which holds an inner zip named like
``Fetal Abdominal Structures Segmentation Dataset Using Ultrasonic Images.zip``,
or either level extracted to a folder (docs/datasets.md §1.1).
The converter searches the tree for the folder that holds both ``IMAGES/`` and
``ARRAY_FORMAT/`` (any depth, inside nested zips when needed); the input is only
read, never modified or extracted in place (see ``data_prep.convert_common``).

Release layout (docs/datasets.md §1.1):

* ``IMAGES/<stem>.png``: the 1,588 frames, RGB with grey content.
* ``ARRAY_FORMAT/<stem>.npy``: a *pickled dict* ``{"image": HxWx3 uint8,
  "structures": {"artery", "liver", "stomach", "vein"}: HxW binary mask}``;
  the key set can vary per image (a missing structure is absent from the image).

The ``.npy`` files need pickle. They are read with :class:`RestrictedUnpickler`,
which only resolves the handful of globals NumPy uses to rebuild arrays
(``numpy.ndarray``, ``numpy.dtype``, ``_reconstruct``, ``scalar``,
``_frombuffer``), plain containers and ``_codecs.encode``; anything else (a
class, ``os.system``, ...) stops the conversion with :class:`UnsafePickleError`
naming the file and the global. ``np.load(allow_pickle=True)`` is never called.

Outputs in ``OUT``:

* ``images/<stem>.png``: 8-bit single-channel PNG at native size. Grey RGB
  (R = G = B) keeps its values exactly; a frame with real colour is mixed down
  with BT.601 luma and listed in the report (``colour_images``).
* ``labels/<stem>.png``: 8-bit index mask, same size, values
  0 background, 1 artery (abdominal aorta), 2 liver, 3 stomach,
  4 vein (intrahepatic umbilical vein) (docs/datasets.md §1.1; UltraDINO
  ``FASSDataset``, docs/recipe.md §1.5).
* Overlaps: the umbilical vein lies *inside* the liver, so the binary masks
  overlap. Structures are painted liver → stomach → artery → vein, later wins
  (the torch_em order, docs/datasets.md §1.1): vessels stay visible on top of
  the liver. ``overlaps.csv`` gives, for every image, the number of pixels
  claimed by two or more structures and the count for each pair.
* ``datalist.json``: docs/design.md contract 1; every image under ``"training"`` with
  ``image`` / ``label`` / ``patient`` / ``id``, plus ``"dataset": "fass"`` and
  ``"labels": {"background": 0, "artery": 1, "liver": 2, "stomach": 3, "vein": 4}``.
  This is the inventory; bundles read the split files.
* ``splits/``: the FASS split files of :func:`ultradino_monai.data.splits.fass_splits`.
* ``conversion_report.json``: every input file accounted for (converted pairs,
  ignored files with their paths, skipped OS clutter), image-size histogram,
  overlap totals, missing structures, frames whose ``npy['image']`` differs from
  the PNG.

Patients: the first underscore token of the stem, matched by
``--patient-regex`` (default ``^(?P<patient>[A-Za-z]+\\d+)_``, e.g. ``P12_...``
→ ``P12``; docs/datasets.md §1.1). A stem that does not match stops the
conversion.

Checks: every PNG has an ``.npy`` and vice versa; 1,588 images and 169
patients (paper; override with ``--expect-images`` / ``--expect-patients`` or
``--no-count-check``); every PNG and ``.npy`` decodes; masks have the PNG's
H × W; labels ⊆ {0..4}; the tree is large enough for the split files. Every
output is written into a hidden staging folder inside ``OUT`` and moved into
place only when all checks passed and every file was written
(:func:`data_prep.convert_common.staged_output`): a failed run exits with code 2
and a one-line message naming the file, and leaves ``OUT`` as it was (no
datalist, split files or images of the failed run).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import io
import logging
import pickle
import re
import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from data_prep.convert_common import (
    ConversionError,
    SourceFile,
    SourceTree,
    check_counts,
    check_output_outside_input,
    read_png_array,
    staged_output,
    to_grayscale,
)
from ultradino_monai.data.datalist import DatalistError, write_datalist
from ultradino_monai.utils.files import write_json_atomic, write_png_atomic, write_text_atomic
from ultradino_monai.utils.logs import setup_logging

logger = logging.getLogger(__name__)

__all__ = [
    "LABELS",
    "PAINT_ORDER",
    "EXPECTED_IMAGES",
    "EXPECTED_PATIENTS",
    "DEFAULT_PATIENT_REGEX",
    "UnsafePickleError",
    "RestrictedUnpickler",
    "load_structures_npy",
    "paint_labels",
    "parse_patient",
    "locate_release",
    "convert_fass",
    "main",
]

LABELS = {"background": 0, "artery": 1, "liver": 2, "stomach": 3, "vein": 4}
# Later structures overwrite earlier ones where masks overlap (docs/datasets.md §1.1).
PAINT_ORDER = ("liver", "stomach", "artery", "vein")
EXPECTED_IMAGES = 1588
EXPECTED_PATIENTS = 169
DEFAULT_PATIENT_REGEX = r"^(?P<patient>[A-Za-z]+\d+)_"

IMAGES_DIR = "IMAGES"
ARRAYS_DIR = "ARRAY_FORMAT"

# The globals NumPy's pickles of arrays refer to (numpy 1.x spells the module
# numpy.core, numpy 2.x numpy._core), containers, and _codecs.encode (used by
# pickles written under Python 2 / protocol 2 for byte strings).
_ALLOWED_GLOBALS = frozenset(
    {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("builtins", "dict"),
        ("builtins", "list"),
        ("builtins", "tuple"),
        ("builtins", "set"),
        ("builtins", "frozenset"),
        ("builtins", "bytearray"),
        ("_codecs", "encode"),
    }
)


class UnsafePickleError(ConversionError):
    """An ``.npy`` pickle refers to something other than NumPy arrays and plain containers."""


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that can rebuild NumPy arrays inside dicts / lists and nothing else.

    ``find_class`` is the only door through which a pickle reaches code; it is
    limited to ``_ALLOWED_GLOBALS``. Persistent ids are refused by the base class.
    """

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise UnsafePickleError(f"pickle refers to {module}.{name}, which is not on the NumPy-array allowlist")
        if module.startswith("numpy.core") and importlib.util.find_spec("numpy._core") is not None:
            # Resolve numpy 1.x names against numpy 2.x without going through the deprecated numpy.core shim.
            module = "numpy._core" + module[len("numpy.core") :]
        return getattr(importlib.import_module(module), name)


def _read_npy_header(stream: io.BytesIO, what: str) -> np.dtype:
    try:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            _, _, dtype = np.lib.format.read_array_header_1_0(stream)
        elif version == (2, 0):
            _, _, dtype = np.lib.format.read_array_header_2_0(stream)
        else:
            raise ConversionError(f"{what}: unsupported .npy format version {version}")
    except ValueError as error:
        raise ConversionError(f"{what}: not a valid .npy file ({error})") from error
    return dtype


def load_structures_npy(data: bytes, what: str) -> tuple[np.ndarray | None, dict[str, np.ndarray]]:
    """Read one ``ARRAY_FORMAT`` file safely.

    Args:
        data: the ``.npy`` bytes (a pickled 0-d object array holding a dict).
        what: file name for error messages.

    Returns:
        (the ``image`` array or ``None`` if absent, ``{structure name (lower case): mask array}``)

    Raises:
        UnsafePickleError: the pickle names a global outside the allowlist.
        ConversionError: not a pickled dict, or ``structures`` is not a dict of arrays.
    """
    stream = io.BytesIO(data)
    dtype = _read_npy_header(stream, what)
    if not dtype.hasobject:
        raise ConversionError(
            f"{what}: expected a pickled dict with 'image' and 'structures', found a plain {dtype} array"
        )
    try:
        payload = RestrictedUnpickler(stream).load()
    except UnsafePickleError as error:
        raise UnsafePickleError(f"{what}: {error}") from error
    except (pickle.UnpicklingError, EOFError, AttributeError, TypeError, ValueError) as error:
        raise ConversionError(f"{what}: cannot unpickle ({type(error).__name__}: {error})") from error
    if isinstance(payload, np.ndarray) and payload.dtype.hasobject and payload.shape == ():
        payload = payload.item()
    if not isinstance(payload, dict):
        raise ConversionError(f"{what}: expected a dict, found {type(payload).__name__}")
    structures = payload.get("structures")
    if not isinstance(structures, dict):
        raise ConversionError(
            f"{what}: 'structures' must be a dict of masks, found {type(structures).__name__} (keys: {sorted(payload)})"
        )
    masks: dict[str, np.ndarray] = {}
    for key, value in structures.items():
        if not isinstance(key, str):
            raise ConversionError(f"{what}: structure key {key!r} is not a string")
        if not isinstance(value, np.ndarray) or value.dtype.hasobject:
            raise ConversionError(f"{what}: structure {key!r} is a {type(value).__name__}, expected a numeric array")
        name = key.strip().lower()
        if name not in PAINT_ORDER:
            raise ConversionError(f"{what}: unknown structure {key!r}; expected a subset of {list(PAINT_ORDER)}")
        if name in masks:
            raise ConversionError(f"{what}: structure {name!r} appears twice")
        masks[name] = value
    image = payload.get("image")
    if image is not None and (not isinstance(image, np.ndarray) or image.dtype.hasobject):
        raise ConversionError(f"{what}: 'image' is a {type(image).__name__}, expected a numeric array")
    return image, masks


def _mask_2d(mask: np.ndarray, shape: tuple[int, int], what: str) -> np.ndarray:
    if mask.ndim == 3 and mask.shape[2] in (1, 3, 4):
        # A colour-rendered mask counts a pixel as foreground if any channel is set.
        mask = np.any(mask != 0, axis=2)
    if mask.ndim != 2 or mask.shape != shape:
        raise ConversionError(f"{what}: mask shape {mask.shape} does not match the image's {shape}")
    return mask != 0


def paint_labels(
    masks: Mapping[str, np.ndarray], shape: tuple[int, int], what: str = "masks"
) -> tuple[np.ndarray, dict[str, int]]:
    """Paint binary structure masks into one index mask, in :data:`PAINT_ORDER` (later wins).

    Args:
        masks: ``{structure: [H, W] array}``, nonzero = inside; missing structures are absent.
        shape: ``(H, W)`` of the image.

    Returns:
        (``[H, W]`` uint8 label map with values in {0..4},
        ``{"overlap_pixels": pixels in >= 2 structures, "<a>+<b>": pixels in both a and b, ...}``
        with the pairs in paint order)
    """
    label = np.zeros(shape, dtype=np.uint8)
    binary = {name: _mask_2d(masks[name], shape, f"{what}[{name}]") for name in PAINT_ORDER if name in masks}
    coverage = np.zeros(shape, dtype=np.uint8)
    for name in PAINT_ORDER:
        if name in binary:
            label[binary[name]] = LABELS[name]
            coverage += binary[name]
    overlaps = {"overlap_pixels": int(np.count_nonzero(coverage >= 2))}
    for i, first in enumerate(PAINT_ORDER):
        for second in PAINT_ORDER[i + 1 :]:
            both = 0
            if first in binary and second in binary:
                both = int(np.count_nonzero(binary[first] & binary[second]))
            overlaps[f"{first}+{second}"] = both
    return label, overlaps


def parse_patient(stem: str, pattern: re.Pattern[str]) -> str:
    """Patient id from a file stem; the regex must have a ``patient`` group (or one group)."""
    match = pattern.search(stem)
    if match is None:
        raise ConversionError(f"cannot parse a patient id from {stem!r} with {pattern.pattern!r}; pass --patient-regex")
    return match.group("patient") if "patient" in pattern.groupindex else match.group(1)


def _find_roots(files: Sequence[SourceFile]) -> list[str]:
    """Folders (POSIX paths) that directly contain both an ``IMAGES`` and an ``ARRAY_FORMAT`` folder."""
    children: dict[str, set[str]] = {}
    for source in files:
        parts = source.parts
        for depth in range(len(parts) - 1):
            parent = PurePosixPath(*parts[:depth]).as_posix() if depth else ""
            children.setdefault(parent, set()).add(parts[depth])
    return sorted(root for root, names in children.items() if IMAGES_DIR in names and ARRAYS_DIR in names)


def locate_release(
    tree: SourceTree,
) -> tuple[str, dict[str, SourceFile], dict[str, SourceFile], list[str]]:
    """Find the ``IMAGES`` / ``ARRAY_FORMAT`` pair anywhere in the release.

    Returns:
        (root folder, ``{stem: png}``, ``{stem: npy}``, paths of every other file)

    Raises:
        ConversionError: no such pair, or more than one.
    """
    files = tree.files(expand_nested_zips=False)
    roots = _find_roots(files)
    if not roots:
        # Not in the plain tree: look inside nested zips (the release's inner zip).
        files = tree.files(expand_nested_zips=True)
        roots = _find_roots(files)
    if not roots:
        raise ConversionError(
            f"no folder holding both {IMAGES_DIR}/ and {ARRAYS_DIR}/ found in {tree.raw} "
            f"(looked inside nested zips too; {len(files)} files seen)"
        )
    if len(roots) > 1:
        raise ConversionError(f"several {IMAGES_DIR}/ + {ARRAYS_DIR}/ folders found: {roots}; pass one of them")
    root = roots[0]
    prefix = f"{root}/" if root else ""
    images: dict[str, SourceFile] = {}
    arrays: dict[str, SourceFile] = {}
    other: list[str] = []
    for source in files:
        relative = source.path[len(prefix) :] if source.path.startswith(prefix) else None
        parts = PurePosixPath(relative).parts if relative is not None else ()
        suffix = PurePosixPath(source.path).suffix.lower()
        if len(parts) == 2 and parts[0] == IMAGES_DIR and suffix == ".png":
            images[PurePosixPath(parts[1]).stem] = source
        elif len(parts) == 2 and parts[0] == ARRAYS_DIR and suffix == ".npy":
            arrays[PurePosixPath(parts[1]).stem] = source
        else:
            other.append(source.path)
    return root, images, arrays, other


def convert_fass(
    raw: str | Path,
    out: str | Path,
    *,
    expect_images: int | None = EXPECTED_IMAGES,
    expect_patients: int | None = EXPECTED_PATIENTS,
    patient_regex: str = DEFAULT_PATIENT_REGEX,
    seed: int = 0,
    write_splits: bool = True,
    split_options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Convert a FASS release (module docstring) and return the conversion report.

    Args:
        raw: release zip (outer or inner) or a folder holding it extracted.
        out: output folder (created; must not lie inside ``raw``).
        expect_images / expect_patients: ``None`` skips that count check.
        patient_regex: regex with a ``patient`` group applied to each stem.
        seed: base seed of the split files.
        write_splits: also write ``out/splits`` with :func:`~ultradino_monai.data.splits.fass_splits`.
        split_options: extra keyword arguments for ``fass_splits`` (e.g. ``fewshot_images``).
    """
    raw, out = Path(raw), Path(out)
    check_output_outside_input(raw, out)
    try:
        pattern = re.compile(patient_regex)
    except re.error as error:
        raise ConversionError(f"--patient-regex {patient_regex!r} is not a regular expression ({error})") from None
    if "patient" not in pattern.groupindex and pattern.groups < 1:
        raise ConversionError(f"--patient-regex {patient_regex!r} needs a group, e.g. (?P<patient>...)")
    with staged_output(out) as stage:
        report = _convert_into(raw, stage, pattern, expect_images, expect_patients, seed, write_splits, split_options)
    counts = report["counts"]
    logger.info("FASS: %d images, %d patients written to %s", counts["images"], counts["patients"], out)
    return report


def _convert_into(
    raw: Path,
    out: Path,
    pattern: re.Pattern[str],
    expect_images: int | None,
    expect_patients: int | None,
    seed: int,
    write_splits: bool,
    split_options: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """The conversion proper, writing into ``out`` (the staging folder of :func:`convert_fass`)."""
    from ultradino_monai.data.splits import fass_splits

    with SourceTree(raw, work_root=out) as tree:
        root, images, arrays, other = locate_release(tree)
        logger.info(
            "release root %r: %d PNGs, %d npy files, %d other files", root, len(images), len(arrays), len(other)
        )
        only_png = sorted(set(images) - set(arrays))
        only_npy = sorted(set(arrays) - set(images))
        if only_png or only_npy:
            raise ConversionError(
                f"unpaired files: {len(only_png)} PNG(s) without .npy {only_png[:10]}, "
                f"{len(only_npy)} .npy without PNG {only_npy[:10]}"
            )
        stems = sorted(images)
        patients = {stem: parse_patient(stem, pattern) for stem in stems}
        check_counts(
            {"images": len(stems), "patients": len(set(patients.values()))},
            {"images": expect_images, "patients": expect_patients},
            hint="The FASS paper documents 1,588 images of 169 patients; for another tree pass "
            "--expect-images/--expect-patients or --no-count-check.",
        )

        items: list[dict[str, Any]] = []
        overlap_rows: list[dict[str, Any]] = []
        shapes: Counter[str] = Counter()
        colour_images: list[str] = []
        mismatched: list[str] = []
        missing: Counter[str] = Counter()
        for number, stem in enumerate(stems, 1):
            png_source, npy_source = images[stem], arrays[stem]
            image, was_colour = to_grayscale(read_png_array(png_source.read_bytes(), png_source.path), png_source.path)
            if was_colour:
                colour_images.append(stem)
            npy_image, masks = load_structures_npy(npy_source.read_bytes(), npy_source.path)
            if npy_image is not None:
                npy_grey = to_grayscale(npy_image, npy_source.path)[0] if npy_image.dtype == np.uint8 else None
                if npy_grey is None or not np.array_equal(npy_grey, image):
                    mismatched.append(stem)
            for name in PAINT_ORDER:
                if name not in masks:
                    missing[name] += 1
            label, overlaps = paint_labels(masks, image.shape, npy_source.path)
            values = np.unique(label)
            if values.max(initial=0) > max(LABELS.values()):
                raise ConversionError(f"{npy_source.path}: label values {values.tolist()} outside 0..4")
            write_png_atomic(out / "images" / f"{stem}.png", image)
            write_png_atomic(out / "labels" / f"{stem}.png", label)
            shapes[f"{image.shape[1]}x{image.shape[0]}"] += 1
            overlap_rows.append({"image": stem, "patient": patients[stem], **overlaps})
            items.append(
                {"image": f"images/{stem}.png", "label": f"labels/{stem}.png", "patient": patients[stem], "id": stem}
            )
            if number % 200 == 0:
                logger.info("converted %d / %d", number, len(stems))
        skipped = list(tree.skipped)

    if mismatched:
        logger.warning(
            "%d ARRAY_FORMAT images differ from their PNG (the PNG is used): %s", len(mismatched), mismatched[:10]
        )
    columns = list(overlap_rows[0]) if overlap_rows else ["image", "patient", "overlap_pixels"]
    lines = [",".join(columns)] + [",".join(str(row[c]) for c in columns) for row in overlap_rows]
    write_text_atomic(out / "overlaps.csv", "\n".join(lines) + "\n")
    datalist_path = out / "datalist.json"
    write_datalist(datalist_path, {"training": items}, dataset="fass", labels=dict(LABELS))

    report: dict[str, Any] = {
        "dataset": "fass",
        "input": str(raw),
        "release_root": root,
        "counts": {
            "images": len(items),
            "patients": len(set(patients.values())),
            "input_files": 2 * len(items) + len(other) + len(skipped),
            "converted_pairs": len(items),
            "ignored_files": len(other),
            "skipped_os_clutter": len(skipped),
        },
        "expected": {"images": expect_images, "patients": expect_patients},
        "labels": dict(LABELS),
        "paint_order": list(PAINT_ORDER),
        "image_sizes_wxh": dict(sorted(shapes.items())),
        "overlaps": {
            "images_with_overlap": sum(1 for row in overlap_rows if row["overlap_pixels"] > 0),
            "overlap_pixels_total": sum(row["overlap_pixels"] for row in overlap_rows),
        },
        "missing_structures": {name: missing[name] for name in PAINT_ORDER},
        "colour_images": colour_images,
        "npy_image_differs_from_png": mismatched,
        "ignored_files": other,
        "skipped_os_clutter": skipped,
    }
    if write_splits:
        split_paths = fass_splits(datalist_path, out / "splits", seed, **dict(split_options or {}))
        report["split_files"] = [path.relative_to(out).as_posix() for path in split_paths]
    write_json_atomic(out / "conversion_report.json", report)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m data_prep.fass",
        description="Convert the FASS Mendeley release (zip, nested zip or folder) to grayscale PNGs, "
        "index-mask PNGs, datalist.json and patient-grouped split files.",
    )
    parser.add_argument("raw", type=Path, help="the release zip (outer or inner) or a folder containing it extracted")
    parser.add_argument("out", type=Path, help="output folder (outside RAW)")
    parser.add_argument("--seed", type=int, default=0, help="base seed of the split files (default 0)")
    parser.add_argument("--expect-images", type=int, default=EXPECTED_IMAGES)
    parser.add_argument("--expect-patients", type=int, default=EXPECTED_PATIENTS)
    parser.add_argument("--no-count-check", action="store_true", help="skip the image / patient count check")
    parser.add_argument(
        "--patient-regex", default=DEFAULT_PATIENT_REGEX, help="regex with a 'patient' group applied to each file stem"
    )
    parser.add_argument("--no-splits", action="store_true", help="do not write splits/")
    parser.add_argument("--fewshot-images", type=int, default=20, help="few-shot training images per draw (paper: 20)")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    setup_logging(logging.DEBUG if args.verbose else logging.INFO)
    try:
        report = convert_fass(
            args.raw,
            args.out,
            expect_images=None if args.no_count_check else args.expect_images,
            expect_patients=None if args.no_count_check else args.expect_patients,
            patient_regex=args.patient_regex,
            seed=args.seed,
            write_splits=not args.no_splits,
            split_options={"fewshot_images": args.fewshot_images},
        )
    except (ConversionError, DatalistError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    counts = report["counts"]
    print(
        f"FASS: {counts['images']} images of {counts['patients']} patients -> {args.out} "
        f"({report['overlaps']['images_with_overlap']} images with overlapping masks, see overlaps.csv; "
        f"{counts['ignored_files']} other files ignored, listed in conversion_report.json)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
