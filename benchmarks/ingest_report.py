"""Audit page at scale: time and size of ``OUTPUT/qc/index.html`` for a synthetic 2M-frame ingest output.

    python benchmarks/ingest_report.py [--rows 2000000] [--models 12] [--keep DIR]

It writes a synthetic ingest output folder (``manifest.csv`` with every ingest column, ``quarantine.csv``,
``report.json`` and the key check) of ``--rows`` frames: about 4 frames per instance, 10 instances per
study, 2 studies per patient, ``--models`` device models with their own geometry, one of them under a
mask-top policy, 2% of the inputs quarantined or skipped.  Only the frames the page will sample are
written as PNG files (the sample is seeded, so a dry run finds them); the timed run reads them for real.

In the same run, each in a fresh process, it times

* **reference**: reading ``manifest.csv`` with :func:`csv.reader` and nothing else;
* **report**: :func:`data_prep.ingest.report.write_report` (one streaming pass, thumbnails, HTML, write),

and prints both wall times, their ratio, each process's peak memory and the page size.  No test asserts
on these figures; they are machine-specific, which is why the reference is measured alongside.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from data_prep.ingest.pipeline import MANIFEST_COLUMNS, QUARANTINE_COLUMNS

SYNTAXES = ("JPEGBaseline8Bit", "ExplicitVRLittleEndian", "RLELossless", "JPEG2000Lossless")


def _hex(prefix: str, index: int) -> str:
    return f"{prefix}{index:016x}"


def write_synthetic_output(
    folder: Path,
    rows: int,
    models: int | list[tuple[str, str]] = 12,
    frames_per_instance: int = 4,
    seed: int = 0,
) -> dict:
    """Write a consistent synthetic ingest output (no images yet); returns its report.json document.

    Args:
        folder: the OUTPUT folder to create.
        rows: frames in ``manifest.csv``.
        models: how many device models, or explicit ``(manufacturer, model)`` pairs.
        frames_per_instance: frames per instance (the last instance may have fewer).
        seed: seeds gestational ages, dates and Doppler flags.
    """
    rng = random.Random(seed)
    names = models if isinstance(models, list) else [(f"Vendor {i % 5}", f"Model-{i:02d}") for i in range(models)]
    folder.mkdir(parents=True, exist_ok=True)
    instances = -(-rows // frames_per_instance)
    patients, studies, doppler, written = set(), set(), 0, 0
    with open(folder / "manifest.csv", "w", encoding="utf-8", newline="") as stream:
        stream.write(",".join(MANIFEST_COLUMNS) + "\n")
        for instance_index in range(instances):
            study_index, model_index = instance_index // 10, instance_index % len(names)
            patient_index = study_index // 2
            manufacturer, model = names[model_index]
            patient, study = _hex("P", patient_index), _hex("S", study_index)
            series, instance = _hex("R", instance_index // 3), _hex("I", instance_index)
            patients.add(patient_index)
            studies.add(study_index)
            width, height = 480 + 32 * (model_index % 6), 360 + 16 * (model_index % 5)
            mask = model_index == len(names) - 1
            crop = (0, 0, width - 1, height - 1) if mask else (40, 60, 40 + width - 1, 60 + height - 1)
            spacing = "" if mask else f"{0.18 + 0.01 * model_index:.6g}"
            ga = rng.randint(70, 290) if rng.random() < 0.9 else ""
            date = f"{2010 + study_index % 10}-{1 + study_index % 12:02d}-{1 + study_index % 28:02d}"
            frames = min(frames_per_instance, rows - written)
            for frame in range(frames):
                is_doppler = int(rng.random() < 0.1)
                doppler += is_doppler
                row = (
                    f"images/{patient}/{study}/{instance}_{frame:04d}.png",
                    patient,
                    study,
                    series,
                    instance,
                    frame,
                    instance_index,
                    "US Multi-frame Image Storage",
                    manufacturer,
                    model,
                    f"D{model_index:012x}",
                    SYNTAXES[model_index % len(SYNTAXES)],
                    "YBR_FULL_422",
                    frames,
                    width,
                    height,
                    3 if is_doppler else 1,
                    is_doppler,
                    "mask-top" if mask else "region",
                    "" if mask else "2d_tissue",
                    *crop,
                    spacing,
                    spacing,
                    date,
                    ga,
                    "YES",
                    0 if mask else 1,
                    "not_run",
                )
                stream.write(",".join(map(str, row)) + "\n")
            written += frames
    rejected = max(instances // 50, 1)
    reasons = [("quarantined", "no_tissue_region"), ("skipped", "secondary_capture"), ("quarantined", "decode_error")]
    counts: dict[str, dict[str, int]] = {"quarantined": {}, "skipped": {}}
    with open(folder / "quarantine.csv", "w", encoding="utf-8") as stream:
        stream.write(",".join(QUARANTINE_COLUMNS) + "\n")
        for index in range(rejected):
            outcome, reason = reasons[index % len(reasons)]
            stream.write(f"{instances + index},,{outcome},{reason}\n")
            counts[outcome][reason] = counts[outcome].get(reason, 0) + 1
    quarantined, skipped = sum(counts["quarantined"].values()), sum(counts["skipped"].values())
    report = {
        "format": 1,
        "files": {
            "found": instances + rejected,
            "converted": instances,
            "quarantined": quarantined,
            "skipped": skipped,
        },
        "reasons": {outcome: dict(sorted(c.items())) for outcome, c in counts.items()},
        "frames": {
            "written": rows,
            "doppler": doppler,
            "quarantined": {},
            "near_duplicates_removed": 0,
            "strided_out": 0,
        },
        "patients": len(patients),
        "studies": len(studies),
        "instances": instances,
        "options": {"frame_stride": 1, "keep_dicom": False, "ocr_check": False, "banner_policy": "mask-top-60"},
    }
    (folder / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (folder / ".ingest_state").mkdir(exist_ok=True)
    (folder / ".ingest_state" / "key_check.json").write_text(json.dumps({"key_check": "0f" * 16}) + "\n")
    return report


def write_sampled_frames(folder: Path, seed: int = 0) -> int:
    """Write a PNG for every frame the page will sample (a dry run of the seeded sample); returns the count."""
    from data_prep.ingest.report import collect

    data = collect(folder, seed)
    frames = [f for stats in data.models.values() for f in stats.sample] + data.ocr_sample
    rng = np.random.default_rng(seed)
    for frame in frames:
        path = folder / frame.image
        path.parent.mkdir(parents=True, exist_ok=True)
        # A speckled fan-free block with a bright band: compresses like a real B-mode frame.
        pixels = rng.gamma(2.0, 30.0, size=(240, 320)).clip(0, 255).astype(np.uint8)
        pixels[100 + frame.frame * 10 : 120 + frame.frame * 10] = 220
        Image.fromarray(pixels).save(path, format="PNG")
    return len(frames)


# Peak memory from /proc (VmHWM): ru_maxrss survives exec on Linux and would report this parent's peak.
_PEAK = "int(next(l for l in open('/proc/self/status') if l.startswith('VmHWM')).split()[1])"
_REFERENCE = f"""
import csv, sys, time
start = time.perf_counter()
rows = 0
with open(sys.argv[1], newline="", encoding="utf-8") as stream:
    for _ in csv.reader(stream):
        rows += 1
print(time.perf_counter() - start, {_PEAK}, rows)
"""
_REPORT = f"""
import sys, time
from data_prep.ingest.report import write_report
start = time.perf_counter()
path = write_report(sys.argv[1])
print(time.perf_counter() - start, {_PEAK}, path.stat().st_size)
"""


def _timed(script: str, argument: Path) -> tuple[float, int, int]:
    result = subprocess.run(
        [sys.executable, "-c", script, str(argument)], capture_output=True, text=True, check=True, env=dict(os.environ)
    )
    seconds, rss_kb, extra = result.stdout.split()
    return float(seconds), int(rss_kb), int(extra)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000, help="frames in the synthetic manifest")
    parser.add_argument("--models", type=int, default=12, help="device models")
    parser.add_argument("--keep", type=Path, default=None, help="write the output folder here and keep it")
    args = parser.parse_args(argv)
    folder = args.keep or Path(tempfile.mkdtemp(prefix="ingest_report_bench_")) / "output"
    try:
        start = time.perf_counter()
        report = write_synthetic_output(folder, args.rows, args.models)
        sampled = write_sampled_frames(folder)
        manifest_mb = (folder / "manifest.csv").stat().st_size / 1e6
        print(
            f"synthetic output: {args.rows:,} frames, {report['patients']:,} patients, {report['instances']:,} "
            f"instances, {args.models} models, manifest.csv {manifest_mb:.0f} MB, {sampled} sampled frames written "
            f"({time.perf_counter() - start:.0f} s to generate); CPUs: {os.cpu_count()}"
        )
        ref_s, ref_rss, rows = _timed(_REFERENCE, folder / "manifest.csv")
        page_s, page_rss, page_bytes = _timed(_REPORT, folder)
        print(f"{'step':<46}{'wall s':>8}{'peak RSS MB':>13}")
        print(f"{'reference: csv.reader over manifest.csv':<46}{ref_s:>8.1f}{ref_rss / 1024:>13.0f}")
        print(f"{'report: write_report (qc/index.html)':<46}{page_s:>8.1f}{page_rss / 1024:>13.0f}")
        print(
            f"report / reference: {page_s / ref_s:.2f}x; page size {page_bytes / 1e6:.2f} MB ({rows - 1:,} rows read)"
        )
    finally:
        if args.keep is None:
            shutil.rmtree(folder.parent, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
