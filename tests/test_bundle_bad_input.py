"""Bad input to the bundles through the real CLI: one ``error:`` line, exit code 2, nothing misleading left behind.

Each case runs ``python -m monai.bundle run --config_file ...`` (unchanged commands) on a corrupted copy of a
tiny datalist or with a bad argument, and checks: exit status 2; the message names the entry / file / value;
no traceback without ``--debug`` and one with it; no ``model.json``, ``model_final.pt``, run folder or
TensorBoard log written. The exhaustive corruption table runs in process (tests/test_datalist_validate.py);
these few cases pin the command-line contract per bundle and fail in the input check within seconds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_datalist_validate import make_classification_set, make_segmentation_set, paint_label

REPO = Path(__file__).resolve().parents[1]
BUNDLES = REPO / "bundles"


def run_cli(configs, *overrides, env=None):
    config = json.dumps([str(BUNDLES / c) for c in configs])
    environment = {k: v for k, v in os.environ.items() if k != "ULTRADINO_DEBUG"}
    environment.update(OMP_NUM_THREADS="1", **(env or {}))
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", config, *map(str, overrides)]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=environment, timeout=300)


def assert_clean_failure(result, pattern: str, bundle_root: Path, debug: bool = False) -> None:
    import re

    output = result.stdout + result.stderr
    assert result.returncode == 2, output[-3000:]
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(error_lines) == 1 and re.search(pattern, error_lines[0]), output[-3000:]
    assert ("Traceback" in output) == debug, output[-3000:]
    written = sorted(str(p.relative_to(bundle_root)) for p in bundle_root.rglob("*")) if bundle_root.exists() else []
    assert written == [], f"left behind: {written}"


@pytest.fixture(scope="module")
def seg_set(tmp_path_factory):
    return make_segmentation_set(tmp_path_factory.mktemp("seg") / "data").parent


@pytest.fixture(scope="module")
def cls_set(tmp_path_factory):
    return make_classification_set(tmp_path_factory.mktemp("cls") / "data").parent


def copy_set(source: Path, target: Path) -> Path:
    import shutil

    shutil.copytree(source, target)
    return target


SEG_TINY = ["--pretrained_ckpt", "null", "--image_size", "32", "--max_iterations", "2", "--warmup_iterations", "1"]


@pytest.mark.parametrize("debug", [False, True])
def test_segmentation_label_255_without_ignore_index(seg_set, tmp_path, debug):
    data = copy_set(seg_set, tmp_path / "data")
    shown = paint_label(data / "datalist.json", "training", 2, 255)
    root = tmp_path / "bundle"
    extra = ["--debug"] if debug else []
    result = run_cli(
        ["segmentation/configs/train.json"], "--dataset_dir", data, "--bundle_root", root, *SEG_TINY, *extra
    )
    pattern = (
        rf"datalist\.json: training\[2\] label value 255 not in labels \{{0\.\.4\}} \(file {shown}\); pass --ignore"
    )
    assert_clean_failure(result, pattern, root, debug=debug)


def test_segmentation_empty_dataset_dir(tmp_path):
    root = tmp_path / "bundle"
    result = run_cli(["segmentation/configs/train.json"], "--dataset_dir", "", "--bundle_root", root, *SEG_TINY)
    assert_clean_failure(result, r"--dataset_dir is empty", root)
    assert "hint: pass the folder of a converted dataset" in result.stderr


def test_segmentation_batch_size_zero_writes_no_model_json(seg_set, tmp_path):
    root = tmp_path / "bundle"
    result = run_cli(
        ["segmentation/configs/train.json"], "--dataset_dir", seg_set, "--bundle_root", root, *SEG_TINY,
        "--batch_size", "0",
    )  # fmt: skip
    assert_clean_failure(result, r"--batch_size must be >= 1, got 0", root)


def test_segmentation_evaluate_without_a_trained_model(seg_set, tmp_path):
    root = tmp_path / "bundle"
    configs = ["segmentation/configs/train.json", "segmentation/configs/evaluate.json"]
    result = run_cli(configs, "--dataset_dir", seg_set, "--bundle_root", root, *SEG_TINY)
    assert_clean_failure(result, r"not found: .*models[/\\]model", root)


def test_classification_fractional_label(cls_set, tmp_path):
    data = copy_set(cls_set, tmp_path / "data")
    document = json.loads((data / "datalist.json").read_text())
    document["training"][3]["label"] = 2.7
    (data / "datalist.json").write_text(json.dumps(document))
    root = tmp_path / "bundle"
    result = run_cli(["classification/configs/train.json"], "--dataset_dir", data, "--bundle_root", root)
    assert_clean_failure(result, r"datalist\.json: training\[3\] label 2\.7 is not an integer class index", root)


def test_classification_bad_checkpoint_file(cls_set, tmp_path):
    checkpoint = tmp_path / "backbone.pt"
    checkpoint.write_bytes(b"not a checkpoint at all")
    root = tmp_path / "bundle"
    result = run_cli(
        ["classification/configs/train.json"], "--dataset_dir", cls_set, "--bundle_root", root,
        "--pretrained_ckpt", checkpoint, "--if_missing", "error", "--image_size", "32",
    )  # fmt: skip
    assert_clean_failure(result, rf"{checkpoint}: .*not a PyTorch checkpoint", root)


def test_pretrain_zero_byte_image(tmp_path):
    frames = tmp_path / "frames"
    frames.mkdir()
    items = []
    for index in range(4):
        Image.fromarray(np.full((32, 32), 40 * index, np.uint8)).save(frames / f"{index}.png")
        items.append({"image": f"{index}.png", "patient": f"p{index}"})
    (frames / "2.png").write_bytes(b"")
    (frames / "datalist.json").write_text(json.dumps({"training": items}))
    root = tmp_path / "bundle"
    result = run_cli(
        ["pretrain/configs/train.json"], "--dataset_dir", frames, "--bundle_root", root,
        "--knn_datalist", "none", "--demo_dir", tmp_path / "no_demo",
    )  # fmt: skip
    assert_clean_failure(
        result, r"frames[/\\]datalist\.json: training\[2\] image file is empty \(0 bytes\): 2\.png", root
    )
