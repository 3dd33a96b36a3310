"""The main command on the built-in demo: data generation, ingestion, pretraining, export (slow).

What the demo honestly reaches (bundles/pretrain/docs/README.md): its teacher kNN ends at 35-40 %
while the same architecture at random init scores 24.2 ± 4.0 % over init seeds 0-7 (15.6-28.1 %).
The paper-scale gain (+15 points) is not reachable by a 4-block ViT-Ti at 64 px; it is tested by
``experiments/gpu.sh`` on a GPU. So this test asserts what separates a backbone that learned
something from one that did not: the exported teacher's kNN lies above the random-init
distribution (mean + 2 SD over 8 init seeds, computed here with the run's own kNN monitor).

``ULTRADINO_PRETRAIN_OVERRIDES`` (a JSON object of bundle overrides) runs the same test on a
deliberately broken pipeline, e.g. ``{"base_lr": 0.0, "min_lr": 0.0, "epochs": 1}``: the optimiser
never moves, the export is the untrained teacher, and the test must fail (tests/README.md).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TRAIN_CONFIG = REPO / "bundles" / "pretrain" / "configs" / "train.json"
INIT_SEEDS = range(8)


def _monitor_scores(overrides: dict, backbone=None) -> dict[str, float]:
    """kNN of a backbone with the bundle's own monitor (SSLMonitor, same loader and protocol as the run).

    ``backbone=None`` scores the bundle's ``random_init_reference`` at ``overrides["seed"]``, built
    after the bundle's ``initialize`` step exactly as a run builds it.
    """
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(TRAIN_CONFIG))
    parser.update(overrides)
    parser.get_parsed_content("initialize")
    monitor = parser.get_parsed_content("train#handlers#0")
    if backbone is None:
        backbone = parser.get_parsed_content("random_init_reference")
    return monitor.evaluate(backbone.eval())


@pytest.mark.slow
def test_main_command_teacher_beats_the_random_init_distribution(tmp_path):
    from ultradino_monai.networks.checkpoints import load_backbone

    extra = json.loads(os.environ.get("ULTRADINO_PRETRAIN_OVERRIDES", "{}"))
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(TRAIN_CONFIG)]
    command += ["--demo_dir", str(tmp_path / "demo"), "--bundle_root", str(tmp_path / "bundle")]
    for key, value in extra.items():
        command += [f"--{key}", json.dumps(value)]
    start = time.monotonic()
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=1800)
    elapsed = time.monotonic() - start
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    export = tmp_path / "bundle" / "models" / "backbone.pt"
    assert export.is_file() and (tmp_path / "demo" / "ingested" / "report.json").is_file()
    records = [
        json.loads(line) for line in (tmp_path / "bundle" / "runs" / "demo" / "metrics.jsonl").read_text().splitlines()
    ]
    reference = next(r for r in records if r["kind"] == "reference")
    final = [r for r in records if r["kind"] == "eval"][-1]

    base = {"demo_dir": str(tmp_path / "demo"), "bundle_root": str(tmp_path / "bundle")}
    randoms = []
    for seed in INIT_SEEDS:
        scores = _monitor_scores({**base, "seed": seed, "output_dir": str(tmp_path / "init" / str(seed))})
        randoms.append(scores["knn_cls"])
    # the distribution is measured the way the run measured its own initialisation (seed 0)
    assert randoms[0] == pytest.approx(reference["knn_cls"], abs=0.6)
    loaded = load_backbone(export, img_size=None)
    exported = _monitor_scores({**base, "output_dir": str(tmp_path / "init" / "export")}, loaded.model)
    # the file is the teacher the run scored last (same weights, same protocol)
    assert exported["knn_cls"] == pytest.approx(final["knn_cls"], abs=1.1)

    mean, sd = statistics.mean(randoms), statistics.stdev(randoms)
    print(
        f"demo pretraining: {elapsed:.0f} s, {final['iteration']} iterations; exported teacher kNN CLS "
        f"{exported['knn_cls']:.1f}% (run's last eval {final['knn_cls']:.1f}%) vs random init "
        f"{mean:.1f} ± {sd:.1f}% over seeds {list(INIT_SEEDS)} ({', '.join(f'{v:.1f}' for v in randoms)}); "
        f"threshold mean + 2 SD = {mean + 2 * sd:.1f}%"
    )
    assert exported["knn_cls"] > mean + 2 * sd, "the exported teacher is not above the random-init distribution"
