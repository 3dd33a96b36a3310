"""De-identification audit page ``OUTPUT/qc/index.html``, built from an ingest output folder alone.

    python -m data_prep.ingest.report OUTPUT [--seed 0]

``run_ingest`` writes the page at the end of every run (and so rewrites it on resume); this command
regenerates it from ``report.json``, ``manifest.csv``, ``quarantine.csv``, the key check in
``.ingest_state/`` and the written frames.  Everything it shows is de-identified output: counts, reason
codes, input *positions*, keyed pseudonyms, shifted dates, manufacturer/model (kept by the allowlist) and
thumbnails of written (cropped) frames.  It never opens INPUT.

Scale: ``manifest.csv`` is streamed once with :mod:`csv`; memory grows with the number of patients,
studies and instances (one set entry each), never with frames, and the page size is bounded by
fixed-size histograms, capped tables and a fixed thumbnail budget (:data:`THUMBNAIL_BUDGET`).
The page is deterministic: same output folder and seed, same bytes (no timestamps), so a resumed run
still ends byte-identical to an uninterrupted one.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import random
import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ultradino_monai.utils.files import write_bytes_atomic

from .atomic import TEMP_PREFIX

logger = logging.getLogger(__name__)

__all__ = ["REPORT_PATH", "ReportError", "AuditData", "collect", "write_report", "main"]

REPORT_PATH = "qc/index.html"
#: thumbnails per device model on the contact sheet, at most
SHEET_SIZE = 24
#: thumbnails on the whole page, at most (contact sheets plus OCR section); bounds the page size
THUMBNAIL_BUDGET = 288
#: input positions listed per reason code (the rest is counted)
POSITIONS_SHOWN = 12
_PSEUDONYM_RE = re.compile(r"^[PSRI][0-9a-f]{16}$")


class ReportError(ValueError):
    """The folder is not a finished ingest output (no report.json or manifest.csv)."""


@dataclass
class Frame:
    """One written frame picked for a thumbnail (all fields are output values)."""

    image: str
    position: int
    instance: str
    frame: int
    doppler: bool


@dataclass
class ModelStats:
    """Per device model (manufacturer + model name, as kept by the allowlist)."""

    manufacturer: str
    model: str
    frames: int = 0
    doppler: int = 0
    policies: Counter = field(default_factory=Counter)
    region_types: Counter = field(default_factory=Counter)
    crop_sizes: Counter = field(default_factory=Counter)
    transfer_syntaxes: Counter = field(default_factory=Counter)
    devices: set = field(default_factory=set)
    spacing: list = field(default_factory=lambda: [float("inf"), float("-inf")])
    spacing_missing: int = 0
    sample: list = field(default_factory=list)


@dataclass
class AuditData:
    """Everything the page shows, gathered in one pass over the output folder."""

    report: dict[str, Any]
    key_fingerprint: str | None
    rows: int = 0
    doppler: int = 0
    patients: Counter = field(default_factory=Counter)  # patient -> frames
    studies: set = field(default_factory=set)
    series: set = field(default_factory=set)
    instances: set = field(default_factory=set)
    date_range: tuple[str, str] | None = None
    dated_rows: int = 0
    ga_days: Counter = field(default_factory=Counter)
    widths: Counter = field(default_factory=Counter)
    heights: Counter = field(default_factory=Counter)
    policies: Counter = field(default_factory=Counter)
    verified: int = 0
    ocr: Counter = field(default_factory=Counter)
    bad_paths: int = 0
    models: dict[tuple[str, str], ModelStats] = field(default_factory=dict)
    file_reasons: dict[tuple[str, str], list] = field(default_factory=dict)  # -> [count, positions]
    frame_reasons: Counter = field(default_factory=Counter)
    ocr_positions: set = field(default_factory=set)
    ocr_inputs_by_reason: dict[str, set] = field(default_factory=dict)
    ocr_sample: list = field(default_factory=list)
    ocr_seen: int = 0

    non_pseudonyms: int = 0  # distinct patient/study/series/instance values that are not keyed pseudonyms


def _offer(rng: random.Random, sample: list, seen: int, row: list, columns: tuple[int, ...]) -> None:
    """Seeded uniform sample of :data:`SHEET_SIZE` rows from a stream (Algorithm R); ``seen`` counts this row."""
    if len(sample) < SHEET_SIZE:
        j = len(sample)
        sample.append(None)
    else:
        j = int(rng.random() * seen)
        if j >= SHEET_SIZE:
            return
    i_image, i_position, i_instance, i_frame, i_doppler = columns
    sample[j] = Frame(row[i_image], int(row[i_position]), row[i_instance], int(row[i_frame]), row[i_doppler] == "1")


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return document if isinstance(document, dict) else None


def _read_quarantine(path: Path, data: AuditData) -> None:
    if not path.is_file():
        return
    with open(path, newline="", encoding="utf-8") as stream:
        for row in csv.DictReader(stream):
            reason, position = row["reason"], int(row["position"])
            if row["frame"] == "":
                entry = data.file_reasons.setdefault((row["outcome"], reason), [0, []])
                entry[0] += 1
                if len(entry[1]) < POSITIONS_SHOWN:
                    entry[1].append(position)
            else:
                data.frame_reasons[reason] += 1
                if reason.startswith("ocr_"):
                    data.ocr_positions.add(position)
                    data.ocr_inputs_by_reason.setdefault(reason, set()).add(position)


def _float(text: str) -> float | None:
    try:
        return float(text) if text else None
    except ValueError:
        return None


def _read_manifest(path: Path, data: AuditData, seed: int) -> None:
    rng = random.Random(seed)
    low_date, high_date = "9999", ""
    with open(path, newline="", encoding="utf-8") as stream:
        reader = csv.reader(stream)
        columns = {name: index for index, name in enumerate(next(reader, []))}
        missing = {"image", "patient", "study", "instance", "frame", "manufacturer", "model"} - set(columns)
        if missing:
            raise ReportError(f"{path} lacks the columns {sorted(missing)}; is it an ingest manifest?")
        c = columns.__getitem__
        (i_image, i_patient, i_study, i_series, i_instance, i_frame, i_position, i_manufacturer, i_model) = map(
            c, ("image", "patient", "study", "series", "instance", "frame", "input_position", "manufacturer", "model")
        )
        (i_device, i_syntax, i_width, i_height, i_doppler, i_policy, i_region, i_x0, i_y0, i_x1, i_y1) = map(
            c,
            ("device", "transfer_syntax", "width", "height", "doppler", "pixel_policy", "region_type")
            + ("crop_x0", "crop_y0", "crop_x1", "crop_y1"),
        )
        i_row_mm, i_col_mm, i_date, i_ga, i_verified, i_ocr = map(
            c, ("spacing_row_mm", "spacing_col_mm", "study_date", "gestational_age_days", "pixels_verified", "ocr")
        )
        models, patients, ocr_positions = data.models, data.patients, data.ocr_positions
        thumbnail_columns = (i_image, i_position, i_instance, i_frame, i_doppler)
        for row in reader:
            data.rows += 1
            patient, study, instance = row[i_patient], row[i_study], row[i_instance]
            patients[patient] += 1
            data.studies.add(study)
            data.series.add(row[i_series])
            data.instances.add(instance)
            if not row[i_image].startswith(f"images/{patient}/{study}/{instance}_"):
                data.bad_paths += 1
            doppler = row[i_doppler] == "1"
            data.doppler += doppler
            date = row[i_date]
            if date:
                data.dated_rows += 1
                low_date, high_date = min(low_date, date), max(high_date, date)
            if row[i_ga]:
                data.ga_days[int(row[i_ga])] += 1
            data.widths[row[i_width]] += 1
            data.heights[row[i_height]] += 1
            policy = row[i_policy]
            data.policies[policy] += 1
            data.verified += row[i_verified] == "1"
            data.ocr[row[i_ocr]] += 1
            key = (row[i_manufacturer], row[i_model])
            stats = models.get(key)
            if stats is None:
                stats = models[key] = ModelStats(*key)
            stats.frames += 1
            stats.doppler += doppler
            stats.policies[policy] += 1
            stats.region_types[row[i_region] or "-"] += 1
            stats.crop_sizes[(row[i_x0], row[i_y0], row[i_x1], row[i_y1])] += 1
            stats.transfer_syntaxes[row[i_syntax]] += 1
            stats.devices.add(row[i_device])
            spacing = _float(row[i_row_mm])
            if spacing is None:
                stats.spacing_missing += 1
            else:
                column = _float(row[i_col_mm]) or spacing
                stats.spacing[0] = min(stats.spacing[0], spacing, column)
                stats.spacing[1] = max(stats.spacing[1], spacing, column)
            _offer(rng, stats.sample, stats.frames, row, thumbnail_columns)
            if ocr_positions and int(row[i_position]) in ocr_positions:
                data.ocr_seen += 1
                _offer(rng, data.ocr_sample, data.ocr_seen, row, thumbnail_columns)
    if data.dated_rows:
        data.date_range = (low_date, high_date)


def collect(output_dir: str | Path, seed: int = 0) -> AuditData:
    """Read one ingest output folder into :class:`AuditData` (streams ``manifest.csv`` once).

    Raises:
        ReportError: ``report.json`` or ``manifest.csv`` is missing or unreadable.
    """
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        raise ReportError(f"OUTPUT folder not found: {output_dir}")
    report = _read_json(output_dir / "report.json")
    if report is None or not isinstance(report.get("files"), dict):
        raise ReportError(f"{output_dir} has no readable report.json; run `python -m data_prep.ingest` into it first")
    if not (output_dir / "manifest.csv").is_file():
        raise ReportError(f"{output_dir} has no manifest.csv; run `python -m data_prep.ingest` into it first")
    key_check = _read_json(output_dir / ".ingest_state" / "key_check.json") or {}
    data = AuditData(report=report, key_fingerprint=key_check.get("key_check"))
    _read_quarantine(output_dir / "quarantine.csv", data)
    _read_manifest(output_dir / "manifest.csv", data, seed)
    data.non_pseudonyms = sum(
        1
        for kind, values in (("P", data.patients), ("S", data.studies), ("R", data.series), ("I", data.instances))
        for value in values
        if not (value.startswith(kind) and _PSEUDONYM_RE.match(value))
    )
    return data


def write_report(output_dir: str | Path, seed: int = 0) -> Path:
    """Build and atomically write ``OUTPUT/qc/index.html``; returns its path.

    Args:
        output_dir: a finished ingest output folder.
        seed: seeds the contact-sheet sample (same folder and seed: same page bytes).
    """
    from .report_html import render

    output_dir = Path(output_dir)
    data = collect(output_dir, seed)
    page = render(data, output_dir, seed).encode("utf-8")
    target = output_dir / REPORT_PATH
    write_bytes_atomic(target, page, prefix=TEMP_PREFIX)
    logger.info("audit page: %s (%d bytes, %d manifest rows)", target, len(page), data.rows)
    return target


def main(argv: list[str] | None = None) -> int:
    """CLI: 0 when the page was written, 2 with a one-line message when OUTPUT is not an ingest output."""
    from ultradino_monai.utils.logs import setup_logging

    parser = argparse.ArgumentParser(
        prog="python -m data_prep.ingest.report",
        description="Regenerate OUTPUT/qc/index.html, the de-identification audit page, from an ingest output folder.",
    )
    parser.add_argument("output", metavar="OUTPUT", help="folder written by python -m data_prep.ingest")
    parser.add_argument("--seed", type=int, default=0, help="seed of the contact-sheet sample (default 0)")
    args = parser.parse_args(argv)
    setup_logging(logging.WARNING)
    try:
        target = write_report(args.output, args.seed)
    except (ReportError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"audit page: {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
