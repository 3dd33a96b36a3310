"""FETAL_PLANES_DB converter on tiny trees in the exact Zenodo layout (docs/datasets.md §1.3)."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data_prep.convert_common import ConversionError, CountMismatchError, UnsafeArchiveError
from data_prep.fetal_planes import CLASSES, convert_fetal_planes, main, parse_release_csv
from ultradino_monai.data.datalist import load_datalist, read_datalist
from ultradino_monai.data.splits import patient_grouped_split
from ultradino_monai.utils.files import sha256_file

PLANES = list(CLASSES)
SIZES = [(40, 30), (52, 36), (45, 33)]  # (W, H): the release mixes image sizes
N_TRAIN_PATIENTS, N_TEST_PATIENTS, PER_PATIENT = 12, 6, 3
TINY = {
    "images": (N_TRAIN_PATIENTS + N_TEST_PATIENTS) * PER_PATIENT,
    "test": N_TEST_PATIENTS * PER_PATIENT,
    "patients": N_TRAIN_PATIENTS + N_TEST_PATIENTS,
}


def _rows():
    rows = []
    for p in range(1, N_TRAIN_PATIENTS + N_TEST_PATIENTS + 1):
        train = 1 if p <= N_TRAIN_PATIENTS else 0
        for k in range(PER_PATIENT):
            plane = PLANES[(p + k) % len(PLANES)]
            brain = "Trans-thalamic" if plane == "Fetal brain" else "Not A Brain"
            rows.append(
                (f"Patient{p:05d}_Plane{k + 1}_1_of_{PER_PATIENT}", p, plane, brain, "Op. 1", "Voluson E6", train)
            )
    return rows


def _write_release(root: Path) -> list[tuple]:
    """FETAL_PLANES_DB_data.csv (';', 'Train ' header, names without .png) + Images/ with mixed sizes and modes."""
    rows = _rows()
    images = root / "Images"
    images.mkdir(parents=True)
    lines = ["Image_name;Patient_num;Plane;Brain_plane;Operator;US_Machine;Train "]
    rng = np.random.default_rng(0)
    for index, (name, patient, plane, brain, op, machine, train) in enumerate(rows):
        lines.append(f"{name};{patient};{plane};{brain};{op};{machine};{train}")
        width, height = SIZES[index % len(SIZES)]
        grey = rng.integers(0, 256, size=(height, width), dtype=np.uint8)
        if index % 3 == 1:  # some release images are RGB(A) with grey content
            Image.fromarray(np.stack([grey] * 3, axis=-1)).save(images / f"{name}.png")
        elif index % 3 == 2:
            Image.fromarray(np.stack([grey] * 3 + [np.full_like(grey, 255)], axis=-1)).save(images / f"{name}.png")
        else:
            Image.fromarray(grey).save(images / f"{name}.png")
    (root / "FETAL_PLANES_DB_data.csv").write_text("\r\n".join(lines) + "\r\n", encoding="utf-8")
    (root / "FETAL_PLANES_DB_data.xlsx").write_bytes(b"not read")
    return rows


def _zip_tree(src: Path, zip_path: Path, prefix: str = "FETAL_PLANES_ZENODO/") -> None:
    with zipfile.ZipFile(zip_path, "w") as archive:
        for path in sorted(src.rglob("*")):
            if path.is_file():
                archive.write(path, prefix + path.relative_to(src).as_posix())


@pytest.fixture()
def release(tmp_path):
    root = tmp_path / "raw"
    rows = _write_release(root)
    return root, rows


def _all_items(datalist):
    return {section: load_datalist(datalist, section) for section in ("training", "validation", "test")}


def test_release_csv_quirks_are_handled():
    data = (
        b"Image_name;Patient_num;Plane;Brain_plane;Operator;US_Machine;Train \n"
        b"Patient00007_Plane3_1_of_2;7;Fetal femur;Not A Brain;Op. 2;Aloka;0\n"
    )
    (record,) = parse_release_csv(data)
    assert record["image"] == "images/Patient00007_Plane3_1_of_2.png"
    assert record["label"] == 4 and record["patient"] == "Patient00007" and record["train_flag"] == 0
    with pytest.raises(ConversionError, match="';'-separated"):
        parse_release_csv(data.replace(b";", b","))
    with pytest.raises(ConversionError, match="unknown Plane"):
        parse_release_csv(data.replace(b"Fetal femur", b"Fetal heart"))
    with pytest.raises(ConversionError, match="Train must be 0 or 1"):
        parse_release_csv(data.replace(b"Aloka;0", b"Aloka;2"))


def test_folder_release_labels_splits_and_images(release, tmp_path):
    raw, rows = release
    out = tmp_path / "out"
    report = convert_fetal_planes(raw, out, seed=3, expected=TINY, workers=2)
    datalist = out / "datalist.json"
    document = read_datalist(datalist)
    assert document["classes"] == PLANES
    sections = _all_items(datalist)

    by_id = {row[0]: row for row in rows}
    seen = set()
    for section, items in sections.items():
        for item in items:
            name = item["id"]
            seen.add(name)
            row = by_id[name]
            assert item["label"] == PLANES.index(row[2])
            assert item["patient"] == f"Patient{row[1]:05d}"
            assert (row[6] == 0) == (section == "test")  # official split: Train=0 is the test set
            with Image.open(item["image"]) as image:
                assert image.mode == "L"
                width, height = image.size
                original = Image.open(raw / "Images" / f"{name}.png").convert("L")
                assert (width, height) == original.size
                assert np.array_equal(np.asarray(image), np.asarray(original))
    assert seen == set(by_id)
    assert len(sections["test"]) == TINY["test"]
    assert len(sections["training"]) + len(sections["validation"]) == TINY["images"] - TINY["test"]
    patients = {s: {i["patient"] for i in items} for s, items in sections.items()}
    assert not (patients["training"] & patients["validation"])
    assert not (patients["training"] & patients["test"]) and not (patients["validation"] & patients["test"])
    # images-weighted 80/20 of 36 pool images in whole patients of 3 images: 27-30 / 6-9
    assert 6 <= len(sections["validation"]) <= 9
    # the datalist split is splits.patient_grouped_split with the holdout salt, i.e. full_seed0.json
    split0 = read_datalist(out / "splits" / "full_seed0.json")
    assert [i["image"].split("/")[-1] for i in split0["training"]] == [
        i["image"].split("/")[-1] for i in document["training"]
    ]
    assert [i["image"].split("/")[-1] for i in split0["validation"]] == [
        i["image"].split("/")[-1] for i in document["validation"]
    ]
    # per-section class counts are reported and add up
    for section, items in sections.items():
        counts = report["sections"][section]["classes"]
        assert sum(counts.values()) == len(items)
        assert counts == {c: sum(1 for i in items if i["label"] == k) for k, c in enumerate(PLANES)}
    assert report["image_sizes_wxh"] == {"40x30": 18, "45x33": 18, "52x36": 18}
    assert "FETAL_PLANES_DB_data.xlsx" in report["ignored_files"]


def test_split_is_seeded(release, tmp_path):
    raw, _ = release
    a = convert_fetal_planes(raw, tmp_path / "a", seed=1, expected=TINY, write_splits=False)
    convert_fetal_planes(raw, tmp_path / "b", seed=1, expected=TINY, write_splits=False)
    c = convert_fetal_planes(raw, tmp_path / "c", seed=2, expected=TINY, write_splits=False)
    docs = [read_datalist(tmp_path / name / "datalist.json") for name in "abc"]
    assert docs[0]["validation"] == docs[1]["validation"]
    assert {i["patient"] for i in docs[0]["validation"]} != {i["patient"] for i in docs[2]["validation"]}
    assert a["split"]["seed"] == 1 and c["split"]["seed"] == 2
    pool = [i for i in docs[0]["training"] + docs[0]["validation"]]
    expected_val = patient_grouped_split(pool, (0.8, 0.2), 1, by="images", salt=("holdout", "full", 0))[1]
    assert {i["id"] for i in expected_val} == {i["id"] for i in docs[0]["validation"]}


def test_zip_release_matches_folder_and_input_is_untouched(release, tmp_path):
    raw, _ = release
    zip_path = tmp_path / "FETAL_PLANES_ZENODO.zip"
    _zip_tree(raw, zip_path)
    before = sha256_file(zip_path)
    convert_fetal_planes(raw, tmp_path / "from_folder", expected=TINY, write_splits=False)
    convert_fetal_planes(zip_path, tmp_path / "from_zip", expected=TINY, write_splits=False)
    assert sha256_file(zip_path) == before
    assert sorted(p.name for p in zip_path.parent.iterdir() if p.name.startswith("FETAL")) == [
        "FETAL_PLANES_ZENODO.zip"
    ]
    a = read_datalist(tmp_path / "from_folder" / "datalist.json")
    b = read_datalist(tmp_path / "from_zip" / "datalist.json")
    assert a["training"] == b["training"] and a["test"] == b["test"]
    for item in a["test"]:
        assert sha256_file(tmp_path / "from_folder" / item["image"]) == sha256_file(
            tmp_path / "from_zip" / item["image"]
        )


def test_zip_with_path_traversal_is_refused(release, tmp_path):
    raw, _ = release
    zip_path = tmp_path / "evil.zip"
    _zip_tree(raw, zip_path)
    with zipfile.ZipFile(zip_path, "a") as archive:
        archive.writestr("../../escape.txt", "x")
    out = tmp_path / "out"
    with pytest.raises(UnsafeArchiveError, match="path traversal"):
        convert_fetal_planes(zip_path, out, expected=TINY)
    assert not (tmp_path.parent / "escape.txt").exists()
    assert not (out / "datalist.json").exists()


def test_counts_are_asserted(release, tmp_path):
    raw, _ = release
    with pytest.raises(CountMismatchError, match=r"found 54 images, expected 12400.*--no-count-check"):
        convert_fetal_planes(raw, tmp_path / "out")
    assert main([str(raw), str(tmp_path / "out2")]) == 2


def test_missing_image_and_output_inside_input(release, tmp_path):
    raw, rows = release
    with pytest.raises(ConversionError, match="inside the input"):
        convert_fetal_planes(raw, raw / "converted", expected=TINY)
    (raw / "Images" / f"{rows[5][0]}.png").unlink()
    with pytest.raises(ConversionError, match=rf"missing from Images/.*{rows[5][0]}"):
        convert_fetal_planes(raw, tmp_path / "out", expected=TINY)


def _write_ultradino_csvs(folder: Path, rows, assignment) -> None:
    folder.mkdir()
    names = {"training": "train_split.csv", "validation": "val_split.csv", "test": "test_split.csv"}
    for section, filename in names.items():
        lines = ["Image_name,Patient_num,Plane,Brain_plane,Operator,US_Machine,Train,label"]
        for row in rows:
            if assignment(row) == section:
                lines.append(",".join(str(v) for v in row) + f",{PLANES.index(row[2])}")
        (folder / filename).write_text("\n".join(lines) + "\n")


def test_ultradino_split_import_gives_exact_sections(release, tmp_path, capsys):
    raw, rows = release

    def assignment(row):
        return "test" if row[6] == 0 else ("validation" if row[1] in (2, 5, 11) else "training")

    _write_ultradino_csvs(tmp_path / "ud", rows, assignment)
    expected_ud = {"training": 27, "validation": 9, "test": 18}
    out = tmp_path / "out"
    report = convert_fetal_planes(
        raw, out, ultradino_splits=tmp_path / "ud", expected=TINY, expected_ultradino=expected_ud
    )
    document = read_datalist(out / "datalist.json")
    for section in ("training", "validation", "test"):
        assert {i["id"] for i in document[section]} == {r[0] for r in rows if assignment(r) == section}
    assert report["split"]["kind"] == "ultradino"
    assert read_datalist(out / "splits" / "ultradino.json")["split"]["kind"] == "ultradino"
    with pytest.raises(CountMismatchError, match="found 27 training, expected 5804"):
        convert_fetal_planes(raw, tmp_path / "out2", ultradino_splits=tmp_path / "ud", expected=TINY)
    # the CLI with --no-count-check runs the same conversion and prints the class table
    assert main([str(raw), str(tmp_path / "cli"), "--ultradino-splits", str(tmp_path / "ud"), "--no-count-check"]) == 0
    printed = capsys.readouterr().out
    assert "Maternal cervix" in printed and "validation" in printed


def test_ultradino_split_disagreeing_with_release_is_refused(release, tmp_path):
    raw, rows = release
    _write_ultradino_csvs(tmp_path / "ud", rows, lambda r: "test" if r[6] == 0 else "training")
    path = tmp_path / "ud" / "train_split.csv"
    lines = path.read_text().splitlines()
    fields = lines[1].split(",")
    fields[-1] = str((int(fields[-1]) + 1) % 6)  # wrong label for the first training row
    lines[1] = ",".join(fields)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConversionError, match="label .* disagrees with the release table"):
        convert_fetal_planes(
            raw, tmp_path / "out", ultradino_splits=tmp_path / "ud", expected=TINY, expected_ultradino=None
        )
