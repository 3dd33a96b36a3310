"""Convert FETAL_PLANES_DB (Burgos-Artizzu et al. 2020, Zenodo 3904280) to grey PNGs + datalist + splits.

Usage::

    python -m data_prep.fetal_planes RAW OUT [--seed 0] [--ultradino-splits DIR]
                                             [--expect-images N] [--expect-test N] [--expect-patients N]
                                             [--no-count-check] [--no-splits] [--workers N]

``RAW`` is the Zenodo release exactly as downloaded, ``FETAL_PLANES_ZENODO.zip``, or a
folder holding it extracted (``FETAL_PLANES_DB_data.csv`` + ``Images/``), at any depth
(``docs/datasets.md`` §1.3). The input is only read: zip members are read
in memory after every member name was checked for path traversal, absolute paths, links and
encryption (:mod:`data_prep.convert_common`); nothing is extracted or written inside ``RAW``.

Release quirks handled (docs/datasets.md §1.3): the CSV is ``;``-separated; its header has a trailing
space (``Train ``), so column names are stripped; ``Image_name`` has no ``.png`` extension
(the file is ``Images/<Image_name>.png``); image sizes vary (kept: the shared preprocessing
resizes to the network grid).

Classes, in UltraDINO's order (docs/datasets.md §1.3, docs/recipe.md §1.4): Other 0, Maternal cervix 1, Fetal
abdomen 2, Fetal brain 3, Fetal femur 4, Fetal thorax 5.

Splits (docs/paper.md §3: the provided test split, the rest 80/20 train/val):

* test = the official ``Train == 0`` images (5,271);
* default: the ``Train == 1`` pool split 80/20 into training / validation by *patient*
  (images-weighted) with :func:`ultradino_monai.data.splits.patient_grouped_split`, seeded
  (``--seed``). The salt is the one :func:`~ultradino_monai.data.splits.holdout_splits` uses
  for replicate 0, so the datalist's split is exactly ``splits/full_seed0.json``;
* ``--ultradino-splits DIR``: UltraDINO's published ``{train,val,test}_split.csv``
  (comma-separated; columns Image_name, Patient_num, Plane, Brain_plane, Operator,
  US_Machine, Train, label; 5,804 / 1,325 / 5,271 rows) for exact split parity. Each row
  is checked against the release table (patient, plane, Train flag, ``label`` = class index).

Outputs in ``OUT``:

* ``images/<Image_name>.png``: 8-bit grey PNG (mode "L") at native size, converted with
  Pillow's ``convert("L")`` exactly as UltraDINO's loader does (docs/datasets.md §1.3);
* ``datalist.json``: docs/design.md contract 1: ``training`` / ``validation`` / ``test`` items
  ``{"image", "label": int, "patient": "Patient00001", "id", "plane", "brain_plane",
  "operator", "us_machine"}``, top-level ``"classes"``, ``"dataset": "fetal_planes_db"`` and
  ``"split"`` (how the sections were drawn);
* ``splits/``: ``full_seed{0,1,2}.json`` (:func:`~ultradino_monai.data.splits.holdout_splits`,
  for repeated runs) or, with ``--ultradino-splits``, ``ultradino.json``;
* ``conversion_report.json``: counts per section and class, patients per section, image
  sizes, ignored files, OS clutter skipped.

Checks before any image is converted: every CSV row has its image and no name repeats; plane,
patient number and Train flag parse; 12,400 images / 5,271 test images / 1,792 patients
(and 5,804 / 1,325 / 5,271 for the UltraDINO split), overridable for a smaller tree; no
patient in two sections. Every output is written into a hidden staging folder inside ``OUT``
and moved into place only when the whole conversion succeeded
(:func:`data_prep.convert_common.staged_output`), so a failed run (an image that does not
decode, a split that cannot be drawn) exits with code 2 and a one-line message naming the
file and leaves ``OUT`` as it was.
"""

from __future__ import annotations

import argparse
import csv
import io
import logging
import math
import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from PIL import Image

from data_prep.convert_common import (
    ConversionError,
    SourceFile,
    SourceTree,
    check_counts,
    check_output_outside_input,
    staged_output,
)
from ultradino_monai.data.datalist import DatalistError, write_datalist
from ultradino_monai.utils.files import write_json_atomic, write_png_atomic
from ultradino_monai.utils.logs import setup_logging

logger = logging.getLogger(__name__)

__all__ = [
    "CLASSES",
    "CSV_NAME",
    "IMAGES_DIR",
    "EXPECTED",
    "EXPECTED_ULTRADINO",
    "parse_release_csv",
    "parse_ultradino_splits",
    "locate_release",
    "convert_fetal_planes",
    "main",
]

#: Class order of UltraDINO's classification code (docs/datasets.md §1.3 / docs/recipe.md §1.4).
CLASSES: tuple[str, ...] = ("Other", "Maternal cervix", "Fetal abdomen", "Fetal brain", "Fetal femur", "Fetal thorax")
CSV_NAME = "FETAL_PLANES_DB_data.csv"
IMAGES_DIR = "Images"
DATASET = "fetal_planes_db"
_COLUMNS = ("Image_name", "Patient_num", "Plane", "Brain_plane", "Operator", "US_Machine", "Train")
#: Release counts (docs/datasets.md §1.3): 12,400 images; 5,271 official test images (Train=0); 896 + 896 patients.
EXPECTED: dict[str, int] = {"images": 12400, "test": 5271, "patients": 1792}
#: UltraDINO's split CSVs (docs/datasets.md §1.3, docs/recipe.md §1.4): 5,804 / 1,325 / 5,271 rows.
EXPECTED_ULTRADINO: dict[str, int] = {"training": 5804, "validation": 1325, "test": 5271}
_ULTRADINO_FILES = {"training": "train_split.csv", "validation": "val_split.csv", "test": "test_split.csv"}
SECTIONS = ("training", "validation", "test")


def _decode_text(data: bytes, what: str) -> str:
    for encoding in ("utf-8-sig", "cp1252"):
        try:
            return data.decode(encoding)
        except UnicodeDecodeError:
            continue
    raise ConversionError(f"{what}: cannot decode the CSV as UTF-8 or Windows-1252")


def _read_rows(text: str, delimiter: str, what: str, required: Sequence[str]) -> list[dict[str, str]]:
    reader = csv.reader(io.StringIO(text), delimiter=delimiter)
    try:
        header = next(reader)
    except StopIteration:
        raise ConversionError(f"{what}: empty file") from None
    names = [name.strip() for name in header]  # the release header says "Train " (trailing space)
    missing = [name for name in required if name not in names]
    if missing:
        hint = " (is it ';'-separated?)" if len(names) == 1 else ""
        raise ConversionError(f"{what}: missing column(s) {missing}; header is {names}{hint}")
    rows = []
    for line, values in enumerate(reader, start=2):
        if not values or all(not v.strip() for v in values):
            continue
        if len(values) != len(names):
            raise ConversionError(f"{what}, line {line}: {len(values)} fields, the header has {len(names)}")
        rows.append({name: value.strip() for name, value in zip(names, values)})
    return rows


def _int_field(row: Mapping[str, str], name: str, where: str) -> int:
    value = row[name].strip()
    try:
        number = float(value)  # re-saved tables sometimes write 12.0
    except ValueError:
        number = math.nan
    if not number.is_integer():
        raise ConversionError(f"{where}: {name} {value!r} is not an integer")
    return int(number)


def parse_release_csv(data: bytes, what: str = CSV_NAME) -> list[dict[str, Any]]:
    """Parse ``FETAL_PLANES_DB_data.csv`` into datalist-ready records.

    Each record: ``image`` (``images/<name>.png``), ``label`` (class index), ``patient``
    (``Patient%05d``), ``id`` (the Image_name), ``plane``, ``brain_plane``, ``operator``,
    ``us_machine``, and ``train_flag`` (the official Train column, 0 = test).

    Raises:
        ConversionError: wrong separator or columns, an unknown plane, a Train value other
            than 0/1, a non-integer patient number, or a repeated Image_name.
    """
    rows = _read_rows(_decode_text(data, what), ";", what, _COLUMNS)
    records: list[dict[str, Any]] = []
    seen: set[str] = set()
    for line, row in enumerate(rows, start=2):
        where = f"{what}, row {line}"
        name = row["Image_name"]
        if not name or "/" in name or "\\" in name or name in (".", ".."):
            raise ConversionError(f"{where}: bad Image_name {name!r}")
        if name.lower().endswith(".png"):
            name = name[:-4]  # the release has no extension; tolerate a re-saved table that does
        if name in seen:
            raise ConversionError(f"{where}: Image_name {name!r} is listed twice")
        seen.add(name)
        if row["Plane"] not in CLASSES:
            raise ConversionError(f"{where}: unknown Plane {row['Plane']!r}; expected one of {list(CLASSES)}")
        train_flag = _int_field(row, "Train", where)
        if train_flag not in (0, 1):
            raise ConversionError(f"{where}: Train must be 0 or 1, got {row['Train']!r}")
        patient_num = _int_field(row, "Patient_num", where)
        records.append(
            {
                "image": f"images/{name}.png",
                "label": CLASSES.index(row["Plane"]),
                "patient": f"Patient{patient_num:05d}",
                "id": name,
                "plane": row["Plane"],
                "brain_plane": row["Brain_plane"],
                "operator": row["Operator"],
                "us_machine": row["US_Machine"],
                "train_flag": train_flag,
            }
        )
    if not records:
        raise ConversionError(f"{what}: no rows")
    return records


def parse_ultradino_splits(split_dir: str | Path, records: Sequence[Mapping[str, Any]]) -> dict[str, list[str]]:
    """Read UltraDINO's ``{train,val,test}_split.csv`` and return ``{section: [Image_name, ...]}``.

    Every row must name an image of the release with the same patient, plane, Train flag and
    ``label`` = the plane's class index; no image may be in two files.

    Raises:
        ConversionError: a missing file or column, an unknown image, or a disagreement.
    """
    split_dir = Path(split_dir)
    by_name = {record["id"]: record for record in records}
    sections: dict[str, list[str]] = {}
    owner: dict[str, str] = {}
    for section, filename in _ULTRADINO_FILES.items():
        path = split_dir / filename
        if not path.is_file():
            raise ConversionError(
                f"UltraDINO split file not found: {path} (expected {sorted(_ULTRADINO_FILES.values())})"
            )
        rows = _read_rows(_decode_text(path.read_bytes(), str(path)), ",", str(path), _COLUMNS + ("label",))
        names = []
        for line, row in enumerate(rows, start=2):
            where = f"{path.name}, row {line}"
            name = row["Image_name"][:-4] if row["Image_name"].lower().endswith(".png") else row["Image_name"]
            record = by_name.get(name)
            if record is None:
                raise ConversionError(f"{where}: image {name!r} is not in the release table")
            if name in owner:
                raise ConversionError(f"{where}: image {name!r} is also in {owner[name]}")
            owner[name] = path.name
            expected = {
                "patient": f"Patient{_int_field(row, 'Patient_num', where):05d}",
                "plane": row["Plane"],
                "train_flag": _int_field(row, "Train", where),
                "label": _int_field(row, "label", where),
            }
            for key, value in expected.items():
                if record[key] != value:
                    raise ConversionError(
                        f"{where}: {key} {value!r} disagrees with the release table ({record[key]!r})"
                    )
            names.append(name)
        sections[section] = names
    for section, names in sections.items():
        wanted = 0 if section == "test" else 1
        wrong = [name for name in names if by_name[name]["train_flag"] != wanted]
        if wrong:
            raise ConversionError(
                f"UltraDINO {_ULTRADINO_FILES[section]} holds {len(wrong)} image(s) with Train={1 - wanted} "
                f"(e.g. {wrong[0]}); test must be the official Train=0 set and train/val the Train=1 pool"
            )
    return sections


def _find_csv(files: Sequence[SourceFile]) -> list[SourceFile]:
    return [source for source in files if source.name == CSV_NAME]


def locate_release(tree: SourceTree) -> tuple[SourceFile, dict[str, SourceFile], list[str]]:
    """Find ``FETAL_PLANES_DB_data.csv`` and its sibling ``Images/`` folder anywhere in the release.

    Returns:
        (the CSV, ``{Image_name: png}``, paths of every other file)

    Raises:
        ConversionError: no CSV, or more than one.
    """
    files = tree.files(expand_nested_zips=False)
    found = _find_csv(files)
    if not found:
        files = tree.files(expand_nested_zips=True)  # e.g. a folder that holds the release zip
        found = _find_csv(files)
    if not found:
        raise ConversionError(f"no {CSV_NAME} found in {tree.raw} (looked inside nested zips too; {len(files)} files)")
    if len(found) > 1:
        raise ConversionError(f"several {CSV_NAME} found: {[s.path for s in found]}; pass the folder of one release")
    table = found[0]
    root = PurePosixPath(table.path).parent
    images_root = (root / IMAGES_DIR).as_posix() if str(root) != "." else IMAGES_DIR
    images: dict[str, SourceFile] = {}
    other: list[str] = []
    for source in files:
        if source is table:
            continue
        path = PurePosixPath(source.path)
        if path.parent.as_posix() == images_root and path.suffix.lower() == ".png":
            images[path.stem] = source
        else:
            other.append(source.path)
    return table, images, other


def _convert_image(source: SourceFile, target: Path) -> tuple[int, int, str]:
    """Decode one release image, convert to mode "L" with Pillow (UltraDINO), write it; (W, H, source mode)."""
    try:
        with Image.open(io.BytesIO(source.read_bytes())) as image:
            image.load()
            mode = image.mode
            grey = image.convert("L")
    except (OSError, ValueError) as error:
        raise ConversionError(f"{source.path}: cannot decode image ({error})") from error
    write_png_atomic(target, np.asarray(grey))
    return grey.width, grey.height, mode


def _class_counts(items: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    counts = Counter(int(item["label"]) for item in items)
    return {name: counts.get(index, 0) for index, name in enumerate(CLASSES)}


def _format_table(sections: Mapping[str, Sequence[Mapping[str, Any]]]) -> str:
    header = f"{'section':<11}{'images':>8}{'patients':>10}" + "".join(f"{name:>17}" for name in CLASSES)
    lines = [header]
    for name, items in sections.items():
        counts = _class_counts(items)
        lines.append(
            f"{name:<11}{len(items):>8}{len({i['patient'] for i in items}):>10}"
            + "".join(f"{counts[c]:>17}" for c in CLASSES)
        )
    return "\n".join(lines)


def convert_fetal_planes(
    raw: str | Path,
    out: str | Path,
    *,
    seed: int = 0,
    ultradino_splits: str | Path | None = None,
    expected: Mapping[str, int | None] | None = EXPECTED,
    expected_ultradino: Mapping[str, int | None] | None = EXPECTED_ULTRADINO,
    val_fraction: float = 0.2,
    write_splits: bool = True,
    workers: int = 4,
) -> dict[str, Any]:
    """Convert a FETAL_PLANES_DB release (module docstring) and return the conversion report.

    Args:
        raw: ``FETAL_PLANES_ZENODO.zip`` or a folder holding the release (extracted or zipped).
        out: output folder (created; must not lie inside ``raw``).
        seed: seed of the patient-grouped train/val split (ignored with ``ultradino_splits``).
        ultradino_splits: folder with UltraDINO's ``{train,val,test}_split.csv``.
        expected: release counts ``images`` / ``test`` / ``patients`` (``None`` values, or
            ``expected=None``, skip the check).
        expected_ultradino: section sizes of the UltraDINO split (same conventions).
        val_fraction: validation share of the ``Train == 1`` pool (0.2).
        write_splits: also write ``out/splits``.
        workers: threads decoding / encoding images (>= 1).
    """
    raw, out = Path(raw), Path(out)
    check_output_outside_input(raw, out)
    if ultradino_splits is not None:
        check_output_outside_input(ultradino_splits, out)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConversionError(f"--workers must be an integer >= 1, got {workers!r}")
    if not (math.isfinite(val_fraction) and 0.0 < val_fraction < 1.0):
        raise ConversionError(f"val_fraction must lie strictly between 0 and 1, got {val_fraction}")
    with staged_output(out) as stage:
        report = _convert_into(
            raw, stage, seed, ultradino_splits, expected, expected_ultradino, val_fraction, write_splits, workers
        )
    logger.info("FETAL_PLANES_DB: %d images written to %s\n%s", report["counts"]["images"], out, report["table"])
    return report


def _convert_into(
    raw: Path,
    out: Path,
    seed: int,
    ultradino_splits: str | Path | None,
    expected: Mapping[str, int | None] | None,
    expected_ultradino: Mapping[str, int | None] | None,
    val_fraction: float,
    write_splits: bool,
    workers: int,
) -> dict[str, Any]:
    """The conversion proper, writing into ``out`` (the staging folder of :func:`convert_fetal_planes`)."""
    from ultradino_monai.data.splits import (
        check_patient_disjoint,
        holdout_splits,
        patient_grouped_split,
        write_split_file,
    )

    with SourceTree(raw, work_root=out) as tree:
        table, images, other = locate_release(tree)
        records = parse_release_csv(table.read_bytes(), table.path)
        missing = [record["id"] for record in records if record["id"] not in images]
        if missing:
            raise ConversionError(
                f"{len(missing)} image(s) of {CSV_NAME} are missing from {IMAGES_DIR}/: {missing[:10]}"
                + (" ..." if len(missing) > 10 else "")
            )
        listed = {record["id"] for record in records}
        unlisted = sorted(f"{IMAGES_DIR}/{name}.png" for name in images if name not in listed)
        test = [record for record in records if record["train_flag"] == 0]
        pool = [record for record in records if record["train_flag"] == 1]
        check_counts(
            {"images": len(records), "test": len(test), "patients": len({r["patient"] for r in records})},
            dict(expected or {}),
            hint="FETAL_PLANES_DB has 12,400 images, 5,271 official test images (Train=0) and 1,792 patients "
            "(docs/datasets.md §1.3); for another tree pass --expect-images/--expect-test/--expect-patients "
            "or --no-count-check.",
        )
        check_patient_disjoint({"official train": pool, "official test": test}, where=f"{table.path} Train column")

        if ultradino_splits is not None:
            names = parse_ultradino_splits(ultradino_splits, records)
            by_name = {record["id"]: record for record in records}
            sections = {section: [by_name[n] for n in names[section]] for section in SECTIONS}
            check_counts(
                {section: len(items) for section, items in sections.items()},
                dict(expected_ultradino or {}),
                hint="UltraDINO's split CSVs hold 5,804 / 1,325 / 5,271 rows (docs/datasets.md §1.3); "
                "for another tree pass --no-count-check.",
            )
            uncovered = len(records) - sum(len(items) for items in sections.values())
            split_info = {
                "kind": "ultradino",
                "family": "full",
                "dataset": DATASET,
                "protocol": "UltraDINO's published train/val/test split CSVs",
                "source": str(ultradino_splits),
                "images_in_no_section": uncovered,
            }
        else:
            training, validation = patient_grouped_split(
                pool, (1 - val_fraction, val_fraction), seed, by="images", salt=("holdout", "full", 0)
            )
            sections = {"training": training, "validation": validation, "test": test}
            split_info = {
                "kind": "full",
                "family": "full",
                "dataset": DATASET,
                "seed": int(seed),
                "replicate": 0,
                "protocol": f"official Train=0 as test; Train=1 split {1 - val_fraction:.0%}/"
                f"{val_fraction:.0%} train/val by patient (= splits/full_seed0.json)",
            }
        check_patient_disjoint(sections, where="fetal planes sections")

        shapes: Counter[str] = Counter()
        modes: Counter[str] = Counter()
        jobs = [(images[record["id"]], out / record["image"]) for record in records]
        with ThreadPoolExecutor(max_workers=workers) as pool_executor:
            for number, (width, height, mode) in enumerate(
                pool_executor.map(lambda job: _convert_image(*job), jobs), 1
            ):
                shapes[f"{width}x{height}"] += 1
                modes[mode] += 1
                if number % 1000 == 0:
                    logger.info("converted %d / %d images", number, len(jobs))
        skipped = list(tree.skipped)

    def item(record: Mapping[str, Any]) -> dict[str, Any]:
        return {key: value for key, value in record.items() if key != "train_flag"}

    datalist_path = out / "datalist.json"
    write_datalist(
        datalist_path,
        {section: [item(r) for r in items] for section, items in sections.items()},
        dataset=DATASET,
        classes=list(CLASSES),
        split=split_info,
    )
    report: dict[str, Any] = {
        "dataset": DATASET,
        "input": str(raw),
        "csv": table.path,
        "split": split_info,
        "counts": {
            "images": len(records),
            "official_test": len(test),
            "official_train": len(pool),
            "patients": len({r["patient"] for r in records}),
            "ignored_files": len(other) + len(unlisted),
            "skipped_os_clutter": len(skipped),
        },
        "sections": {
            section: {
                "images": len(items),
                "patients": len({i["patient"] for i in items}),
                "classes": _class_counts(items),
            }
            for section, items in sections.items()
        },
        "classes": list(CLASSES),
        "image_sizes_wxh": dict(sorted(shapes.items())),
        "source_modes": dict(sorted(modes.items())),
        "expected": dict(expected or {}),
        "unlisted_images": unlisted,
        "ignored_files": other,
        "skipped_os_clutter": skipped,
    }
    if write_splits:
        splits_dir = out / "splits"
        if ultradino_splits is not None:
            path = splits_dir / "ultradino.json"
            write_split_file(path, sections, datalist_path=datalist_path, metadata=split_info)
            report["split_files"] = [path.relative_to(out).as_posix()]
        else:
            paths = holdout_splits(datalist_path, splits_dir, seed, val_fraction=val_fraction)
            report["split_files"] = [path.relative_to(out).as_posix() for path in paths]
    write_json_atomic(out / "conversion_report.json", report)
    report["table"] = _format_table(sections)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m data_prep.fetal_planes",
        description="Convert the FETAL_PLANES_DB Zenodo release (zip or folder) to grey PNGs, datalist.json "
        "(official test split, patient-grouped 80/20 train/val) and split files.",
    )
    parser.add_argument("raw", type=Path, help="FETAL_PLANES_ZENODO.zip, or a folder with the release extracted")
    parser.add_argument("out", type=Path, help="output folder (outside RAW)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the patient-grouped train/val split (default 0)")
    parser.add_argument(
        "--ultradino-splits",
        type=Path,
        default=None,
        help="folder with UltraDINO's train_split.csv / val_split.csv / test_split.csv (exact parity)",
    )
    parser.add_argument("--expect-images", type=int, default=EXPECTED["images"])
    parser.add_argument("--expect-test", type=int, default=EXPECTED["test"])
    parser.add_argument("--expect-patients", type=int, default=EXPECTED["patients"])
    parser.add_argument("--no-count-check", action="store_true", help="skip the image / test / patient count checks")
    parser.add_argument("--no-splits", action="store_true", help="do not write splits/")
    parser.add_argument("--workers", type=int, default=4, help="threads converting images (default 4)")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    setup_logging(logging.DEBUG if args.verbose else logging.INFO)
    try:
        report = convert_fetal_planes(
            args.raw,
            args.out,
            seed=args.seed,
            ultradino_splits=args.ultradino_splits,
            expected=None
            if args.no_count_check
            else {"images": args.expect_images, "test": args.expect_test, "patients": args.expect_patients},
            expected_ultradino=None if args.no_count_check else EXPECTED_ULTRADINO,
            write_splits=not args.no_splits,
            workers=args.workers,
        )
    except (ConversionError, DatalistError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"FETAL_PLANES_DB: {report['counts']['images']} images -> {args.out} (split: {report['split']['kind']})")
    print(report["table"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
