"""nnU-Net harness pieces that need no training: export, quantisation, budgets, scoring parity, compare.

The scoring-parity test runs the segmentation bundle's evaluator path (shared eval
transforms, MONAI ``SupervisedEvaluator``, ``PooledDiceMetric`` on decollated outputs) on
hand-made predictions and checks that ``nnunet_baselines`` reports the same Dice, and
that both equal Dice computed by hand from pixel counts.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

FASS_LABELS = {"background": 0, "artery": 1, "liver": 2, "stomach": 3, "vein": 4}
SIZE = 64


@pytest.fixture()
def clean_env():
    """The harness sets nnU-Net variables in os.environ; restore them after each test."""
    saved = dict(os.environ)
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        os.environ.pop(name, None)
    os.environ.update({"nnUNet_def_n_proc": "1", "nnUNet_n_proc_DA": "1"})
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from data_prep.demo import SCALES, generate_fass
    from ultradino_monai.data.splits import fass_splits

    root = tmp_path_factory.mktemp("nnunet_units")
    generate_fass(root, seed=0, scale=SCALES["tiny"])
    datalist = root / "fass" / "datalist.json"
    fass_splits(datalist, root / "splits", seed=0, num_seeds=1, num_draws=1, fewshot_images=2, label_percentages=())
    # a second base seed draws a different test set: exporting both would leak test cases into training
    fass_splits(
        datalist, root / "splits_seed1", seed=1, num_seeds=1, num_draws=1, fewshot_images=2, label_percentages=()
    )
    return {
        "root": root,
        "datalist": datalist,
        "full": root / "splits" / "full_seed0.json",
        "fewshot": root / "splits" / "fewshot_n2_draw0.json",
        "other_test": root / "splits_seed1" / "full_seed0.json",
    }


# ------------------------------------------------------------------ small pure functions
def test_quantise_image_rounds_to_the_png_grid():
    from nnunet_baselines.export import quantise_image

    values = np.array([[0.0, 1.0, 0.25, 0.5], [-0.1, 1.2, 1 / 255, 0.998]], dtype=np.float32)
    eight = quantise_image(values, 8)
    assert eight.dtype == np.uint8
    # 0.25*255 = 63.75 -> 64; 0.5*255 = 127.5 -> 128 (round half to even); clipped outside [0, 1]
    assert eight.tolist() == [[0, 255, 64, 128], [0, 255, 1, 254]]
    sixteen = quantise_image(values, 16)
    assert sixteen.dtype == np.uint16
    assert sixteen.tolist() == [[0, 65535, 16384, 32768], [0, 65535, 257, 65404]]
    for bits, stored in ((8, eight), (16, sixteen)):
        error = np.abs(stored / ((1 << bits) - 1) - np.clip(values, 0, 1))
        assert error.max() <= 0.5 / ((1 << bits) - 1) + 1e-7
    with pytest.raises(ValueError, match="bit_depth"):
        quantise_image(values, 12)


def test_budget_labels_mark_reduced_runs():
    from nnunet_baselines.score import budget_label

    assert budget_label("nnUNetTrainer", 1000) == "paper"
    assert budget_label("nnUNetTrainer", 500) == "nnUNetTrainer/500ep"
    assert budget_label("nnUNetTrainer_5epochs", 5) == "nnUNetTrainer_5epochs/5ep"
    assert budget_label("nnUNetTrainer_UltraDINOShort", 2) == "nnUNetTrainer_UltraDINOShort/2ep"


def test_case_ids_and_dataset_names():
    from nnunet_baselines.export import ExportError, case_id, dataset_folder_name

    assert case_id({"image": "/x/images/P001_01.png"}) == "P001_01"
    assert case_id({"image": "/x/a.png", "id": "20190909T155747_0012"}) == "20190909T155747_0012"
    assert case_id({"image": "/x/a b(1).png"}) == "a_b_1_"
    assert dataset_folder_name(501, "FASS") == "Dataset501_FASS"
    with pytest.raises(ExportError, match="1..999"):
        dataset_folder_name(1000, "FASS")
    with pytest.raises(ExportError, match="folder name"):
        dataset_folder_name(501, "FASS data")


# ------------------------------------------------------------------ export
def test_export_writes_the_shared_preprocessing_pixels(tiny, tmp_path, clean_env):
    from nnunet_baselines.export import case_id, export_dataset
    from ultradino_monai.data.datalist import load_datalist
    from ultradino_monai.transforms.ultrasound import ultrasound_preprocessing

    manifest_path = export_dataset(
        tiny["datalist"], [tiny["full"], tiny["fewshot"]], 912, "Units", tmp_path, size=SIZE, bit_depth=16
    )
    raw = tmp_path / "nnUNet_raw" / "Dataset912_Units"
    assert manifest_path == raw / "ultradino_export.json"
    manifest = json.loads(manifest_path.read_text())
    assert [fold["kind"] for fold in manifest["folds"]] == ["full", "fewshot_n2"]
    assert manifest["image_size"] == [SIZE, SIZE] and manifest["bit_depth"] == 16
    chain = ultrasound_preprocessing(spatial_size=(SIZE, SIZE), normalization="none", in_chans=1)
    test_items = load_datalist(tiny["full"], "test")
    for item in load_datalist(tiny["full"], "training")[:2] + test_items[:1]:
        identifier = case_id(item)
        folder = ("imagesTs", "labelsTs") if item in test_items else ("imagesTr", "labelsTr")
        expected = chain({"image": item["image"], "label": item["label"]})
        stored = np.asarray(Image.open(raw / folder[0] / f"{identifier}_0000.png"))
        assert stored.dtype == np.uint16 and stored.shape == (SIZE, SIZE)
        np.testing.assert_allclose(stored / 65535.0, expected["image"][0].numpy(), atol=0.5 / 65535 + 1e-7)
        label = np.asarray(Image.open(raw / folder[1] / f"{identifier}.png"))
        assert label.dtype == np.uint8
        np.testing.assert_array_equal(label, expected["label"][0].numpy())
    # nnU-Net's reader sees the same values (skimage reads 16-bit PNG as uint16)
    from nnunetv2.imageio.natural_image_reader_writer import NaturalImage2DIO

    item = load_datalist(tiny["full"], "training")[0]
    data, properties = NaturalImage2DIO().read_images([str(raw / "imagesTr" / f"{case_id(item)}_0000.png")])
    assert data.shape == (1, 1, SIZE, SIZE) and properties["spacing"] == (999, 1, 1)
    expected = ultrasound_preprocessing(spatial_size=(SIZE, SIZE), normalization="none")(
        {"image": item["image"], "label": item["label"]}
    )["image"][0].numpy()
    np.testing.assert_allclose(data[0, 0] / 65535.0, expected, atol=0.5 / 65535 + 1e-7)


def test_export_refuses_test_cases_that_train_in_another_split(tiny, tmp_path, clean_env):
    from nnunet_baselines.export import ExportError, export_dataset

    with pytest.raises(ExportError, match="test cases in one split file and training/validation cases in another"):
        export_dataset(tiny["datalist"], [tiny["full"], tiny["other_test"]], 913, "Leak", tmp_path, size=SIZE)
    assert not (tmp_path / "nnUNet_raw" / "Dataset913_Leak").exists()


def test_export_refuses_a_foreign_dataset_folder(tiny, tmp_path, clean_env):
    from nnunet_baselines.export import ExportError, export_dataset

    foreign = tmp_path / "nnUNet_raw" / "Dataset914_Mine"
    foreign.mkdir(parents=True)
    (foreign / "notes.txt").write_text("someone else's data")
    with pytest.raises(ExportError, match="not written by nnunet_baselines"):
        export_dataset(tiny["datalist"], [tiny["full"]], 914, "Mine", tmp_path, size=SIZE)
    assert (foreign / "notes.txt").read_text() == "someone else's data"


def test_short_trainer_is_found_through_ext_trainer(tmp_path, clean_env):
    from nnunet_baselines.environment import TRAINER_DIR, configure_environment

    settings = configure_environment(tmp_path)
    assert settings["nnUNet_extTrainer"].split(os.pathsep)[0] == str(TRAINER_DIR)
    assert settings["nnUNet_raw"] == str(tmp_path.resolve() / "nnUNet_raw")
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    trainer = recursive_find_trainer_class_by_name("nnUNetTrainer_UltraDINOShort")
    assert issubclass(trainer, nnUNetTrainer) and trainer.SHORT_NUM_EPOCHS == 2
    with pytest.raises(RuntimeError, match="Could not find requested nnunet trainer"):
        recursive_find_trainer_class_by_name("nnUNetTrainer_DoesNotExist")


def test_budget_trainer_is_built_from_its_name(tmp_path, clean_env):
    from nnunet_baselines.environment import configure_environment

    configure_environment(tmp_path)
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    from ultradino_monai.experiments.budget import StepBudget, budget_trainer_name

    name = budget_trainer_name(StepBudget(steps=200, batch=8))
    assert name == "nnUNetTrainer_UltraDINOBudget_8x25_b8"
    trainer = recursive_find_trainer_class_by_name(name)
    assert issubclass(trainer, nnUNetTrainer) and trainer.__name__ == name
    assert (trainer.BUDGET_EPOCHS, trainer.BUDGET_ITERATIONS, trainer.BUDGET_BATCH) == (8, 25, 8)
    other = recursive_find_trainer_class_by_name("nnUNetTrainer_UltraDINOBudget_3x20_b4")
    assert (other.BUDGET_EPOCHS, other.BUDGET_ITERATIONS, other.BUDGET_BATCH) == (3, 20, 4)
    for bad in ("nnUNetTrainer_UltraDINOBudget_8x25", "nnUNetTrainer_UltraDINOBudget_0x25_b8"):
        with pytest.raises(RuntimeError, match="Could not find requested nnunet trainer"):
            recursive_find_trainer_class_by_name(bad)


# ------------------------------------------------------------------ scoring parity
def _hand_made_predictions(labels: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Deterministic, imperfect predictions: shift the truth, drop 'stomach', paint a block of 'vein'."""
    predictions = {}
    for n, (identifier, label) in enumerate(sorted(labels.items())):
        prediction = np.roll(label, shift=(n + 1, 2 * n), axis=(0, 1)).astype(np.uint8)
        prediction[prediction == 3] = 0
        prediction[5:12, 40:50] = 4
        predictions[identifier] = prediction
    return predictions


class _Oracle(torch.nn.Module):
    """A 'network' that returns one-hot logits of a stored mask for each known input image."""

    def __init__(self, images: list[torch.Tensor], masks: list[np.ndarray], num_classes: int):
        super().__init__()
        self.images = images
        self.masks = [torch.as_tensor(m, dtype=torch.long) for m in masks]
        self.num_classes = num_classes

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        out = []
        for image in batch:
            index = next(
                i
                for i, known in enumerate(self.images)
                if torch.equal(known, image.as_tensor() if hasattr(image, "as_tensor") else image)
            )
            one_hot = torch.nn.functional.one_hot(self.masks[index], self.num_classes).permute(2, 0, 1).float()
            out.append(one_hot)
        return torch.stack(out)


def test_score_matches_the_segmentation_evaluator_on_hand_made_masks(tiny, tmp_path):
    from monai.data import CacheDataset, DataLoader
    from monai.engines import SupervisedEvaluator
    from monai.handlers import from_engine

    import ultradino_monai.engines.segmentation as seg
    from nnunet_baselines.cli import main
    from nnunet_baselines.export import case_id
    from nnunet_baselines.score import score_folder
    from ultradino_monai.data.datalist import load_datalist
    from ultradino_monai.evaluation.aggregate import load_results
    from ultradino_monai.evaluation.metrics import PooledDiceMetric

    split_file = tiny["full"]
    items = load_datalist(split_file, "test")
    transform = seg.segmentation_transforms(SIZE, [0.0], [1.0], in_chans=1, train=False)
    samples = [transform({"image": it["image"], "label": it["label"]}) for it in items]
    truth = {case_id(it): s["label"][0].numpy() for it, s in zip(items, samples)}
    predictions = _hand_made_predictions(truth)
    prediction_dir = tmp_path / "pred"
    prediction_dir.mkdir()
    for identifier, prediction in predictions.items():
        Image.fromarray(prediction).save(prediction_dir / f"{identifier}.png")

    # the bundle's evaluator path: shared eval transforms, SupervisedEvaluator, PooledDiceMetric on decollated outputs
    oracle = _Oracle([s["image"].as_tensor() for s in samples], [predictions[case_id(it)] for it in items], 5)
    # as the bundle's validate#dataset / validate#dataloader (bundles/segmentation/configs/train.json)
    dataset = CacheDataset(seg.section_items(split_file, "test"), transform=transform, progress=False)
    loader = DataLoader(dataset, batch_size=2, shuffle=False, num_workers=0)
    metric = PooledDiceMetric(num_classes=5, output_transform=from_engine(["pred", "label"]))
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"), val_data_loader=loader, network=oracle, key_val_metric={"val_fg_dice": metric}
    )
    evaluator.run()
    bundle = evaluator.state.metric_details["val_fg_dice"]

    ours = score_folder(prediction_dir, split_file, "test", (SIZE, SIZE), 5)
    assert ours["per_class"] == pytest.approx(bundle["per_class"], abs=0, nan_ok=True)
    assert ours["foreground_mean"] == bundle["foreground_mean"] == evaluator.state.metrics["val_fg_dice"]
    assert ours["per_image_mean"] == pytest.approx(bundle["per_image_mean"], abs=1e-12)

    # and both equal 2*sum(I) / (sum(P) + sum(L)) counted by hand
    hand = []
    for c in range(5):
        inter = sum(int(((predictions[k] == c) & (truth[k] == c)).sum()) for k in truth)
        area = sum(int((predictions[k] == c).sum() + (truth[k] == c).sum()) for k in truth)
        hand.append(2 * inter / area if area else float("nan"))
    assert ours["per_class"] == pytest.approx(hand, abs=1e-12, nan_ok=True)
    assert 0.0 < ours["foreground_mean"] < 1.0 and ours["per_class"][3] == 0.0  # stomach dropped on purpose

    # the CLI writes the same number into a valid result record
    out = tmp_path / "results" / "handmade.json"
    assert (
        main(
            [
                "score",
                "--pred-dir",
                str(prediction_dir),
                "--split-file",
                str(split_file),
                "--size",
                str(SIZE),
                "--out",
                str(out),
                "--trainer",
                "nnUNetTrainer",
                "--epochs",
                "1000",
            ]
        )
        == 0
    )
    (record,) = load_results(tmp_path / "results")
    assert record["metrics"]["foreground_dice"] == pytest.approx(bundle["foreground_mean"], abs=1e-15)
    assert record["budget"] == "paper" and record["method"] == "nnUNet" and record["split_kind"] == "full"

    # a prediction on the wrong grid is refused, not resized
    Image.fromarray(np.zeros((SIZE, SIZE + 1), np.uint8)).save(prediction_dir / f"{sorted(truth)[0]}.png")
    with pytest.raises(ValueError, match="exported grid"):
        score_folder(prediction_dir, split_file, "test", (SIZE, SIZE), 5)


def test_compare_puts_nnunet_next_to_foundation_models(tmp_path):
    from nnunet_baselines.compare import compare_results
    from ultradino_monai.evaluation.aggregate import make_record, write_result

    def record(method, backbone, budget, split, value):
        return make_record(
            task="segmentation",
            dataset="fass",
            split_file=split,
            split_kind="full",
            seed=0,
            backbone=backbone,
            method=method,
            budget=budget,
            metrics={"foreground_dice": value, "dice_per_class": {}},
        )

    fm, nn = tmp_path / "fm", tmp_path / "nn"
    for s, value in enumerate((0.70, 0.74, 0.72)):
        write_result(fm / f"r{s}.json", record("UltraDINO", "vit_small_patch16", "paper", f"full_seed{s}.json", value))
    for s, value in enumerate((0.76, 0.78)):
        write_result(nn / f"r{s}.json", record("nnUNet", "PlainConvUNet_2d", "paper", f"full_seed{s}.json", value))
    write_result(
        nn / "short.json", record("nnUNet", "PlainConvUNet_2d", "nnUNetTrainer_5epochs/5ep", "full_seed0.json", 0.30)
    )
    summary = compare_results([fm, nn], tmp_path / "out")
    markdown = summary["markdown"]
    # UltraDINO: mean 72.00, SEM = std(0.70, 0.74, 0.72) / sqrt(3) = 0.02 / sqrt(3) = 1.1547% -> 1.15
    assert "| UltraDINO (vit_small_patch16) | – | – | 72.00 ± 1.15 | – | – |" in markdown
    # nnU-Net paper budget: mean 77.00, SEM = std(0.76, 0.78) / sqrt(2) = 0.01 -> 1.00
    assert "| nnUNet (PlainConvUNet_2d) | – | – | 77.00 ± 1.00 | – | – |" in markdown
    assert "nnUNet (PlainConvUNet_2d) [reduced budget: nnUNetTrainer_5epochs/5ep] | – | – | 30.00 ± 0.00" in markdown
    table = (tmp_path / "out" / "table1.csv").read_text()
    assert "77.00 ± 1.00" in table and "72.00 ± 1.15" in table
    assert Path(summary["paths"]["groups_csv"]).read_text().count("\n") == 4  # header + 3 groups
