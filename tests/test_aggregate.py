"""Result records, mean ± SEM and the Table 1 layout (docs/design.md contract 5)."""

from __future__ import annotations

import csv
import hashlib
import json
import math

import numpy as np
import pytest

from ultradino_monai.evaluation.aggregate import (
    SCHEMA,
    ResultError,
    aggregate,
    classification_metrics,
    load_results,
    make_record,
    mean_sem,
    segmentation_metrics,
    table1,
    write_aggregate_csv,
    write_result,
    write_table1_csv,
)
from ultradino_monai.evaluation.metrics import PooledDice


def _record(
    value,
    *,
    method="UltraDINO",
    backbone="ViT-B/16",
    task="segmentation",
    dataset="fass",
    split_kind="fewshot_n20",
    split_file="splits/fewshot_n20_draw0.json",
    seed=0,
    budget="paper",
    metric="foreground_dice",
    **extra,
):
    return {
        "task": task,
        "dataset": dataset,
        "split_file": split_file,
        "split_kind": split_kind,
        "seed": seed,
        "backbone": backbone,
        "checkpoint": None,
        "checkpoint_sha256": None,
        "method": method,
        "budget": budget,
        "metrics": {metric: value},
        "created": "2025-06-01T12:00:00+00:00",
        **extra,
    }


def _draws(values, **kwargs):
    return [_record(v, split_file=f"splits/fewshot_n20_draw{i}.json", **kwargs) for i, v in enumerate(values)]


def test_mean_sem_hand_computed():
    mean, std, sem = mean_sem([0.70, 0.74, 0.78])
    # deviations -0.04, 0, 0.04: sample variance = 0.0032 / 2 = 0.0016, std = 0.04, SEM = 0.04 / sqrt(3)
    assert mean == pytest.approx(0.74)
    assert std == pytest.approx(0.04)
    assert sem == pytest.approx(0.04 / math.sqrt(3))
    assert mean_sem([0.5]) == (0.5, 0.0, 0.0)  # n = 1: SEM reported as 0
    mean, _, sem = mean_sem([0.1, 0.2, 0.3, 0.6])
    # mean 0.3; squared deviations .04 .01 0 .09 -> var .14/3; SEM = sqrt(.14/3)/2
    assert mean == pytest.approx(0.3) and sem == pytest.approx(math.sqrt(0.14 / 3) / 2)


def test_write_and_load_roundtrip(tmp_path):
    checkpoint = tmp_path / "backbone.pt"
    checkpoint.write_bytes(b"weights")
    record = make_record(
        task="segmentation",
        dataset="fass",
        split_file="splits/full_seed0.json",
        split_kind="full",
        seed=1,
        backbone="vit_small_patch16",
        method="UltraDINO",
        checkpoint=checkpoint,
        metrics={"foreground_dice": np.float64(0.79), "dice_per_class": [float("nan"), 0.7]},
        draw=None,
    )
    assert record["checkpoint_sha256"] == hashlib.sha256(b"weights").hexdigest()
    path = write_result(tmp_path / "results" / "a" / "run.json", record)
    document = json.loads(path.read_text())  # strict JSON: NaN became null
    assert document["schema"] == SCHEMA and document["metrics"]["dice_per_class"] == [None, 0.7]
    (tmp_path / "results" / "not_a_record.json").write_text('{"training": []}')
    loaded = load_results(tmp_path / "results")
    assert len(loaded) == 1 and loaded[0]["metrics"]["foreground_dice"] == 0.79


def test_validation_errors(tmp_path):
    record = _record(0.5)
    del record["seed"], record["budget"]
    with pytest.raises(ResultError, match=r"missing required key\(s\) \['seed', 'budget'\]"):
        write_result(tmp_path / "r.json", record)
    with pytest.raises(ResultError, match="not a fraction"):
        write_result(tmp_path / "r.json", _record(74.2))
    with pytest.raises(ResultError, match="task"):
        write_result(tmp_path / "r.json", _record(0.5, task="detection"))
    bad_hash = _record(0.5)
    bad_hash["checkpoint"] = "x.pt"
    with pytest.raises(ResultError, match="64 lower-case hex"):
        write_result(tmp_path / "r.json", bad_hash)
    assert not (tmp_path / "r.json").exists()
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "r.json").write_text(json.dumps({"schema": SCHEMA, "task": "segmentation"}))
    with pytest.raises(ResultError, match="missing required"):
        load_results(tmp_path / "broken")


def test_aggregate_groups_and_guards():
    records = _draws([0.70, 0.74, 0.78]) + _draws([0.60, 0.62], method="DINOv2")
    records.append(
        _record(0.9, task="classification_finetune", dataset="fetal_planes", split_kind="full", metric="macro_f1")
    )
    rows = aggregate(records)
    assert [(r["method"], r["n"]) for r in rows] == [("DINOv2", 2), ("UltraDINO", 3)]
    ultra = rows[1]
    assert ultra["mean"] == pytest.approx(0.74) and ultra["sem"] == pytest.approx(0.04 / math.sqrt(3))
    assert ultra["std"] == pytest.approx(0.04) and ultra["budget"] == "paper"
    assert rows[0]["sem"] == pytest.approx(0.01)  # std of (0.60, 0.62) = 0.01414, / sqrt(2)

    mixed = _draws([0.70, 0.74]) + [_record(0.5, split_file="splits/x.json", budget="5epochs")]
    with pytest.raises(ResultError, match="mixes budgets"):
        aggregate(mixed)
    assert len(aggregate(mixed, group_by=("method", "budget"))) == 2
    with pytest.raises(ResultError, match="two records for split"):
        aggregate(_draws([0.7]) + _draws([0.8]))
    with pytest.raises(ResultError, match="null/NaN"):
        aggregate([_record(None)])


def test_table1_layout(tmp_path):
    records = (
        _draws([0.70, 0.74, 0.78])
        + [
            _record(v, dataset="jnu_ifm", split_kind="fewshot_p4", split_file=f"j{i}.json")
            for i, v in enumerate([0.86, 0.86])
        ]
        + [_record(v, split_kind="full", split_file="splits/full.json", seed=s) for s, v in enumerate([0.795, 0.797])]
        + [
            _record(
                0.9454, task="classification_finetune", dataset="fetal_planes", split_kind="full", metric="macro_f1"
            )
        ]
        + [
            _record(
                0.9506, task="classification_linear_probe", dataset="fetal_planes", split_kind="full", metric="macro_f1"
            )
        ]
        + [
            _record(
                0.7655,
                method="nnUNet",
                backbone="UNet",
                split_kind="full",
                split_file="splits/full.json",
                budget="nnUNetTrainer_5epochs",
            )
        ]
    )
    markdown = table1(records)
    lines = markdown.strip().splitlines()
    assert lines[0] == "| Method (backbone) | JNU (p=4) | FASS (n=20) | FASS (full) | FT F1 | LP F1 |"
    assert (
        lines[2]
        == "| UltraDINO (ViT-B/16) | 86.00 ± 0.00 | 74.00 ± 2.31 | 79.60 ± 0.10 | 94.54 ± 0.00 | 95.06 ± 0.00 |"
    )
    assert lines[3] == "| nnUNet (UNet) [reduced budget: nnUNetTrainer_5epochs] | – | – | 76.55 ± 0.00 | – | – |"
    path = write_table1_csv(tmp_path / "table1.csv", records)
    with open(path, encoding="utf-8") as stream:
        rows = list(csv.reader(stream))
    assert rows[0][3] == "FASS (full)" and rows[1][2] == "74.00 ± 2.31"
    csv_path = write_aggregate_csv(tmp_path / "agg.csv", aggregate(records))
    assert "mean" in csv_path.read_text().splitlines()[0]


def test_record_metric_helpers():
    dice = PooledDice(3)
    dice.update(np.array([[[0, 1], [2, 2]]]), np.array([[[0, 1], [2, 0]]]))
    metrics = segmentation_metrics(dice.compute(), {"background": 0, "pubic_symphysis": 1, "head": 2})
    assert metrics["dice_per_class"]["head"] == pytest.approx(2 / 3)
    assert metrics["foreground_dice"] == pytest.approx((1 + 2 / 3) / 2)
    cls = classification_metrics([0, 1, 1], [0, 1, 0], ["a", "b"])
    assert cls["accuracy"] == pytest.approx(2 / 3) and cls["f1_per_class"]["b"] == pytest.approx(2 / 3)
    assert cls["macro_f1"] == pytest.approx((2 / 3 + 2 / 3) / 2)


def test_table1_refuses_mixed_split_kinds():
    records = [
        _record(0.94, task="classification_finetune", dataset="fetal_planes_db", split_kind="full", metric="macro_f1"),
        _record(
            0.95,
            task="classification_finetune",
            dataset="fetal_planes_db",
            split_kind="ultradino",
            split_file="splits/ultradino.json",
            metric="macro_f1",
        ),
    ]
    with pytest.raises(ResultError, match="mixes split kinds"):
        table1(records)
    assert "94.00 ± 0.00" in table1(records[:1])
