"""Convert the JNU-IFM release (intrapartum transperineal ultrasound) to PNGs + datalist + splits.

Usage::

    python -m data_prep.jnu_ifm RAW OUT [--seed 0] [--patient-table videos.csv] [--max-gap-minutes 60]
                                        [--expect-frames N] [--expect-videos N] [--no-count-check]
                                        [--no-splits]

``RAW`` holds the release (Lu et al., Data in Brief 41:107904, 2022; figshare
14371652) as downloaded: a folder or zip with 78 video folders named by their
acquisition time ``YYYYMMDDTHHMMSS`` (any depth), each with (see
docs/datasets.md §1.2):

* ``image/<video>_<frame>.png``: grayscale frames (1295 × 1026).
* ``mask/<video>_<frame>_mask.png``: 0 background, **7 pubic symphysis, 8 fetal head**.
* ``mask_enhance/<video>_<frame>_mask.png`` (colour rendering; never used as label).
* ``framelabel.csv`` (``frame_id, frame_label``: 3 none, 4 SP only, 5 head only,
  6 both), kept as item metadata ``frame_label`` when it can be matched.

Frames. The README counts 6,254 images, 6,247 masks and 6,224 mask_enhance
files; the usual 6,224-frame set is the *intersection* of the three on the frame
stem (file name without ``.png`` and without a trailing ``_mask`` /
``_mask_enhance`` / ``_enhance``). Files outside the intersection are listed in
the report, not converted. The intersection must hold 6,224 frames from 78
videos (``--expect-frames`` / ``--expect-videos`` / ``--no-count-check``).

Labels. Mask values are remapped 7 → 1 (pubic symphysis), 8 → 2 (head);
any other nonzero value stops the conversion with an error naming the file.
As in the paper (docs/paper.md §3, "drop images in which a structure is not
visible"), frames in which either structure is absent are dropped; the report
lists them with the reason. ``datalist.json`` carries
``"labels": {"background": 0, "pubic_symphysis": 1, "head": 2}``.

Patients. File names carry only the video time, and 78 videos come from 51
patients (docs/datasets.md §1.2), so splitting by video could put one patient on
both sides. Unless a table is given (``--patient-table`` CSV with columns
``video,patient``), videos are grouped by this heuristic: sort videos by start
time; a video starting on the *same calendar day* as the previous one and at
most ``--max-gap-minutes`` (default 60) after that video's *start* belongs to
the same patient. The release has no end times, so the gap is start to start.
Patients are named ``JNU001``, ``JNU002``, ... in time order. The result is
written to ``patients.csv`` (``video,patient,frames_kept``); edit it and pass
it back with ``--patient-table`` to override. A count other than 51 is logged
as a warning.

Outputs in ``OUT``: ``images/<stem>.png`` (8-bit grey, native size),
``labels/<stem>.png`` (values 0/1/2), ``datalist.json`` (every kept frame
under ``"training"``, keys ``image``/``label``/``patient``/``video``/``id``
[/``frame_label``]), ``patients.csv``, ``splits/`` (from
:func:`ultradino_monai.data.splits.jnu_splits`) and ``conversion_report.json``.
They are written into a hidden staging folder inside ``OUT`` and moved into
place only when the whole conversion succeeded
(:func:`data_prep.convert_common.staged_output`): a failed run (an image that
does not decode, an unexpected mask value, a tree too small for the split
files) exits with code 2 and a one-line message naming the file, and leaves
``OUT`` as it was.
"""

from __future__ import annotations

import argparse
import csv
import io
import logging
import math
import re
import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
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
    "SOURCE_VALUES",
    "EXPECTED_FRAMES",
    "EXPECTED_VIDEOS",
    "EXPECTED_PATIENTS",
    "VIDEO_PATTERN",
    "remap_mask",
    "group_videos_by_time",
    "read_patient_table",
    "discover_videos",
    "convert_jnu_ifm",
    "main",
]

LABELS = {"background": 0, "pubic_symphysis": 1, "head": 2}
# Release value -> training value (docs/datasets.md §1.2).
SOURCE_VALUES = {0: 0, 7: 1, 8: 2}
EXPECTED_FRAMES = 6224
EXPECTED_VIDEOS = 78
EXPECTED_PATIENTS = 51
VIDEO_PATTERN = re.compile(r"^\d{8}T\d{6}$")
KINDS = ("image", "mask", "mask_enhance")
# Longest first, so "_mask_enhance" is not cut to "_mask".
_STEM_SUFFIXES = ("_mask_enhance", "_enhance", "_mask")


def frame_stem(file_name: str) -> str:
    """``20190909T155747_0001_mask.png`` -> ``20190909T155747_0001``."""
    stem = PurePosixPath(file_name).stem
    for suffix in _STEM_SUFFIXES:
        if stem.endswith(suffix):
            return stem[: -len(suffix)]
    return stem


def remap_mask(mask: np.ndarray, what: str) -> np.ndarray:
    """Map release values {0, 7, 8} to {0, 1, 2}.

    Args:
        mask: ``[H, W]`` (or grey ``[H, W, C]``) integer array from ``mask/``.
        what: file name for the error message.

    Raises:
        ConversionError: any value other than 0, 7, 8, naming the file and the values.
    """
    if mask.ndim == 3:
        if not all(np.array_equal(mask[..., 0], mask[..., c]) for c in range(1, mask.shape[2])):
            raise ConversionError(f"{what}: mask has differing colour channels; expected a single-channel index mask")
        mask = mask[..., 0]
    values = np.unique(mask)
    unexpected = [int(v) for v in values if int(v) not in SOURCE_VALUES]
    if unexpected:
        raise ConversionError(
            f"{what}: unexpected mask value(s) {unexpected} (present: {values.tolist()}); "
            f"the release uses 0 background, 7 pubic symphysis, 8 head"
        )
    lookup = np.zeros(max(SOURCE_VALUES) + 1, dtype=np.uint8)
    for source, target in SOURCE_VALUES.items():
        lookup[source] = target
    return lookup[mask]


def _parse_time(video: str) -> datetime:
    try:
        return datetime.strptime(video, "%Y%m%dT%H%M%S")
    except ValueError as error:
        raise ConversionError(f"video folder {video!r} is not a YYYYMMDDTHHMMSS timestamp") from error


def group_videos_by_time(videos: Sequence[str], max_gap_minutes: float = 60.0) -> dict[str, str]:
    """Heuristic patient grouping (module docstring): same day and start-to-start gap <= ``max_gap_minutes``.

    Returns:
        ``{video: "JNU001"...}``, patients numbered in time order.
    """
    ordered = sorted(videos, key=_parse_time)
    mapping: dict[str, str] = {}
    number = 0
    previous: datetime | None = None
    for video in ordered:
        start = _parse_time(video)
        same_patient = (
            previous is not None
            and start.date() == previous.date()
            and start - previous <= timedelta(minutes=max_gap_minutes)
        )
        if not same_patient:
            number += 1
        mapping[video] = f"JNU{number:03d}"
        previous = start
    return mapping


def read_patient_table(path: str | Path, videos: Sequence[str]) -> dict[str, str]:
    """Read a ``video,patient`` CSV; every video of the release must be listed.

    Raises:
        ConversionError: missing columns, empty patient, duplicate video or videos missing.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as error:
        raise ConversionError(f"cannot read patient table {path}: {error}") from error
    reader = csv.DictReader(io.StringIO(text))
    fields = [name.strip().lower() for name in reader.fieldnames or []]
    if "video" not in fields or "patient" not in fields:
        raise ConversionError(f"{path}: needs columns 'video' and 'patient', found {reader.fieldnames}")
    mapping: dict[str, str] = {}
    for line, row in enumerate(reader, start=2):
        row = {key.strip().lower(): (value or "").strip() for key, value in row.items() if key}
        video, patient = row["video"], row["patient"]
        if not patient:
            raise ConversionError(f"{path}:{line}: empty patient for video {video!r}")
        if video in mapping:
            raise ConversionError(f"{path}:{line}: video {video!r} listed twice")
        mapping[video] = patient
    missing = sorted(set(videos) - set(mapping))
    if missing:
        raise ConversionError(f"{path}: no patient for {len(missing)} video(s): {missing[:10]}")
    extra = sorted(set(mapping) - set(videos))
    if extra:
        logger.warning("%s lists %d video(s) not in the release (ignored): %s", path, len(extra), extra[:10])
    return {video: mapping[video] for video in videos}


def discover_videos(
    files: Sequence[SourceFile],
) -> tuple[dict[str, dict[str, dict[str, SourceFile]]], dict[str, SourceFile], list[str]]:
    """Find the video folders anywhere in the release.

    Returns:
        (``{video: {kind: {frame stem: file}}}`` for kinds image / mask / mask_enhance,
        ``{video: framelabel.csv}``, paths of every other file)

    Raises:
        ConversionError: the same video folder appears twice.
    """
    videos: dict[str, dict[str, dict[str, SourceFile]]] = {}
    where: dict[str, str] = {}
    frame_labels: dict[str, SourceFile] = {}
    other: list[str] = []
    for source in files:
        parts = source.parts
        placed = False
        for index in range(len(parts) - 1):
            if not VIDEO_PATTERN.match(parts[index]):
                continue
            video = parts[index]
            parent = "/".join(parts[:index])
            if where.setdefault(video, parent) != parent:
                raise ConversionError(f"video {video} found twice: under {where[video]!r} and {parent!r}")
            rest = parts[index + 1 :]
            if len(rest) == 2 and rest[0] in KINDS and rest[1].lower().endswith(".png"):
                stem = frame_stem(rest[1])
                kind_files = videos.setdefault(video, {kind: {} for kind in KINDS})[rest[0]]
                if stem in kind_files:
                    raise ConversionError(f"{source.path}: frame {stem} appears twice in {video}/{rest[0]}")
                kind_files[stem] = source
                placed = True
            elif len(rest) == 1 and rest[0].lower() == "framelabel.csv":
                frame_labels[video] = source
                placed = True
            break
        if not placed:
            other.append(source.path)
    return videos, frame_labels, other


def _read_frame_labels(source: SourceFile) -> dict[str, int]:
    text = source.read_bytes().decode("utf-8-sig", errors="replace")
    reader = csv.reader(io.StringIO(text))
    rows = [row for row in reader if row and any(cell.strip() for cell in row)]
    labels: dict[str, int] = {}
    for row in rows:
        if len(row) < 2:
            continue
        key, value = row[0].strip(), row[1].strip()
        if value.lstrip("-").isdigit():
            labels[key] = int(value)
    return labels


def _frame_label(stem: str, video: str, labels: Mapping[str, int]) -> int | None:
    token = stem[len(video) + 1 :] if stem.startswith(f"{video}_") else stem
    candidates = [stem, token, f"{stem}.png", f"{token}.png"]
    if token.isdigit():
        candidates.append(str(int(token)))
    for candidate in candidates:
        if candidate in labels:
            return labels[candidate]
    return None


def convert_jnu_ifm(
    raw: str | Path,
    out: str | Path,
    *,
    expect_frames: int | None = EXPECTED_FRAMES,
    expect_videos: int | None = EXPECTED_VIDEOS,
    patient_table: str | Path | None = None,
    max_gap_minutes: float = 60.0,
    seed: int = 0,
    write_splits: bool = True,
    split_options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Convert a JNU-IFM release (module docstring) and return the conversion report.

    Args:
        raw: folder (or zip) holding the video folders.
        out: output folder (created; must not lie inside ``raw``).
        expect_frames / expect_videos: ``None`` skips that count check (frames =
            the image ∩ mask ∩ mask_enhance intersection, before dropping).
        patient_table: ``video,patient`` CSV replacing the time heuristic.
        max_gap_minutes: heuristic: same-day videos at most this far apart (start to start).
        seed: base seed of the split files.
        write_splits: also write ``out/splits`` with :func:`~ultradino_monai.data.splits.jnu_splits`.
        split_options: extra keyword arguments for ``jnu_splits``.
    """
    raw, out = Path(raw), Path(out)
    check_output_outside_input(raw, out)
    if not (math.isfinite(max_gap_minutes) and max_gap_minutes >= 0):
        raise ConversionError(f"--max-gap-minutes must be a finite number >= 0, got {max_gap_minutes}")
    with staged_output(out) as stage:
        return _convert_into(
            raw, stage, expect_frames, expect_videos, patient_table, max_gap_minutes, seed, write_splits, split_options
        )


def _convert_into(
    raw: Path,
    out: Path,
    expect_frames: int | None,
    expect_videos: int | None,
    patient_table: str | Path | None,
    max_gap_minutes: float,
    seed: int,
    write_splits: bool,
    split_options: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """The conversion proper, writing into ``out`` (the staging folder of :func:`convert_jnu_ifm`)."""
    from ultradino_monai.data.splits import jnu_splits

    with SourceTree(raw, work_root=out) as tree:
        videos, frame_label_files, other = discover_videos(tree.files(expand_nested_zips=True))
        if not videos:
            raise ConversionError(f"no video folders named YYYYMMDDTHHMMSS with image/ and mask/ found in {raw}")
        frames: list[tuple[str, str]] = []
        outside: dict[str, list[str]] = {kind: [] for kind in KINDS}
        per_kind = Counter()
        for video in sorted(videos):
            kinds = videos[video]
            stems = set(kinds["image"]) & set(kinds["mask"]) & set(kinds["mask_enhance"])
            for kind in KINDS:
                per_kind[kind] += len(kinds[kind])
                outside[kind].extend(kinds[kind][stem].path for stem in sorted(set(kinds[kind]) - stems))
            frames.extend((video, stem) for stem in sorted(stems))
        check_counts(
            {"frames": len(frames), "videos": len(videos)},
            {"frames": expect_frames, "videos": expect_videos},
            hint="JNU-IFM documents 6,224 frames (image ∩ mask ∩ mask_enhance) in 78 videos; for another tree "
            "pass --expect-frames/--expect-videos or --no-count-check.",
        )
        if patient_table is not None:
            patients = read_patient_table(patient_table, sorted(videos))
            grouping = f"patient table {patient_table}"
        else:
            patients = group_videos_by_time(sorted(videos), max_gap_minutes)
            grouping = f"same day and <= {max_gap_minutes:g} min start-to-start gap between consecutive videos"
        patient_count = len(set(patients.values()))
        if patient_count != EXPECTED_PATIENTS:
            logger.warning(
                "%d videos grouped into %d patients (the release README says %d); check patients.csv "
                "and pass --patient-table if the grouping is wrong",
                len(videos),
                patient_count,
                EXPECTED_PATIENTS,
            )

        frame_labels = {video: _read_frame_labels(source) for video, source in frame_label_files.items()}
        items: list[dict[str, Any]] = []
        dropped: list[dict[str, str]] = []
        shapes: Counter[str] = Counter()
        kept_per_video: Counter[str] = Counter()
        colour_images: list[str] = []
        unmatched_frame_labels = 0
        for number, (video, stem) in enumerate(frames, 1):
            image_source, mask_source = videos[video]["image"][stem], videos[video]["mask"][stem]
            image, was_colour = to_grayscale(
                read_png_array(image_source.read_bytes(), image_source.path), image_source.path
            )
            if was_colour:
                colour_images.append(stem)
            label = remap_mask(read_png_array(mask_source.read_bytes(), mask_source.path), mask_source.path)
            if label.shape != image.shape:
                raise ConversionError(
                    f"{mask_source.path}: mask size {label.shape} differs from the image's {image.shape}"
                )
            has_sp = bool(np.any(label == LABELS["pubic_symphysis"]))
            has_head = bool(np.any(label == LABELS["head"]))
            if not (has_sp and has_head):
                reason = "neither" if not (has_sp or has_head) else ("no_head" if has_sp else "no_pubic_symphysis")
                dropped.append({"frame": stem, "video": video, "reason": reason})
                continue
            name = stem if stem.startswith(f"{video}_") else f"{video}_{stem}"
            write_png_atomic(out / "images" / f"{name}.png", image)
            write_png_atomic(out / "labels" / f"{name}.png", label)
            shapes[f"{image.shape[1]}x{image.shape[0]}"] += 1
            kept_per_video[video] += 1
            item: dict[str, Any] = {
                "image": f"images/{name}.png",
                "label": f"labels/{name}.png",
                "patient": patients[video],
                "video": video,
                "id": name,
            }
            if video in frame_labels:
                value = _frame_label(stem, video, frame_labels[video])
                if value is None:
                    unmatched_frame_labels += 1
                else:
                    item["frame_label"] = value
            items.append(item)
            if number % 500 == 0:
                logger.info("processed %d / %d frames", number, len(frames))
        skipped = list(tree.skipped)

    if not items:
        raise ConversionError("every frame lacks the pubic symphysis or the head; nothing to write")
    if unmatched_frame_labels:
        logger.warning("%d kept frames have no row in their video's framelabel.csv", unmatched_frame_labels)
    logger.info("dropped %d of %d frames without both structures", len(dropped), len(frames))
    table = ["video,patient,frames_kept"] + [
        f"{video},{patients[video]},{kept_per_video[video]}" for video in sorted(videos)
    ]
    write_text_atomic(out / "patients.csv", "\n".join(table) + "\n")
    datalist_path = out / "datalist.json"
    write_datalist(datalist_path, {"training": items}, dataset="jnu_ifm", labels=dict(LABELS))

    reasons = Counter(entry["reason"] for entry in dropped)
    report: dict[str, Any] = {
        "dataset": "jnu_ifm",
        "input": str(raw),
        "counts": {
            "videos": len(videos),
            "files_per_kind": {kind: per_kind[kind] for kind in KINDS},
            "frames_intersection": len(frames),
            "frames_kept": len(items),
            "frames_dropped": len(dropped),
            "patients": len({patients[video] for video in videos}),
            "framelabel_files": len(frame_label_files),
            "ignored_files": len(other),
            "skipped_os_clutter": len(skipped),
        },
        "expected": {"frames": expect_frames, "videos": expect_videos, "patients": EXPECTED_PATIENTS},
        "labels": dict(LABELS),
        "source_values": {str(k): v for k, v in SOURCE_VALUES.items()},
        "patient_grouping": grouping,
        "image_sizes_wxh": dict(sorted(shapes.items())),
        "dropped_by_reason": dict(sorted(reasons.items())),
        "dropped_frames": dropped,
        "outside_intersection": outside,
        "colour_images": colour_images,
        "ignored_files": other,
        "skipped_os_clutter": skipped,
    }
    if write_splits:
        split_paths = jnu_splits(datalist_path, out / "splits", seed, **dict(split_options or {}))
        report["split_files"] = [path.relative_to(out).as_posix() for path in split_paths]
    write_json_atomic(out / "conversion_report.json", report)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m data_prep.jnu_ifm",
        description="Convert the JNU-IFM release (78 video folders) to grayscale PNGs, 0/1/2 label PNGs, "
        "datalist.json and patient-grouped split files.",
    )
    parser.add_argument("raw", type=Path, help="folder or zip holding the YYYYMMDDTHHMMSS video folders")
    parser.add_argument("out", type=Path, help="output folder (outside RAW)")
    parser.add_argument("--seed", type=int, default=0, help="base seed of the split files (default 0)")
    parser.add_argument("--patient-table", type=Path, help="CSV with columns video,patient (replaces the heuristic)")
    parser.add_argument(
        "--max-gap-minutes",
        type=float,
        default=60.0,
        help="heuristic: same-day videos at most this many minutes apart are one patient",
    )
    parser.add_argument("--expect-frames", type=int, default=EXPECTED_FRAMES)
    parser.add_argument("--expect-videos", type=int, default=EXPECTED_VIDEOS)
    parser.add_argument("--no-count-check", action="store_true", help="skip the frame / video count check")
    parser.add_argument("--no-splits", action="store_true", help="do not write splits/")
    parser.add_argument(
        "--jnu-val-includes-train-patients",
        action="store_true",
        help="few-shot validation = every non-test frame not used for training (paper wording; not patient-grouped)",
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    setup_logging(logging.DEBUG if args.verbose else logging.INFO)
    try:
        report = convert_jnu_ifm(
            args.raw,
            args.out,
            expect_frames=None if args.no_count_check else args.expect_frames,
            expect_videos=None if args.no_count_check else args.expect_videos,
            patient_table=args.patient_table,
            max_gap_minutes=args.max_gap_minutes,
            seed=args.seed,
            write_splits=not args.no_splits,
            split_options={"val_includes_train_patients": args.jnu_val_includes_train_patients},
        )
    except (ConversionError, DatalistError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    counts = report["counts"]
    print(
        f"JNU-IFM: {counts['frames_kept']} of {counts['frames_intersection']} frames kept "
        f"({counts['frames_dropped']} dropped without both structures) from {counts['videos']} videos, "
        f"{counts['patients']} patients -> {args.out}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
