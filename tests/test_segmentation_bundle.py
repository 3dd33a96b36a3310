"""Segmentation bundle end to end on the tiny FASS-like demo: CLI training, evaluation, inference, MONAI checks.

The default test trains a 4-block, 32-wide ViT at 32 px for a handful of iterations (seconds);
``-m slow`` runs the demo-scale few-shot comparison of the pretrain bundle's backbone with a
random init.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ultradino_monai.evaluation.aggregate import validate_record
from ultradino_monai.utils.files import sha256_file

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "segmentation"
CONFIGS = BUNDLE / "configs"
SCHEMA = REPO / "bundles" / "meta_schema.json"
FASS_LABELS = {"background": 0, "artery": 1, "liver": 2, "stomach": 3, "vein": 4}

# tiny network and schedule: 32 px (2x2 patch grid), 4 blocks of width 32, UPerHead width 16
TINY = {
    "pretrained_ckpt": "null",
    "image_size": 32,
    "scratch_arch": "vit_tiny",
    "scratch_overrides": {"depth": 4, "embed_dim": 32, "num_heads": 2},
    "decoder_channels": 16,
    "batch_size": 2,
    "val_batch_size": 2,
    "max_iterations": 5,
    "val_interval": 2,
    "warmup_iterations": 1,
    "log_interval": 1,
}


def _env():
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")  # the CI box has 2 cores shared by every test process
    return env


@pytest.fixture(scope="module")
def tiny_fass(tmp_path_factory):
    """The demo generator's FASS part at its test scale: 6 patients x 2 images, 120 x 160, patient-grouped splits."""
    from data_prep.demo import SCALES, generate_fass

    root = tmp_path_factory.mktemp("demo")
    generate_fass(root, seed=0, scale=SCALES["tiny"])
    document = json.loads((root / "fass" / "datalist.json").read_text())
    assert document["labels"] == FASS_LABELS
    assert all(document[s] for s in ("training", "validation", "test"))
    return root / "fass"


@pytest.fixture(scope="module")
def trained(tiny_fass, tmp_path_factory):
    """Train once through the real CLI (subprocess): python -m monai.bundle run --config_file train.json ..."""
    root = tmp_path_factory.mktemp("bundle")
    overrides = {**TINY, "bundle_root": str(root), "dataset_dir": str(tiny_fass)}
    args_file = root / "overrides.json"
    args_file.write_text(json.dumps(overrides))
    command = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        str(CONFIGS / "train.json"),
        "--args_file",
        str(args_file),
        "--max_iterations",
        "5",
    ]
    completed = subprocess.run(command, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    return root, overrides, completed.stdout + completed.stderr


def test_cli_training_writes_the_best_model_and_validation_log(trained):
    root, _, log = trained
    model_path = root / "models" / "model.pt"
    assert model_path.is_file()
    spec = json.loads((root / "models" / "model.json").read_text())
    assert spec["labels"] == FASS_LABELS and spec["num_classes"] == 5 and spec["image_size"] == [32, 32]
    assert spec["pretrained"]["source"] == "scratch" and spec["pretrained"]["sha256"] is None
    assert spec["backbone"]["config"]["num_register_tokens"] == 4  # registers kept by default
    records = [json.loads(line) for line in (root / "runs" / "demo" / "validation.jsonl").read_text().splitlines()]
    # validation every 2 iterations plus the final one at iteration 5 (not a multiple of 2)
    assert [r["iteration"] for r in records] == [2, 4, 5]
    best = max(records, key=lambda r: r["val_fg_dice"])
    assert spec["extra"]["best_validation"]["val_fg_dice"] == pytest.approx(best["val_fg_dice"])
    assert set(best["per_class"]) == set(FASS_LABELS)
    assert list((root / "runs" / "demo" / "tensorboard").glob("events.out.tfevents.*"))
    assert "randomly initialised" in log


def test_evaluate_writes_a_result_record_with_per_class_dice(trained, tiny_fass):
    from monai.bundle import ConfigWorkflow

    root, overrides, _ = trained
    result_path = root / "result.json"
    workflow = ConfigWorkflow(
        config_file=[str(CONFIGS / "train.json"), str(CONFIGS / "evaluate.json")],
        meta_file=str(CONFIGS / "metadata.json"),
        logging_file=str(CONFIGS / "logging.conf"),
        workflow_type="train",
        **{**overrides, "result_path": str(result_path), "seed": 3},
    )
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    record = json.loads(result_path.read_text())
    validate_record(record)
    assert record["task"] == "segmentation" and record["dataset"] == "fass" and record["seed"] == 3
    assert record["method"] == "scratch" and record["checkpoint"] is None and record["budget"] == "demo"
    assert record["backbone"] == "vit_custom_d32x4_patch16"
    assert record["section"] == "test" and record["split_kind"] == "datalist"
    metrics = record["metrics"]
    assert set(metrics["dice_per_class"]) == set(FASS_LABELS)
    test_items = json.loads((tiny_fass / "datalist.json").read_text())["test"]
    assert metrics["num_images"] == len(test_items)
    # recompute the headline number from the model on the test images with the shared metric
    from ultradino_monai.engines import segmentation as seg
    from ultradino_monai.evaluation.metrics import PooledDice

    model = seg.load_segmenter(root / "models" / "model.pt")
    spec = seg.read_model_spec(root / "models" / "model.pt")
    transform = seg.segmentation_transforms(spec["image_size"], spec["mean"], spec["std"], 1)
    dice = PooledDice(5)
    with torch.no_grad():
        for item in seg.section_items(tiny_fass / "datalist.json", "test"):
            sample = transform(item)
            dice.update(model(sample["image"][None]), sample["label"][None])
    expected = dice.compute()
    assert metrics["foreground_dice"] == pytest.approx(expected["foreground_mean"], nan_ok=True)
    assert record["model_sha256"] == sha256_file(root / "models" / "model.pt")


def test_inference_writes_masks_and_overlays_at_the_original_size(trained, tiny_fass):
    from monai.bundle import ConfigWorkflow

    root, _, _ = trained
    input_dir = tiny_fass / "images"
    output_dir = root / "inference"
    workflow = ConfigWorkflow(
        config_file=str(CONFIGS / "inference.json"),
        meta_file=str(CONFIGS / "metadata.json"),
        logging_file=str(CONFIGS / "logging.conf"),
        workflow_type="inference",
        bundle_root=str(root),
        input_dir=str(input_dir),
        output_dir=str(output_dir),
        batch_size=4,
    )
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    images = sorted(input_dir.glob("*.png"))
    index = json.loads((output_dir / "predictions.json").read_text())
    assert index["labels"] == FASS_LABELS and len(index["images"]) == len(images)
    for image_path in images:
        original = np.asarray(Image.open(image_path))
        mask = np.asarray(Image.open(output_dir / "masks" / image_path.name))
        overlay = np.asarray(Image.open(output_dir / "overlays" / image_path.name))
        assert mask.shape == original.shape[:2] and mask.dtype == np.uint8 and mask.max() < 5
        assert overlay.shape == original.shape[:2] + (3,)
        background = mask == 0
        # background pixels of the overlay are the untouched grey image
        np.testing.assert_array_equal(overlay[background][:, 0], original[background])


def test_verify_metadata_and_net_in_out(trained, tiny_fass):
    from monai.bundle import verify_metadata, verify_net_in_out

    verify_metadata(meta_file=str(CONFIGS / "metadata.json"), filepath=str(SCHEMA))
    root, overrides, _ = trained
    # the training definition with tiny settings (a random backbone) ...
    verify_net_in_out(
        net_id="network_def",
        meta_file=str(CONFIGS / "metadata.json"),
        config_file=str(CONFIGS / "train.json"),
        device="cpu",
        n=1,
        **{k: v for k, v in overrides.items() if k not in ("max_iterations",)},
    )
    # ... and the trained model as inference.json rebuilds it
    verify_net_in_out(
        net_id="network_def",
        meta_file=str(CONFIGS / "metadata.json"),
        config_file=str(CONFIGS / "inference.json"),
        device="cpu",
        n=2,
        bundle_root=str(root),
    )


def test_train_config_has_the_model_zoo_properties(tiny_fass, tmp_path):
    from monai.bundle import ConfigWorkflow

    workflow = ConfigWorkflow(
        config_file=str(CONFIGS / "train.json"),
        meta_file=str(CONFIGS / "metadata.json"),
        logging_file=str(CONFIGS / "logging.conf"),
        workflow_type="train",
        **{**TINY, "bundle_root": str(tmp_path), "dataset_dir": str(tiny_fass)},
    )
    workflow.initialize()
    assert workflow.check_properties() in (None, [])
    assert workflow.parser.get_parsed_content("num_classes") == 5
    # paper overlay: 224 px, C = D, batch 64, 20k iterations, validation every 450, warmup 1500
    paper = json.loads((CONFIGS / "paper.json").read_text())
    assert (paper["image_size"], paper["decoder_channels"], paper["batch_size"]) == (224, None, 64)
    assert (paper["max_iterations"], paper["val_interval"], paper["warmup_iterations"]) == (20000, 450, 1500)
    assert paper["budget"] == "paper" and paper["layer_decay"] is True and paper["keep_registers"] is True


def test_missing_dataset_is_a_clear_error(tmp_path):
    from ultradino_monai.engines import segmentation as seg

    with pytest.raises(FileNotFoundError, match="python -m data_prep.fass"):
        seg.segmentation_datalist(tmp_path / "nowhere")


# --------------------------------------------------------------------------- slow: pretrained vs random init
def _run_cli(configs, overrides, cwd, timeout):
    args_file = Path(overrides["output_dir"]) / "args.json"
    args_file.parent.mkdir(parents=True, exist_ok=True)
    args_file.write_text(json.dumps(overrides))
    command = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        json.dumps([str(c) for c in configs]),
        "--args_file",
        str(args_file),
    ]
    completed = subprocess.run(command, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]


@pytest.mark.slow
def test_fewshot_pretrained_backbone_is_ahead_of_random_init(tmp_path, demo_backbone):
    """Demo FASS, few-shot n = 20 (ultradino_monai.data.splits), 4 draws, same seed and schedule for both arms.

    The backbone is the ``demo_backbone`` fixture (tests/conftest.py). The random-init arm has the
    pretrained backbone's exact architecture.
    Both arms run through the shared repeat driver (train + evaluate per draw, mean ± SEM).

    The protocol is the demo grid's FASS (n=20) cell (``experiments/demo.yaml``: the bundle's demo
    recipe, 200 iterations, the same 4 draws). The paper-scale +5 Dice is out of reach at 64 px
    (bundles/segmentation/docs/README.md); the paper's claim is tested by ``experiments/gpu.sh``.
    Asserted: the pretrained arm is ahead, one-sided at 95 %: the lower end of the two-sided 90 %
    t interval of the paired difference (same split, same seed) lies above 0. The demo grid of
    2026-12-04 measured the differences +0.46, +2.04, +1.28, +0.52 Dice (interval [+0.20, +1.95];
    the report's two-sided 95 % interval, [-0.11, +2.26], says ``within noise``). An untrained
    export in place of the pretrained one must fail it (tests/README.md says how to run that check).
    """
    from data_prep.demo import generate_demo
    from ultradino_monai.data.splits import fass_splits
    from ultradino_monai.evaluation import repeat
    from ultradino_monai.evaluation.paired import paired_by_key

    demo_dir = tmp_path / "demo"
    generate_demo(demo_dir, seed=0)
    backbone = demo_backbone
    sidecar = json.loads(backbone.with_suffix(".json").read_text())
    splits = [
        p
        for p in fass_splits(demo_dir / "fass" / "datalist.json", tmp_path / "splits", seed=0, num_draws=4)
        if p.name.startswith("fewshot_n20_draw")
    ]
    assert len(splits) == 4

    common = {
        "image_size": 64,
        "decoder_channels": 64,
        "batch_size": 8,
        "max_iterations": 200,
        "val_interval": 50,
        "warmup_iterations": 20,
        "scratch_arch": sidecar["arch"] if sidecar["arch"] != "custom" else "vit_tiny",
        "scratch_overrides": {k: sidecar[k] for k in ("embed_dim", "depth", "num_heads")},
        "bundle_root": str(tmp_path),
    }
    means = {}
    # "none", not None: the bundle CLI drops None overrides and would load the default export
    for arm, checkpoint in (("pretrained", str(backbone)), ("scratch", "none")):
        summary = repeat.repeat(
            CONFIGS / "train.json",
            tmp_path / "runs" / arm,
            seeds=[0],
            split_files=splits,
            eval_config_file=CONFIGS / "evaluate.json",
            overrides={**common, "pretrained_ckpt": checkpoint},
            stop_on_error=True,
        )
        (row,) = summary.rows
        assert row["n"] == 4 and row["split_kind"] == "fewshot_n20"
        means[arm] = row
        print(
            f"{arm}: foreground Dice {100 * row['mean']:.2f} ± {100 * row['sem']:.2f} "
            f"(runs {[round(r[2], 4) for r in row['runs']]})"
        )
    assert means["pretrained"]["method"] == "UltraDINO" and means["scratch"]["method"] == "scratch"
    pretrained = {Path(split).name: value for split, _, value in means["pretrained"]["runs"]}
    scratch = {Path(split).name: value for split, _, value in means["scratch"]["runs"]}
    comparison, pairs = paired_by_key(pretrained, scratch, confidence=0.90)
    assert pairs == sorted(p.name for p in splits)
    print(
        f"paired difference (pretrained - scratch) {[round(100 * d, 2) for d in comparison.differences]}, "
        f"90 % interval [{100 * comparison.low:.2f}, {100 * comparison.high:.2f}] Dice: {comparison.verdict}"
    )
    assert comparison.verdict == "ahead", "the pretrained arm is not ahead of random init (one-sided 95 %)"


@pytest.mark.slow
def test_multi_gpu_config_trains_with_torchrun_on_cpu(tiny_fass, tmp_path):
    """torchrun with 2 gloo processes: DDP, rank-strided sampler, sharded validation, rank-0 outputs."""
    args_file = tmp_path / "args.json"
    args_file.write_text(
        json.dumps({**TINY, "batch_size": 4, "bundle_root": str(tmp_path), "dataset_dir": str(tiny_fass)})
    )
    configs = json.dumps([str(CONFIGS / "train.json"), str(CONFIGS / "multi_gpu_train.json")])
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nnodes=1",
            "--nproc_per_node=2",
            "-m",
            "monai.bundle",
            "run",
            "--config_file",
            configs,
            "--args_file",
            str(args_file),
        ],
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    records = [json.loads(line) for line in (tmp_path / "runs" / "demo" / "validation.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in records] == [2, 4, 5]  # written once (rank 0), not once per rank
    state = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    assert not any(key.startswith("module.") for key in state)  # the DDP wrapper is not saved
