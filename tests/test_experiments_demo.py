"""``experiments/demo.yaml`` end to end (slow): the documented commands, the table and every figure,
and the report's paired verdicts of the pretrained demo backbone against a random init of the same
architecture: ahead in the linear probe, not behind in FASS few-shot (tests/README.md).

The backbone is the ``demo_backbone`` fixture (tests/conftest.py). The issue's budget
for the grid is 30 minutes on 2 CPU cores; the measured time is printed.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def _env(**extra):
    env = {**os.environ, "PYTHONPATH": str(REPO), **extra}
    env.pop("OMP_NUM_THREADS", None)  # the runner gives each of its workers cores / workers threads
    return env


@pytest.mark.slow
def test_demo_grid_end_to_end(tmp_path, demo_backbone):
    backbone = demo_backbone
    results = tmp_path / "results"
    env = _env(ULTRADINO_PRETRAINED_BACKBONE=str(backbone))
    started = time.perf_counter()
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "ultradino_monai.experiments",
            "run",
            "experiments/demo.yaml",
            "--workers",
            "2",
            "--results_dir",
            str(results),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=3 * 3600,
    )
    minutes = (time.perf_counter() - started) / 60
    print(f"demo grid: {minutes:.1f} min on 2 workers")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
    # JNU / FASS few-shot 4 draws x 3 arms, FASS full 3 x 3, label efficiency 4 x 2 ViT arms,
    # fine-tuning 3 x 2, linear probe 4 x 2
    assert "55 cell(s): 0 already done, 55 run now, 0 failed" in run.stdout

    report = subprocess.run(
        [sys.executable, "-m", "ultradino_monai.experiments", "report", str(results)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert report.returncode == 0, report.stdout[-3000:] + report.stderr[-3000:]
    print(report.stdout)
    out = results / "report"
    table = (out / "table1.md").read_text()
    assert table.splitlines()[0] == "| Method (backbone) | JNU (p=4) | FASS (n=20) | FASS (full) | FT F1 | LP F1 |"
    # header, rule, the two ViT arms, and nnU-Net twice: its budget differs between the few-shot columns
    # (wall-clock) and FASS full (steps x batch), and each row states its budget
    assert len(table.splitlines()) == 6
    assert sum("nnUNetTrainer_UltraDINOBudget_" in line for line in table.splitlines()) == 2
    assert (out / "table1.csv").is_file()
    for name in ("label_efficiency.png", "fewshot_jnu_fewshot.png", "attention.png"):
        with Image.open(out / name) as image:
            assert image.format == "PNG" and image.size[0] > 400

    # what the demo reaches, from the report's paired verdicts (same split and seed, 95 % t interval):
    # the linear probe ahead of random init (a backbone that learned nothing is within noise there),
    # and FASS few-shot not behind it. JNU p = 4 is not asserted: the demo export is 5 Dice behind
    # there on average (4 draws on 2026-12-04: -4.8, -11.2, -5.3, -0.5; interval [-12.4, +1.6]), so
    # its verdict sits at the edge of `behind`. The paper's few-shot gain is experiments/gpu.sh's to show.
    with open(out / "verdicts.csv", newline="") as stream:
        verdicts = {
            (row["task"], row["treatment_backbone"], row["baseline_backbone"]): row for row in csv.DictReader(stream)
        }
    for task in ("jnu_fewshot", "fass_fewshot", "planes_linear_probe"):
        row = verdicts[(task, "ultradino", "random_init")]
        print(
            f"{task}: pretrained - random init {100 * float(row['mean_difference']):+.2f} "
            f"[{100 * float(row['low']):+.2f}, {100 * float(row['high']):+.2f}] over {row['n']} pairs: {row['verdict']}"
        )
    assert verdicts[("planes_linear_probe", "ultradino", "random_init")]["verdict"] == "ahead"
    assert verdicts[("fass_fewshot", "ultradino", "random_init")]["verdict"] != "behind"
    status = json.loads((results / "status.json").read_text())
    assert status["counts"]["failed"] == 0
