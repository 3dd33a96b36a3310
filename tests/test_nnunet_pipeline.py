"""nnU-Net baseline end to end on the tiny FASS-like demo at 64 x 64 (CPU, a 2 x 2-step budget trainer).

One ``python -m nnunet_baselines run`` (export -> plan with integrity check -> train
``nnUNetTrainer_UltraDINOBudget_2x2_b2`` (2 epochs x 2 iterations at batch 2, the budget read
from the name as the experiment grid's equal-budget arms do) -> checkpoint choice on val ->
predict test -> score -> compare) in a subprocess, so nnunetv2 reads the environment the
harness sets. The checks afterwards run in this process on the files it wrote.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ultradino_monai.evaluation.aggregate import load_results, validate_record

REPO = Path(__file__).resolve().parents[1]
DATASET_ID = 911
NAME = "DemoFASS"
FOLDER = f"Dataset{DATASET_ID}_{NAME}"
TRAINER = "nnUNetTrainer_UltraDINOBudget_2x2_b2"
MODEL_TAG = f"{TRAINER}__nnUNetPlans__2d"
SIZE = 64
NUM_CLASSES = 5


def _ids(split_file: Path, section: str) -> list[str]:
    from nnunet_baselines.export import case_id

    return [case_id(item) for item in json.loads(split_file.read_text())[section]]


@pytest.fixture(scope="module")
def env_restored():
    """Checks below call the harness in-process; it sets nnU-Net variables. Put os.environ back afterwards."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    from data_prep.demo import SCALES, generate_fass
    from ultradino_monai.data.splits import fass_splits

    root = tmp_path_factory.mktemp("nnunet_e2e")
    generate_fass(root, seed=0, scale=SCALES["tiny"])
    datalist = root / "fass" / "datalist.json"
    split_paths = fass_splits(
        datalist, root / "splits", seed=0, num_seeds=1, num_draws=1, fewshot_images=2, label_percentages=()
    )
    split_file = root / "splits" / "full_seed0.json"
    assert split_file in split_paths
    workdir = root / "work"
    env = {k: v for k, v in os.environ.items() if not k.startswith("nnUNet_")}
    # 2-core CI box: one pool worker, single-threaded augmentation (docs/datasets.md §2.8)
    env.update({"nnUNet_def_n_proc": "1", "nnUNet_n_proc_DA": "1", "OMP_NUM_THREADS": "1"})
    command = [
        sys.executable,
        "-m",
        "nnunet_baselines",
        "run",
        str(datalist),
        "--split-file",
        str(split_file),
        "--dataset-id",
        str(DATASET_ID),
        "--name",
        NAME,
        "--workdir",
        str(workdir),
        "--size",
        str(SIZE),
        "--trainer",
        TRAINER,
        "--device",
        "cpu",
        "--da-workers",
        "0",
    ]
    completed = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stdout[-4000:] + completed.stderr[-4000:]
    return {
        "root": root,
        "datalist": datalist,
        "split_file": split_file,
        "workdir": workdir,
        "stdout": completed.stdout,
    }


def test_raw_dataset_keeps_test_cases_out_of_training(pipeline):
    raw = pipeline["workdir"] / "nnUNet_raw" / FOLDER
    split_file = pipeline["split_file"]
    train_val = set(_ids(split_file, "training")) | set(_ids(split_file, "validation"))
    test = set(_ids(split_file, "test"))
    assert test and train_val and not (test & train_val)
    images_tr = {p.name[: -len("_0000.png")] for p in (raw / "imagesTr").glob("*_0000.png")}
    labels_tr = {p.stem for p in (raw / "labelsTr").glob("*.png")}
    images_ts = {p.name[: -len("_0000.png")] for p in (raw / "imagesTs").glob("*_0000.png")}
    assert images_tr == labels_tr == train_val
    assert images_ts == test
    assert not (images_tr & test)
    dataset_json = json.loads((raw / "dataset.json").read_text())
    assert dataset_json["numTraining"] == len(train_val)
    assert dataset_json["overwrite_image_reader_writer"] == "NaturalImage2DIO"
    assert dataset_json["channel_names"] == {"0": "US"}
    assert dataset_json["file_ending"] == ".png"
    assert dataset_json["labels"] == {"background": 0, "artery": 1, "liver": 2, "stomach": 3, "vein": 4}
    # the fingerprint was computed on training/validation cases only
    preprocessed = pipeline["workdir"] / "nnUNet_preprocessed" / FOLDER
    gt = {p.stem for p in (preprocessed / "gt_segmentations").glob("*.png")}
    assert gt == train_val


def test_splits_final_equals_our_split_file(pipeline):
    splits = json.loads((pipeline["workdir"] / "nnUNet_preprocessed" / FOLDER / "splits_final.json").read_text())
    assert len(splits) == 1
    assert sorted(splits[0]["train"]) == sorted(_ids(pipeline["split_file"], "training"))
    assert sorted(splits[0]["val"]) == sorted(_ids(pipeline["split_file"], "validation"))
    fold_dir = pipeline["workdir"] / "nnUNet_results" / FOLDER / MODEL_TAG / "fold_0"
    log = "".join(p.read_text() for p in fold_dir.glob("training_log_*.txt"))
    n_train, n_val = len(splits[0]["train"]), len(splits[0]["val"])
    # nnU-Net itself reports using the file, not its random 80:20 fallback
    assert f"This split has {n_train} training and {n_val} validation cases." in log
    assert "random (but seeded) 80:20 split" not in log
    summary = json.loads((fold_dir / "ultradino_train.json").read_text())
    assert summary["trainer"] == TRAINER and summary["epochs"] == 2 and summary["device"] == "cpu"


def test_predictions_have_grid_shape_and_label_values(pipeline):
    prediction_dir = pipeline["workdir"] / "predictions" / FOLDER / MODEL_TAG / "fold_0" / "test"
    test_ids = _ids(pipeline["split_file"], "test")
    assert sorted(p.stem for p in prediction_dir.glob("*.png")) == sorted(test_ids)
    for identifier in test_ids:
        prediction = np.asarray(Image.open(prediction_dir / f"{identifier}.png"))
        assert prediction.shape == (SIZE, SIZE)
        assert prediction.dtype == np.uint8
        assert set(np.unique(prediction).tolist()) <= set(range(NUM_CLASSES))
    selection = json.loads((prediction_dir.parent / "checkpoint_selection.json").read_text())
    assert selection["rule"] == "auto" and set(selection["candidates"]) == {"final", "best"}
    scores = {name: c["val_foreground_dice"] for name, c in selection["candidates"].items()}
    expected = "best" if scores["best"] > scores["final"] else "final"
    assert selection["chosen"] == expected


def test_score_record_matches_schema_and_metric(pipeline):
    from nnunet_baselines.score import score_folder

    records = load_results(pipeline["workdir"] / "results")
    assert len(records) == 1
    record = records[0]
    validate_record(record)
    assert record["task"] == "segmentation"
    assert record["dataset"] == "fass" and record["split_kind"] == "full"
    assert record["method"] == "nnUNet" and record["backbone"] == "PlainConvUNet_2d"
    assert record["budget"] == f"{TRAINER}/2ep" == record["budget_detail"]
    assert record["checkpoint"] is None and len(record["model_sha256"]) == 64
    assert record["section"] == "test" and record["image_size"] == [SIZE, SIZE]
    assert set(record["metrics"]["dice_per_class"]) == {"background", "artery", "liver", "stomach", "vein"}
    assert record["metrics"]["num_images"] == len(_ids(pipeline["split_file"], "test"))
    # the stored headline is the project's pooled Dice of the stored predictions
    prediction_dir = pipeline["workdir"] / "predictions" / FOLDER / MODEL_TAG / "fold_0" / "test"
    dice = score_folder(prediction_dir, pipeline["split_file"], "test", (SIZE, SIZE), NUM_CLASSES)
    assert record["metrics"]["foreground_dice"] == pytest.approx(dice["foreground_mean"], abs=1e-12)
    comparison = (pipeline["workdir"] / "comparison" / "comparison.md").read_text()
    assert f"nnUNet (PlainConvUNet_2d) [reduced budget: {TRAINER}/2ep]" in comparison


def test_the_trainer_ran_the_budget_in_its_name(pipeline):
    # nnU-Net's own record of the trainer's attributes after initialisation (fold_k/debug.json)
    import torch

    fold = pipeline["workdir"] / "nnUNet_results" / FOLDER / MODEL_TAG / "fold_0"
    debug = json.loads((fold / "debug.json").read_text())
    assert debug["num_epochs"] == "2" and debug["num_iterations_per_epoch"] == "2"
    assert debug["batch_size"] == "2" and debug["num_val_iterations_per_epoch"] == "5"
    assert debug["oversample_foreground_percent"] == "0.33"  # nnU-Net's default sampling is kept
    checkpoint = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert checkpoint["trainer_name"] == TRAINER and checkpoint["current_epoch"] == 2


def test_tampered_splits_are_refused(pipeline, env_restored):
    from nnunet_baselines.plan import SplitMismatchError, verify_splits_final

    workdir = pipeline["workdir"]
    os.environ.update({"nnUNet_def_n_proc": "1", "nnUNet_n_proc_DA": "1"})
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        os.environ.pop(name, None)
    assert verify_splits_final(workdir, DATASET_ID, 0)["kind"] == "full"
    with pytest.raises(SplitMismatchError, match="fold 1 does not exist"):
        verify_splits_final(workdir, DATASET_ID, 1)
    path = workdir / "nnUNet_preprocessed" / FOLDER / "splits_final.json"
    original = path.read_text()
    splits = json.loads(original)
    moved = splits[0]["val"].pop()
    splits[0]["train"].append(moved)
    try:
        path.write_text(json.dumps(splits))
        with pytest.raises(SplitMismatchError, match="differs from full_seed0.json"):
            verify_splits_final(workdir, DATASET_ID, 0)
    finally:
        path.write_text(original)


def test_a_new_export_must_be_planned_again(pipeline, tmp_path, env_restored):
    from nnunet_baselines.export import export_dataset
    from nnunet_baselines.plan import SplitMismatchError, planned_identifier, verify_splits_final

    workdir = tmp_path / "work"
    for name in ("nnUNet_raw", "nnUNet_preprocessed"):
        shutil.copytree(pipeline["workdir"] / name, workdir / name)
    os.environ.update({"nnUNet_def_n_proc": "1", "nnUNet_n_proc_DA": "1"})
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        os.environ.pop(name, None)
    assert planned_identifier(workdir, DATASET_ID) == "nnUNetPlans"
    # same cases, different pixels (16-bit): the preprocessed data is stale now
    export_dataset(pipeline["datalist"], [pipeline["split_file"]], DATASET_ID, NAME, workdir, size=SIZE, bit_depth=16)
    with pytest.raises(SplitMismatchError, match="exported again after `plan`"):
        verify_splits_final(workdir, DATASET_ID, 0)
