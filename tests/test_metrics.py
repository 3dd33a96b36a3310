"""Pooled Dice (docs/design.md contract 3) and classification metrics, checked against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from ignite.engine import Engine
from monai.handlers import from_engine

from ultradino_monai.evaluation.metrics import (
    PooledDice,
    PooledDiceMetric,
    accuracy,
    confusion_matrix,
    macro_f1,
    per_class_f1,
    to_index_map,
)

# Two 2x3 images, 4 classes; class 3 is absent from prediction and truth everywhere.
LABEL_A = [[0, 1, 1], [0, 2, 2]]
PRED_A = [[0, 1, 0], [2, 2, 2]]
LABEL_B = [[1, 1, 0], [0, 0, 0]]
PRED_B = [[1, 0, 0], [0, 0, 1]]
# A third image with no foreground at all and one ignored pixel (label 255, prediction 1 there).
LABEL_C = [[0, 255, 0], [0, 0, 0]]
PRED_C = [[0, 1, 0], [0, 0, 0]]


def _two_images() -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tensor([PRED_A, PRED_B]), torch.tensor([LABEL_A, LABEL_B])


def test_pooled_dice_hand_computed():
    dice = PooledDice(num_classes=4)
    pred, label = _two_images()
    dice.update(pred, label)
    result = dice.compute()
    # class 0: I = 1 + 3, P = 2 + 4, L = 2 + 4 -> 8/12
    # class 1: I = 1 + 1, P = 1 + 2, L = 2 + 2 -> 4/7
    # class 2: I = 2 + 0, P = 3 + 0, L = 2 + 0 -> 4/5
    # class 3: 0/0 -> NaN
    assert result["per_class"][:3] == pytest.approx([2 / 3, 4 / 7, 4 / 5])
    assert math.isnan(result["per_class"][3])
    assert result["foreground_mean"] == pytest.approx((4 / 7 + 4 / 5) / 2)  # NaN class left out
    assert result["mean_with_background"] == pytest.approx((2 / 3 + 4 / 7 + 4 / 5) / 3)
    # per image: A = mean(2/3, 4/5) (class 3 absent -> excluded); B = class 1 only: 2/(2+2)
    assert result["per_image_mean"] == pytest.approx(((2 / 3 + 4 / 5) / 2 + 1 / 2) / 2)
    assert result["per_image_per_class"][:3] == pytest.approx([(1 / 2 + 3 / 4) / 2, (2 / 3 + 1 / 2) / 2, 4 / 5])
    assert math.isnan(result["per_image_per_class"][3])
    assert result["intersection"] == [4, 2, 2, 0]
    assert result["pred_area"] == [6, 3, 3, 0]
    assert result["label_area"] == [6, 4, 2, 0]
    assert result["num_images"] == 2 and result["per_image_count"] == 2


def test_pooled_is_not_mean_of_per_image():
    # Pooling weights big structures more than per-image averaging: check the two differ as computed.
    dice = PooledDice(num_classes=4)
    dice.update(*_two_images())
    result = dice.compute()
    assert result["foreground_mean"] != pytest.approx(result["per_image_mean"])


def test_accumulates_across_updates_and_ignores_index():
    dice = PooledDice(num_classes=4, ignore_index=255)
    dice.update(torch.tensor([PRED_A]), torch.tensor([LABEL_A]))
    dice.update(np.array([PRED_B, PRED_C]), np.array([LABEL_B, LABEL_C]))
    result = dice.compute()
    # image C adds 5 true-negative background pixels; its ignored pixel (pred 1) counts nowhere
    assert result["intersection"] == [9, 2, 2, 0]
    assert result["pred_area"] == [11, 3, 3, 0]
    assert result["per_class"][:3] == pytest.approx([18 / 22, 4 / 7, 4 / 5])
    # image C has no foreground: excluded from the per-image mean, counted in num_images
    assert result["num_images"] == 3 and result["per_image_count"] == 2
    assert result["per_image_mean"] == pytest.approx(((2 / 3 + 4 / 5) / 2 + 1 / 2) / 2)
    assert result["per_image_per_class"][0] == pytest.approx((1 / 2 + 3 / 4 + 1) / 3)
    dice.reset()
    assert dice.compute()["num_images"] == 0
    assert math.isnan(dice.compute()["foreground_mean"])


def test_layouts_logits_channel_and_onehot_agree():
    pred, label = _two_images()
    logits = torch.nn.functional.one_hot(pred, 4).permute(0, 3, 1, 2).float() * 3.0 - 1.0
    onehot_label = torch.nn.functional.one_hot(label, 4).permute(0, 3, 1, 2)
    reference = PooledDice(4)
    reference.update(pred, label)
    for p, lab in [(logits, label), (pred.unsqueeze(1), label.unsqueeze(1)), (logits, onehot_label)]:
        dice = PooledDice(4)
        dice.update(p, lab)
        assert dice.compute()["intersection"] == reference.compute()["intersection"]
        assert dice.compute()["pred_area"] == reference.compute()["pred_area"]


def test_matches_brute_force_on_random_maps():
    generator = torch.Generator().manual_seed(0)
    pred = torch.randint(0, 3, (5, 7, 9), generator=generator)
    label = torch.randint(0, 3, (5, 7, 9), generator=generator)
    dice = PooledDice(3)
    dice.update(pred, label)
    result = dice.compute()
    for c in range(3):
        p, lab = pred == c, label == c
        expected = 2 * (p & lab).sum().item() / (p.sum() + lab.sum()).item()
        assert result["per_class"][c] == pytest.approx(expected)


def test_bad_inputs_raise_clear_errors():
    dice = PooledDice(3)
    with pytest.raises(ValueError, match="label values \\[7\\]"):
        dice.update(torch.zeros(1, 2, 2, dtype=torch.long), torch.full((1, 2, 2), 7))
    with pytest.raises(ValueError, match="prediction values"):
        dice.update(torch.full((1, 2, 2), 3), torch.zeros(1, 2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="shape"):
        dice.update(torch.zeros(1, 2, 2, dtype=torch.long), torch.zeros(1, 2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="channel dimension 2"):
        to_index_map(torch.zeros(1, 2, 4, 4), num_classes=3)
    with pytest.raises(ValueError, match="collides"):
        PooledDice(3, ignore_index=2)


def _run_engine(metric: PooledDiceMetric, batches: list) -> Engine:
    engine = Engine(lambda engine, batch: batch)
    metric.attach(engine, "dice")
    engine.run(batches, max_epochs=1)
    return engine


def test_ignite_metric_matches_accumulator_with_logits():
    pred, label = _two_images()
    logits = torch.nn.functional.one_hot(pred, 4).permute(0, 3, 1, 2).float()
    batches = [(logits[:1], label[:1]), (logits[1:], label[1:])]
    engine = _run_engine(PooledDiceMetric(num_classes=4), batches)
    reference = PooledDice(4)
    reference.update(pred, label)
    expected = reference.compute()
    assert engine.state.metrics["dice"] == pytest.approx(expected["foreground_mean"])
    details = engine.state.metric_details["dice"]
    assert details["intersection"] == expected["intersection"]
    assert details["per_image_mean"] == pytest.approx(expected["per_image_mean"])


def test_ignite_metric_with_monai_decollated_dicts():
    pred, label = _two_images()
    logits = torch.nn.functional.one_hot(pred, 4).permute(0, 3, 1, 2).float()
    # A MONAI evaluator with decollate=True leaves a list of per-sample dicts in engine.state.output.
    batches = [[{"pred": logits[i], "label": label[i].unsqueeze(0)} for i in range(2)]]
    reference = PooledDice(4)
    reference.update(pred, label)
    expected = reference.compute()["foreground_mean"]
    for metric in (
        PooledDiceMetric(4, output_transform=from_engine(["pred", "label"])),
        PooledDiceMetric(4),  # default transform understands the list of dicts too
        PooledDiceMetric(4, output_transform=from_engine(["pred", "label"]), skip_unrolling=True),
    ):
        engine = _run_engine(metric, batches)
        assert engine.state.metrics["dice"] == pytest.approx(expected)


def test_ignite_metric_summary_none_returns_dict():
    pred, label = _two_images()
    engine = Engine(lambda engine, batch: batch)
    PooledDiceMetric(4, summary=None).attach(engine, "seg")
    engine.run([(pred, label)], max_epochs=1)
    assert engine.state.metrics["seg"]["per_class"][1] == pytest.approx(4 / 7)


# --------------------------------------------------------------------------- classification


def test_classification_hand_computed():
    target = [0, 0, 1, 1, 2]
    pred = [0, 1, 1, 1, 0]
    matrix = confusion_matrix(pred, target, 4)
    assert matrix.tolist() == [[1, 1, 0, 0], [0, 2, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]]
    # class 0: 2*1/(2+1+1); class 1: 2*2/(4+1+0); class 2: 0; class 3: no support, never predicted -> 0
    assert per_class_f1(pred, target, 4).tolist() == pytest.approx([0.5, 0.8, 0.0, 0.0])
    assert macro_f1(pred, target, 4) == pytest.approx((0.5 + 0.8) / 4)
    assert per_class_f1(pred, target, 4, zero_division=1.0)[3] == 1.0
    assert accuracy(pred, target, 4) == pytest.approx(3 / 5)
    scores = torch.nn.functional.one_hot(torch.tensor(pred), 4).float()
    assert macro_f1(scores, torch.tensor(target), 4) == pytest.approx(0.325)


def _f1_by_definition(pred, target, num_classes, zero_division):
    """Per-class 2TP / (2TP + FP + FN) counted element by element, independent of the module."""
    scores = []
    for c in range(num_classes):
        tp = sum(1 for p, t in zip(pred, target) if p == c and t == c)
        fp = sum(1 for p, t in zip(pred, target) if p == c and t != c)
        fn = sum(1 for p, t in zip(pred, target) if p != c and t == c)
        scores.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else zero_division)
    return scores


@pytest.mark.parametrize("zero_division", [0.0, 1.0])
def test_f1_and_confusion_match_their_definitions_on_random_labels(zero_division):
    rng = np.random.default_rng(1)
    for _ in range(20):
        target = rng.integers(0, 5, size=30)
        pred = rng.integers(0, 4, size=30)  # class 4 never predicted, class 5 absent everywhere
        expected = _f1_by_definition(pred.tolist(), target.tolist(), 6, zero_division)
        assert expected[5] == zero_division
        assert per_class_f1(pred, target, 6, zero_division).tolist() == pytest.approx(expected)
        assert macro_f1(pred, target, 6, zero_division=zero_division) == pytest.approx(sum(expected) / 6)
        counts = [[sum(1 for p, t in zip(pred, target) if t == i and p == j) for j in range(6)] for i in range(6)]
        assert confusion_matrix(pred, target, 6).tolist() == counts
        assert accuracy(pred, target, 6) == pytest.approx(float(np.mean(pred == target)))


def test_f1_zero_true_positives_is_zero_even_with_zero_division_one():
    # Every prediction wrong: classes 0 and 1 have TP = 0 but FP = FN = 1, so F1 = 0 whatever
    # zero_division says; only class 2 (never seen, never predicted) takes zero_division.
    # scikit-learn 1.3 returned 1 for classes 0 and 1 here (its issue #26965), hence the >=1.4 pin.
    pred, target = [1, 0], [0, 1]
    assert per_class_f1(pred, target, 3, zero_division=1.0).tolist() == [0.0, 0.0, 1.0]
    assert macro_f1(pred, target, 3, zero_division=1.0) == pytest.approx(1 / 3)
    assert macro_f1(pred, target, 3) == 0.0
    assert accuracy(pred, target, 3) == 0.0


def test_f1_zero_division_nan_leaves_absent_classes_out_of_the_macro_mean():
    pred, target = [0, 0, 1], [0, 1, 1]
    # class 0: TP 1, FP 1, FN 0 -> 2/3; class 1: TP 1, FP 0, FN 1 -> 2/3; classes 2, 3: 0/0.
    scores = per_class_f1(pred, target, 4, zero_division=float("nan"))
    assert scores[:2].tolist() == pytest.approx([2 / 3, 2 / 3]) and np.isnan(scores[2:]).all()
    assert macro_f1(pred, target, 4, zero_division=float("nan")) == pytest.approx(2 / 3)
    assert macro_f1(pred, target, 4) == pytest.approx((2 / 3 + 2 / 3) / 4)
    with pytest.raises(ValueError, match="zero_division"):
        macro_f1(pred, target, 4, zero_division=0.5)


def test_classification_of_an_empty_set():
    matrix = confusion_matrix([], [], 3)
    assert matrix.dtype == np.int64 and matrix.tolist() == [[0] * 3] * 3
    assert per_class_f1([], [], 3).tolist() == [0.0, 0.0, 0.0]
    assert per_class_f1(np.zeros((0, 3)), [], 3, zero_division=1.0).tolist() == [1.0, 1.0, 1.0]
    assert macro_f1([], [], 3) == 0.0 and macro_f1([], [], 3, zero_division=1.0) == 1.0
    with pytest.raises(ValueError, match="empty"):
        accuracy([], [], 3)


def test_accuracy_infers_the_class_count():
    assert accuracy([0, 2, 1], [0, 2, 2]) == pytest.approx(2 / 3)
    scores = torch.tensor([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])  # argmax 1, 0, 1, 0
    assert accuracy(scores, torch.tensor([1, 1, 1, 0])) == pytest.approx(3 / 4)
    with pytest.raises(ValueError, match="0..1"):
        accuracy(scores, [1, 2, 1, 0])  # two score columns, so label 2 is out of range


def test_classification_rejects_out_of_range():
    with pytest.raises(ValueError, match="0..2"):
        macro_f1([0, 3], [0, 1], 3)
    with pytest.raises(ValueError, match="entries"):
        confusion_matrix([0, 1], [0], 3)


def test_key_metric_of_a_monai_supervised_evaluator():
    from monai.data import DataLoader
    from monai.engines import SupervisedEvaluator

    pred, label = _two_images()
    logits = torch.nn.functional.one_hot(pred, 4).permute(0, 3, 1, 2).float()

    class Lookup(torch.nn.Module):
        """Returns the stored logits for the image index carried in the image's first pixel."""

        def forward(self, image):
            return logits[image[:, 0, 0, 0].long()]

    data = [{"image": torch.full((1, 2, 3), float(i)), "label": label[i].unsqueeze(0)} for i in range(2)]
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=DataLoader(data, batch_size=2),
        network=Lookup(),
        key_val_metric={"val_dice": PooledDiceMetric(4, output_transform=from_engine(["pred", "label"]))},
    )
    evaluator.run()
    reference = PooledDice(4)
    reference.update(pred, label)
    assert evaluator.state.metrics["val_dice"] == pytest.approx(reference.compute()["foreground_mean"])
    assert evaluator.state.best_metric == pytest.approx(reference.compute()["foreground_mean"])
    assert evaluator.state.metric_details["val_dice"]["per_class"][1] == pytest.approx(4 / 7)
