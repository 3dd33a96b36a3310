"""``experiments/gpu.sh`` (the GPU experiment of ``experiments/gpu.yaml``): its one-line failures on
missing prerequisites (default suite) and, ``-m slow``, every step end to end on CPU at ``--scale tiny``:
demo data, ingestion, pretraining with the paper overlay, the few-shot cells of all three arms and
the report, with the pretrained arm provably fine-tuned from the run's own export.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "experiments" / "gpu.sh"


def _run(args, env=None, timeout=120):
    # the script's interpreter is $PYTHON (python3 by default, as on the GPU machine): this one, with the project
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHON": sys.executable, **(env or {})}
    return subprocess.run(
        ["bash", str(SCRIPT), *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )


def test_gpu_scale_without_a_gpu_fails_fast_with_one_line(tmp_path):
    # CUDA_VISIBLE_DEVICES="" hides any GPU, so this is the CPU machine's answer everywhere
    result = _run(["--out", str(tmp_path / "gpu")], env={"CUDA_VISIBLE_DEVICES": ""})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "experiments/gpu.sh: no CUDA device visible to torch (the CPU check is --scale tiny)"
    ]
    assert not (tmp_path / "gpu" / "demo").exists()  # nothing was generated before the check


def test_missing_modules_and_bad_arguments_fail_fast_with_one_line(tmp_path):
    # the system interpreter has none of the project's dependencies
    bare = "/usr/bin/python3" if Path("/usr/bin/python3").is_file() else None
    if bare is not None and subprocess.run([bare, "-c", "import monai"], capture_output=True).returncode != 0:
        result = _run(["--scale", "tiny", "--out", str(tmp_path / "a")], env={"PYTHON": bare, "PYTHONPATH": ""})
        assert result.returncode == 2
        (line,) = result.stderr.strip().splitlines()
        assert line.startswith("experiments/gpu.sh: missing Python modules: ") and " monai " in f" {line} "
        assert line.endswith("(or pass --no-nnunet to leave out the nnU-Net arm)")
    result = _run(["--scale", "huge"])
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["experiments/gpu.sh: --scale must be gpu or tiny, got 'huge'"]
    result = _run(["--bogus"])
    assert result.returncode == 2
    assert result.stderr.strip() == "experiments/gpu.sh: unknown argument --bogus (see --help)"


@pytest.mark.slow
def test_tiny_scale_runs_every_step_and_the_pretrained_arm_uses_the_export(tmp_path):
    out = tmp_path / "gpu"
    result = _run(["--scale", "tiny", "--out", str(out)], env={"OMP_NUM_THREADS": "2"}, timeout=2400)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    print(result.stdout)
    check_tiny_outputs(out, result.stdout)


def check_tiny_outputs(out: Path, stdout: str) -> None:
    """The assertions on a finished ``gpu.sh --scale tiny --out OUT`` (its printed output: ``stdout``)."""
    results = out / "results"
    assert f"report         {results}/report" in stdout

    # the pretraining ran with the paper overlay under the tiny overrides and exported its teacher
    export = out / "pretrain" / "models" / "backbone.pt"
    sidecar = json.loads(export.with_suffix(".json").read_text())
    assert (sidecar["embed_dim"], sidecar["depth"], sidecar["img_size"]) == (192, 4, 32)  # ViT-Ti, 4 blocks
    assert sidecar["extra"]["iterations"] == 4 and sidecar["init_values"] == 1e-05  # the paper overlay's LayerScale
    metrics = [json.loads(line) for line in (out / "pretrain" / "runs" / "gpu" / "metrics.jsonl").open()]
    assert any(r["kind"] == "eval" for r in metrics) and any(r["kind"] == "reference" for r in metrics)
    assert (out / "ingested" / "datalist.json").is_file()
    export_sha = hashlib.sha256(export.read_bytes()).hexdigest()

    # every cell: 2 tasks x 3 arms x 2 draws, the pretrained arm from this export, the random init from none
    records = {}
    for task in ("fass_fewshot", "jnu_fewshot"):
        for backbone in ("ultradino", "random_init", "nnunet"):
            files = sorted((results / task / backbone).glob("*/result.json"))
            assert len(files) == 2, (task, backbone, files)
            records[task, backbone] = [json.loads(f.read_text()) for f in files]
    for task in ("fass_fewshot", "jnu_fewshot"):
        assert {r["checkpoint_sha256"] for r in records[task, "ultradino"]} == {export_sha}
        assert {r["checkpoint_sha256"] for r in records[task, "random_init"]} == {None}
        assert {r["method"] for r in records[task, "random_init"]} == {"scratch"}
        assert all(r["image_size"] == [32, 32] for r in records[task, "ultradino"])
        # the arms are paired: the same split files
        assert {r["split_sha256"] for r in records[task, "ultradino"]} == {
            r["split_sha256"] for r in records[task, "random_init"]
        }

    report = results / "report"
    table = (report / "table1.md").read_text().splitlines()
    assert table[0] == "| Method (backbone) | FASS (n=20) | JNU (p=4) |"
    rows = [row.split(" | ")[0] for row in table[2:]]
    assert rows[:2] == [
        "| UltraDINO (tiny ViT-Ti/16 CPU check) [reduced budget: demo]",
        "| scratch (tiny ViT-Ti/16 CPU check) [reduced budget: demo]",
    ]
    # nnU-Net on the ViT arms' budget (4 steps x batch 2), through the budget trainer's name
    assert len(rows) == 3 and rows[2].startswith("| nnUNet (UNet) [reduced budget: nnUNetTrainer_UltraDINOBudget_")
    with open(report / "groups.csv", newline="") as stream:
        groups = {(row["experiment_task"], row["method"]): int(row["n"]) for row in csv.DictReader(stream)}
    arms = ("UltraDINO", "scratch", "nnUNet")
    assert groups == {(task, arm): 2 for task in ("fass_fewshot", "jnu_fewshot") for arm in arms}

    # one verdict row per pretrained-vs-baseline pair, with the paired mean difference of the records
    with open(report / "verdicts.csv", newline="") as stream:
        verdicts = {(r["task"], r["treatment_backbone"], r["baseline_backbone"]): r for r in csv.DictReader(stream)}
    tasks = ("fass_fewshot", "jnu_fewshot")
    assert set(verdicts) == {(task, "ultradino", baseline) for task in tasks for baseline in ("random_init", "nnunet")}
    for (task, _, baseline), row in verdicts.items():
        assert row["n"] == "2" and row["verdict"] in ("ahead", "behind", "within noise")
        assert row["matched_by"] == "steps x batch" and row["baseline_budget"].startswith(row["treatment_budget"])
        mine = {r["split_sha256"]: r["metrics"]["foreground_dice"] for r in records[task, "ultradino"]}
        theirs = {r["split_sha256"]: r["metrics"]["foreground_dice"] for r in records[task, baseline]}
        expected = sum(mine[key] - theirs[key] for key in mine) / len(mine)
        assert float(row["mean_difference"]) == pytest.approx(expected, abs=1e-9)
