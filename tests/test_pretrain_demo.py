"""The main command on the built-in demo: data generation, ingestion, pretraining, kNN gain (slow)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_main_command_beats_random_init_by_15_knn_points(tmp_path):
    start = time.monotonic()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "monai.bundle",
            "run",
            "--config_file",
            "bundles/pretrain/configs/train.json",
            "--demo_dir",
            str(tmp_path / "demo"),
            "--bundle_root",
            str(tmp_path / "bundle"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    elapsed = time.monotonic() - start
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    records = [
        json.loads(line) for line in (tmp_path / "bundle" / "runs" / "demo" / "metrics.jsonl").read_text().splitlines()
    ]
    reference = next(r for r in records if r["kind"] == "reference")
    final = [r for r in records if r["kind"] == "eval"][-1]
    best_random = max(reference["knn_cls"], reference["knn_avgpool"])
    print(
        f"demo pretraining: {elapsed:.0f} s; teacher kNN CLS {final['knn_cls']:.1f}% vs random init "
        f"{best_random:.1f}% (CLS {reference['knn_cls']:.1f}%, avgpool {reference['knn_avgpool']:.1f}%)"
    )
    assert final["knn_cls"] >= best_random + 15.0
    assert (tmp_path / "bundle" / "models" / "backbone.pt").is_file()
    assert (tmp_path / "demo" / "ingested" / "report.json").is_file()
