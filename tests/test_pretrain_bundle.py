"""The pretrain bundle through the real CLI: outputs, export, resume, determinism, torchrun, inference."""

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

from data_prep.phantom import PLANE_CLASSES, render_plane
from ultradino_monai.data.datalist import write_datalist
from ultradino_monai.networks.checkpoints import load_backbone

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "bundles" / "pretrain" / "configs"

TINY = [
    "--backbone_overrides",
    "{'depth': 2, 'embed_dim': 48, 'num_heads': 2}",
    "--patch_size",
    "8",
    "--global_crops_size",
    "32",
    "--local_crops_size",
    "16",
    "--n_local_crops",
    "2",
    "--num_prototypes",
    "64",
    "--head_hidden_dim",
    "64",
    "--head_bottleneck_dim",
    "32",
    "--global_batch_size",
    "4",
    "--epoch_length",
    "2",
    "--eval_interval",
    "2",
    "--checkpoint_interval",
    "2",
    "--log_interval",
    "1",
    "--warmup_teacher_temp_epochs",
    "1",
]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    """An 'ingested' pretraining set and a labelled plane set, rendered by the phantom."""
    root = tmp_path_factory.mktemp("pretrain_data")
    rng = np.random.default_rng(0)
    (root / "frames").mkdir()
    (root / "planes").mkdir()
    frames = []
    for index in range(12):
        image = render_plane(PLANE_CLASSES[index % 6], rng, shape=(72, 96)).image
        Image.fromarray(image).save(root / "frames" / f"{index}.png")
        frames.append({"image": str(root / "frames" / f"{index}.png"), "patient": f"p{index}"})
    write_datalist(root / "frames" / "datalist.json", {"training": frames})
    training, validation = [], []
    for index in range(18):
        image = render_plane(PLANE_CLASSES[index % 6], rng, shape=(72, 96)).image
        Image.fromarray(image).save(root / "planes" / f"{index}.png")
        item = {"image": str(root / "planes" / f"{index}.png"), "label": index % 6, "patient": f"q{index}"}
        (training if index < 12 else validation).append(item)
    write_datalist(
        root / "planes" / "datalist.json", {"training": training, "validation": validation}, classes=PLANE_CLASSES
    )
    return root


def run_bundle(config_files, *overrides, env=None, launcher=None, timeout=600):
    config = "[" + ",".join(f"'{CONFIGS / name}'" for name in config_files) + "]"
    command = (launcher or [sys.executable]) + ["-m", "monai.bundle", "run", "--config_file", config, *overrides]
    result = subprocess.run(
        command, cwd=REPO, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return result


def train(tiny_data, out, *extra, epochs=2, configs=("train.json",), **kwargs):
    return run_bundle(
        configs,
        "--dataset_dir",
        str(tiny_data / "frames"),
        "--knn_datalist",
        str(tiny_data / "planes" / "datalist.json"),
        "--bundle_root",
        str(out),
        "--run_name",
        "run",
        "--epochs",
        str(epochs),
        *TINY,
        *extra,
        **kwargs,
    )


def read_jsonl(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


@pytest.fixture(scope="module")
def trained(tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("bundle_root")
    result = train(tiny_data, out, "--deterministic", "true")
    return out, result


def test_metadata_verifies_against_cached_schema():
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "monai.bundle",
            "verify_metadata",
            "--meta_file",
            str(CONFIGS / "metadata.json"),
            "--filepath",
            str(REPO / "bundles" / "meta_schema.json"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "metadata is verified with no error" in result.stdout + result.stderr


def test_training_writes_checkpoints_logs_and_teacher_export(trained):
    out, result = trained
    run_dir = out / "runs" / "run"
    checkpoints = sorted((run_dir / "checkpoints").glob("checkpoint*.pt"))
    assert checkpoints, "no checkpoint written"
    state = torch.load(checkpoints[-1], map_location="cpu", weights_only=False)
    assert set(state) >= {"student", "teacher", "optimizer", "dino_loss", "ibot_loss", "trainer"}
    assert state["trainer"]["iteration"] == 4
    assert "center" in state["dino_loss"]

    records = read_jsonl(run_dir / "metrics.jsonl")
    train_records = [r for r in records if r["kind"] == "train"]
    assert [r["iteration"] for r in train_records] == [1, 2, 3, 4]
    for key in ("loss", "dino_loss", "ibot_loss", "koleo_loss", "lr", "wd", "momentum", "teacher_temp"):
        assert all(np.isfinite(r[key]) for r in train_records), key
    evals = [r for r in records if r["kind"] == "eval"]
    assert [r["iteration"] for r in evals] == [2, 4]
    assert all(0 <= r["knn_cls"] <= 100 and r["rankme_cls"] >= 1 for r in evals)
    assert any(r["kind"] == "reference" for r in records)
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))

    # the exported backbone is exactly the teacher backbone of the final checkpoint
    loaded = load_backbone(out / "models" / "backbone.pt", img_size=None)
    assert loaded.source == "ultradino"
    teacher = {k[len("backbone.") :]: v for k, v in state["teacher"].items() if k.startswith("backbone.")}
    exported = loaded.model.state_dict()
    assert set(exported) == set(teacher)
    for key, value in teacher.items():
        assert torch.equal(exported[key], value), key
    assert "backbone.pt" in result.stdout + result.stderr  # where the outputs went


def test_deterministic_runs_repeat_and_resume_continues(trained, tiny_data, tmp_path):
    out, _ = trained
    reference = [r["loss"] for r in read_jsonl(out / "runs" / "run" / "metrics.jsonl") if r["kind"] == "train"]

    # stop after 3 of 4 iterations, then resume: the same loss sequence as the straight run
    train(tiny_data, tmp_path, "--deterministic", "true", "--stop_at_iteration", "3")
    partial = [r["loss"] for r in read_jsonl(tmp_path / "runs" / "run" / "metrics.jsonl") if r["kind"] == "train"]
    assert partial == reference[:3]
    train(tiny_data, tmp_path, "--deterministic", "true", "--resume", "true")
    resumed = [r["loss"] for r in read_jsonl(tmp_path / "runs" / "run" / "metrics.jsonl") if r["kind"] == "train"]
    assert resumed == reference


def test_resume_without_checkpoint_fails_clearly(tiny_data, tmp_path):
    config = "['" + str(CONFIGS / "train.json") + "']"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "monai.bundle",
            "run",
            "--config_file",
            config,
            "--dataset_dir",
            str(tiny_data / "frames"),
            "--bundle_root",
            str(tmp_path),
            "--resume",
            "true",
            "--knn_datalist",
            "none",
            "--demo_dir",
            str(tmp_path / "no_demo"),
            *TINY,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode != 0
    assert "start without --resume" in result.stderr


def test_paper_overlay_runs_without_a_monitoring_set(tiny_data, tmp_path):
    """ultradino_vits16.json (knn_datalist null, sqrt lr scaling), shrunk by TINY to a few steps."""
    result = run_bundle(
        ("train.json", "ultradino_vits16.json"),
        "--dataset_dir",
        str(tiny_data / "frames"),
        "--bundle_root",
        str(tmp_path),
        "--run_name",
        "run",
        "--epochs",
        "1",
        "--warmup_epochs",
        "0",
        "--num_workers",
        "0",
        *TINY,
    )
    # sqrt scaling (docs/recipe.md §2): 0.004 * sqrt(4 / 1024) = 0.00025
    assert "peak lr 0.00025 (base 0.004, batch 4, scaling sqrt)" in result.stdout + result.stderr
    kinds = {record["kind"] for record in read_jsonl(tmp_path / "runs" / "run" / "metrics.jsonl")}
    assert kinds == {"train"}
    assert (tmp_path / "models" / "backbone.pt").is_file()


def test_missing_dataset_explains_ingestion(tmp_path):
    config = "['" + str(CONFIGS / "train.json") + "']"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "monai.bundle",
            "run",
            "--config_file",
            config,
            "--dataset_dir",
            str(tmp_path / "nowhere"),
            "--bundle_root",
            str(tmp_path),
            "--knn_datalist",
            "none",
            "--demo_dir",
            str(tmp_path / "no_demo"),
            *TINY,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode != 0
    assert "python -m data_prep.ingest" in result.stderr


def test_torchrun_two_processes_gloo(tiny_data, tmp_path):
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=2"]
    result = train(
        tiny_data,
        tmp_path,
        configs=("train.json", "multi_gpu_train.json"),
        launcher=launcher,
        env={"OMP_NUM_THREADS": "1"},
    )
    # finalize() compares the teacher on both ranks and raises if they differ
    assert "identical on all 2 ranks" in result.stdout + result.stderr
    checkpoints = sorted((tmp_path / "runs" / "run" / "checkpoints").glob("checkpoint*.pt"))
    state = torch.load(checkpoints[-1], map_location="cpu", weights_only=False)
    assert state["trainer"]["iteration"] == 4
    assert load_backbone(tmp_path / "models" / "backbone.pt", img_size=None).source == "ultradino"
    # global batch 4 over 2 ranks: each logged loss is rank 0's; rank 1 wrote nothing
    assert len([r for r in read_jsonl(tmp_path / "runs" / "run" / "metrics.jsonl") if r["kind"] == "train"]) == 4


def test_inference_writes_embeddings_and_attention_maps(trained, tiny_data, tmp_path):
    out, _ = trained
    run_bundle(
        ("inference.json",),
        "--backbone_path",
        str(out / "models" / "backbone.pt"),
        "--dataset_dir",
        str(tiny_data / "planes"),
        "--output_dir",
        str(tmp_path),
        "--image_size",
        "32",
        "--num_attention_images",
        "2",
    )
    embeddings = np.load(tmp_path / "embeddings.npz")
    assert embeddings["cls"].shape == (6, 48)
    assert embeddings["avgpool"].shape == (6, 48)
    assert embeddings["registers"].shape == (6, 4, 48)
    assert list(embeddings["label"]) == [index % 6 for index in range(12, 18)]
    overlays = sorted((tmp_path / "attention").glob("*.png"))
    assert len(overlays) == 2
    assert Image.open(overlays[0]).size[0] > Image.open(overlays[0]).size[1]  # image + one panel per head


def test_shard_mode_resume_with_workers_replays_the_straight_run(tiny_data, tmp_path):
    """Shards read by 2 DataLoader workers: stop after 3 of 4 iterations, resume, and get the straight run."""
    from data_prep.shards import write_shards

    shards = tmp_path / "shards"
    write_shards(tiny_data / "frames", shards, shard_size_mb=0.02)
    assert len(list(shards.glob("*.tar"))) >= 2

    def run(out, *extra):
        run_bundle(
            ("train.json",),
            *("--dataset_dir", str(shards), "--bundle_root", str(out), "--run_name", "run"),
            *("--knn_datalist", "none", "--num_workers", "2", "--log_samples", "true", "--deterministic", "true"),
            *("--epochs", "2"),
            *TINY,
            *extra,
        )
        run_dir = out / "runs" / "run"
        losses = [r["loss"] for r in read_jsonl(run_dir / "metrics.jsonl") if r["kind"] == "train"]
        return losses, (run_dir / "samples" / "rank0.txt").read_text().splitlines()

    straight_losses, straight_batches = run(tmp_path / "straight")
    assert len(straight_losses) == 4 and len(straight_batches) == 4
    stopped_losses, _ = run(tmp_path / "resumed", "--stop_at_iteration", "3")
    assert stopped_losses == straight_losses[:3]
    resumed_losses, resumed_batches = run(tmp_path / "resumed", "--resume", "true")
    assert resumed_losses == straight_losses
    assert resumed_batches == straight_batches  # the same frames in the same batches: no repeat, no gap
