"""Patient-grouped, seeded split files (docs/design.md contract 1)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from ultradino_monai.data.datalist import load_datalist, write_datalist
from ultradino_monai.data.splits import (
    SplitError,
    fass_splits,
    holdout_splits,
    jnu_splits,
    main,
    patient_grouped_split,
    stable_order,
)


def _items(num_patients: int, sizes=(1, 2, 3, 4, 5, 9), prefix="P") -> list[dict]:
    items = []
    for p in range(num_patients):
        for i in range(sizes[p % len(sizes)]):
            stem = f"{prefix}{p:03d}_{i}"
            items.append({"image": f"images/{stem}.png", "label": f"labels/{stem}.png", "patient": f"{prefix}{p:03d}"})
    return items


def _datalist(tmp_path: Path, items: list[dict], dataset: str, **sections) -> Path:
    path = tmp_path / "data" / "datalist.json"
    write_datalist(path, {"training": items, **sections}, dataset=dataset, labels={"background": 0, "a": 1})
    return path


def _patients(items) -> set[str]:
    return {item["patient"] for item in items}


def _assert_disjoint(document: dict) -> None:
    sections = [_patients(document[name]) for name in ("training", "validation", "test")]
    assert not sections[0] & sections[1]
    assert not sections[0] & sections[2]
    assert not sections[1] & sections[2]


def test_patient_grouped_split_fractions_and_grouping():
    items = _items(40)
    train, val, test = patient_grouped_split(items, (0.6, 0.2, 0.2), seed=3)
    assert len(train) + len(val) + len(test) == len(items)
    assert not (_patients(train) & _patients(val)) and not (_patients(val) & _patients(test))
    # whole patients move, so sizes are approximate: within one largest patient (9 images) of target
    assert abs(len(test) - 0.2 * len(items)) <= 9
    # by patients: exactly 10 of 40 patients
    _, quarter = patient_grouped_split(items, (0.75, 0.25), seed=3, by="patients")
    assert len(_patients(quarter)) == 10
    # the input order does not matter, the seed does
    again = patient_grouped_split(list(reversed(items)), (0.6, 0.2, 0.2), seed=3)
    assert _patients(again[2]) == _patients(test)
    other = patient_grouped_split(items, (0.6, 0.2, 0.2), seed=4)
    assert _patients(other[2]) != _patients(test)


def test_patient_grouped_split_errors():
    with pytest.raises(SplitError, match="sum to 1"):
        patient_grouped_split(_items(4), (0.5, 0.4), seed=0)
    with pytest.raises(SplitError, match="cannot split 2 patient"):
        patient_grouped_split(_items(2), (0.4, 0.3, 0.3), seed=0)


def test_stable_order_is_a_fixed_hash_order():
    # The order must never depend on the library version: pin one hand-checked permutation.
    names = ["P1", "P2", "P3", "P4"]
    order = stable_order(names, "fass", "test", 0)
    assert sorted(order) == names
    assert order == stable_order(reversed(names), "fass", "test", 0)
    import hashlib

    expected = sorted(names, key=lambda n: hashlib.sha256(f"fass|test|0|{n}".encode()).hexdigest())
    assert order == expected


def test_fass_splits_protocol(tmp_path):
    items = _items(60)
    datalist = _datalist(tmp_path, items, "fass")
    out = tmp_path / "data" / "splits"
    paths = fass_splits(datalist, out, seed=0)
    names = sorted(p.name for p in paths)
    assert names == sorted(
        [f"full_seed{s}.json" for s in range(3)]
        + [f"fewshot_n20_draw{d}.json" for d in range(5)]
        + [f"label_efficiency_p{p}_seed{s}.json" for p in (10, 25, 50) for s in range(3)]
        + ["index.json"]
    )
    documents = {p.name: json.loads(p.read_text()) for p in paths if p.name != "index.json"}
    tests = {json.dumps(doc["test"]) for doc in documents.values()}
    assert len(tests) == 1, "every FASS split file shares one test set"
    all_images = {item["image"] for item in items}
    for doc in documents.values():
        _assert_disjoint(doc)
        assert doc["labels"] == {"background": 0, "a": 1}
        assert doc["split"]["counts"]["training"]["images"] == len(doc["training"])
        assert doc["split"]["source_datalist"] == "../datalist.json"
    full = documents["full_seed0.json"]
    assert abs(len(full["test"]) - 0.2 * len(items)) <= 9
    assert len(full["training"]) + len(full["validation"]) + len(full["test"]) == len(items)
    assert documents["full_seed0.json"]["training"] != documents["full_seed1.json"]["training"]

    for draw in range(5):
        doc = documents[f"fewshot_n20_draw{draw}.json"]
        assert doc["split"]["kind"] == "fewshot_n20" and doc["split"]["draw"] == draw
        assert len(doc["training"]) == 20
        assert len(_patients(doc["training"])) == 20  # one image per patient by default
        counts = doc["split"]["counts"]
        used = len(doc["training"]) + len(doc["validation"]) + len(doc["test"]) + counts["unused"]["images"]
        assert used == len(items)
    assert documents["fewshot_n20_draw0.json"]["training"] != documents["fewshot_n20_draw1.json"]["training"]

    for seed in range(3):
        full = documents[f"full_seed{seed}.json"]
        previous: set[str] = set()
        for percent in (10, 25, 50):
            doc = documents[f"label_efficiency_p{percent}_seed{seed}.json"]
            assert doc["validation"] == full["validation"]
            patients = _patients(doc["training"])
            assert patients <= _patients(full["training"]) and previous <= patients
            assert len(patients) == max(1, int(percent / 100 * len(_patients(full["training"])) + 0.5))
            previous = patients

    # items keep their keys and their paths resolve to the same files as the datalist's
    loaded = load_datalist(out / "full_seed0.json", "training", check_files=False)
    assert {os.path.normpath(i["image"]) for i in loaded} <= {
        os.path.normpath(str(datalist.parent / img)) for img in all_images
    }
    index = json.loads((out / "index.json").read_text())
    assert len(index["files"]) == 3 + 5 + 9


def test_split_files_are_byte_identical_for_a_seed(tmp_path):
    datalist = _datalist(tmp_path, _items(40), "fass")
    first = fass_splits(datalist, tmp_path / "data" / "splits_a", seed=7)
    second = fass_splits(datalist, tmp_path / "data" / "splits_b", seed=7)
    again = fass_splits(datalist, tmp_path / "data" / "splits_a", seed=7)
    for a, b, c in zip(first, second, again):
        assert a.read_bytes() == b.read_bytes() == c.read_bytes()
    different = fass_splits(datalist, tmp_path / "data" / "splits_c", seed=8)
    assert first[0].read_bytes() != different[0].read_bytes()


def test_fewshot_needs_enough_images(tmp_path):
    datalist = _datalist(tmp_path, _items(12), "fass")
    with pytest.raises(SplitError, match="few-shot needs 20 training images"):
        fass_splits(datalist, tmp_path / "splits", seed=0)


def test_jnu_splits_protocol(tmp_path):
    items = _items(20, sizes=(30, 12, 25), prefix="JNU")
    datalist = _datalist(tmp_path, items, "jnu_ifm")
    out = tmp_path / "data" / "splits"
    paths = jnu_splits(datalist, out, seed=0)
    documents = {p.name: json.loads(p.read_text()) for p in paths if p.name != "index.json"}
    assert sorted(documents) == sorted(
        [f"fewshot_p4_draw{d}.json" for d in range(5)] + [f"full_seed{s}.json" for s in range(3)]
    )
    test_patients = _patients(documents["full_seed0.json"]["test"])
    assert len(test_patients) == 10  # half of 20 patients
    for draw in range(5):
        doc = documents[f"fewshot_p4_draw{draw}.json"]
        _assert_disjoint(doc)
        assert doc["split"]["patient_grouped"] is True
        assert len(_patients(doc["training"])) == 4
        per_patient = {p: sum(1 for i in doc["training"] if i["patient"] == p) for p in _patients(doc["training"])}
        assert all(n <= 10 for n in per_patient.values())
        pool = [i for i in items if i["patient"] not in test_patients]
        expected_val = [i for i in pool if i["patient"] not in per_patient]
        assert len(doc["validation"]) == len(expected_val)
    for doc in documents.values():
        _assert_disjoint(doc)
        assert _patients(doc["test"]) == test_patients


def test_jnu_paper_validation_switch(tmp_path):
    items = _items(12, sizes=(15,), prefix="JNU")
    datalist = _datalist(tmp_path, items, "jnu_ifm")
    paths = jnu_splits(datalist, tmp_path / "s", seed=1, num_draws=1, num_seeds=1, val_includes_train_patients=True)
    doc = json.loads(paths[0].read_text())
    assert doc["split"]["patient_grouped"] is False
    non_test = len(items) - len(doc["test"])
    assert len(doc["training"]) == 40 and len(doc["validation"]) == non_test - 40
    assert not _patients(doc["training"]) & _patients(doc["test"])


def test_holdout_splits_keep_the_official_test(tmp_path):
    items = _items(30)
    test_items = _items(5, prefix="T")
    datalist = _datalist(tmp_path, items, "fetal_planes", test=test_items)
    paths = holdout_splits(datalist, tmp_path / "data" / "splits", seed=0, num_seeds=2)
    doc = json.loads(paths[0].read_text())
    assert [i["image"] for i in doc["test"]] == ["../" + i["image"] for i in test_items]
    _assert_disjoint(doc)
    leaking = _datalist(tmp_path, items, "fetal_planes", test=[dict(items[0], image="images/other.png")])
    with pytest.raises(SplitError, match="patient P000"):
        holdout_splits(leaking, tmp_path / "x", seed=0)


def test_datalist_errors(tmp_path):
    bad = _datalist(tmp_path, [{"image": "images/a.png", "label": "labels/a.png"}], "fass")
    with pytest.raises(SplitError, match="no 'patient'"):
        fass_splits(bad, tmp_path / "s")


def test_cli(tmp_path, capsys):
    datalist = _datalist(tmp_path, _items(40), "fass")
    assert main(["fass", str(datalist), str(tmp_path / "cli"), "--seed", "2"]) == 0
    assert "wrote 18 files" in capsys.readouterr().out
    assert json.loads((tmp_path / "cli" / "full_seed0.json").read_text())["split"]["seed"] == 2
