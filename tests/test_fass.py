"""FASS converter on a tiny tree in the released layout (outer zip -> inner zip -> IMAGES / ARRAY_FORMAT)."""

from __future__ import annotations

import csv
import io
import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data_prep.convert_common import CountMismatchError, UnsafeArchiveError
from data_prep.fass import (
    LABELS,
    UnsafePickleError,
    convert_fass,
    load_structures_npy,
    main,
    paint_labels,
)
from ultradino_monai.utils.files import sha256_file

INNER_NAME = "Fetal Abdominal Structures Segmentation Dataset Using Ultrasonic Images"
H, W = 6, 8
# patient -> number of images
PATIENTS = {"P1": 3, "P2": 2, "P3": 2, "P4": 1, "P5": 2, "P6": 2, "P7": 1, "P8": 2}


def _png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _npy_bytes(payload) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, payload, allow_pickle=True)
    return buffer.getvalue()


def _masks(index: int) -> dict[str, np.ndarray]:
    """Liver block with the vein inside it (overlap), stomach touching the artery (overlap)."""
    liver = np.zeros((H, W), np.uint8)
    liver[1:5, 1:5] = 1
    vein = np.zeros((H, W), bool)
    vein[2:4, 2:3] = True  # 2 pixels, all inside the liver
    stomach = np.zeros((H, W), np.uint8)
    stomach[0:2, 5:8] = 1
    artery = np.zeros((H, W), np.uint8)
    artery[1:3, 7] = 1  # 2 pixels; (1, 7) also stomach
    masks = {"liver": liver, "vein": vein, "stomach": stomach, "artery": artery}
    if index % 3 == 2:
        del masks["artery"]  # the key set varies in the release
    return masks


def _expected_label(masks: dict[str, np.ndarray]) -> np.ndarray:
    label = np.zeros((H, W), np.uint8)
    for name in ("liver", "stomach", "artery", "vein"):
        if name in masks:
            label[np.asarray(masks[name]) != 0] = LABELS[name]
    return label


def _release_files() -> dict[str, bytes]:
    """``{path inside the release folder: bytes}`` plus the expected arrays."""
    files: dict[str, bytes] = {}
    rng = np.random.default_rng(0)
    index = 0
    for patient, count in PATIENTS.items():
        for k in range(count):
            stem = f"{patient}_IMG{k + 1}"
            grey = rng.integers(0, 256, size=(H, W), dtype=np.uint8)
            rgb = np.repeat(grey[..., None], 3, axis=2)
            files[f"IMAGES/{stem}.png"] = _png_bytes(rgb)
            files[f"ARRAY_FORMAT/{stem}.npy"] = _npy_bytes({"image": rgb, "structures": _masks(index)})
            index += 1
    files["README.txt"] = b"FASS test tree"
    return files


def _expected() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    out = {}
    rng = np.random.default_rng(0)
    index = 0
    for patient, count in PATIENTS.items():
        for k in range(count):
            grey = rng.integers(0, 256, size=(H, W), dtype=np.uint8)
            out[f"{patient}_IMG{k + 1}"] = (grey, _expected_label(_masks(index)))
            index += 1
    return out


def _nested_zip(path: Path, extra_outer: dict[str, bytes] | None = None) -> Path:
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as archive:
        for name, data in _release_files().items():
            archive.writestr(f"{INNER_NAME}/{name}", data)
        archive.writestr(f"__MACOSX/{INNER_NAME}/IMAGES/._P1_IMG1.png", b"resource fork")
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"4gcpm9dsc3-1/{INNER_NAME}.zip", inner.getvalue())
        for name, data in (extra_outer or {}).items():
            archive.writestr(name, data)
    return path


def _expected_counts() -> tuple[int, int]:
    return sum(PATIENTS.values()), len(PATIENTS)


SPLIT_OPTIONS = {"fewshot_images": 2, "num_draws": 2, "num_seeds": 2, "label_percentages": (50,)}


def _convert(raw: Path, out: Path, **kwargs):
    images, patients = _expected_counts()
    return convert_fass(raw, out, expect_images=images, expect_patients=patients, split_options=SPLIT_OPTIONS, **kwargs)


def test_paint_order_and_overlaps_hand_checked():
    masks = _masks(0)
    label, overlaps = paint_labels(masks, (H, W))
    assert label[2, 2] == LABELS["vein"]  # vein wins over liver
    assert label[1, 7] == LABELS["artery"]  # artery wins over stomach
    assert label[1, 1] == LABELS["liver"] and label[0, 5] == LABELS["stomach"] and label[5, 0] == 0
    assert overlaps["overlap_pixels"] == 3
    assert overlaps["liver+vein"] == 2 and overlaps["stomach+artery"] == 1 and overlaps["liver+stomach"] == 0


def test_convert_nested_zip(tmp_path):
    raw = _nested_zip(tmp_path / "fass_download.zip")
    before = (sha256_file(raw), os.stat(raw).st_mtime_ns)
    out = tmp_path / "out"
    report = _convert(raw, out)
    assert (sha256_file(raw), os.stat(raw).st_mtime_ns) == before, "the input must not be modified"

    expected = _expected()
    for stem, (grey, label) in expected.items():
        image = np.asarray(Image.open(out / "images" / f"{stem}.png"))
        assert image.ndim == 2 and image.dtype == np.uint8
        assert np.array_equal(image, grey)
        written = Image.open(out / "labels" / f"{stem}.png")
        assert written.mode == "L"
        assert np.array_equal(np.asarray(written), label)

    datalist = json.loads((out / "datalist.json").read_text())
    assert datalist["labels"] == {"background": 0, "artery": 1, "liver": 2, "stomach": 3, "vein": 4}
    assert len(datalist["training"]) == len(expected)
    first = datalist["training"][0]
    assert first == {"image": "images/P1_IMG1.png", "label": "labels/P1_IMG1.png", "patient": "P1", "id": "P1_IMG1"}

    with open(out / "overlaps.csv") as stream:
        rows = list(csv.DictReader(stream))
    assert len(rows) == len(expected)
    by_stem = {row["image"]: row for row in rows}
    assert by_stem["P1_IMG1"]["overlap_pixels"] == "3"  # liver/vein 2 + stomach/artery 1
    assert by_stem["P1_IMG3"]["overlap_pixels"] == "2"  # index 2: no artery mask
    assert by_stem["P1_IMG3"]["stomach+artery"] == "0"

    counts = report["counts"]
    assert counts["images"] == len(expected) and counts["patients"] == len(PATIENTS)
    # every input accounted for: 2 files per image + README + the macOS clutter
    assert counts["input_files"] == 2 * len(expected) + 2
    assert report["ignored_files"] == [f"4gcpm9dsc3-1/{INNER_NAME}.zip/{INNER_NAME}/README.txt"]
    assert len(report["skipped_os_clutter"]) == 1
    assert report["missing_structures"]["artery"] == sum(1 for i in range(len(expected)) if i % 3 == 2)
    assert report["npy_image_differs_from_png"] == []
    assert not [p for p in out.iterdir() if p.name.startswith(".")], "temporary work folders are cleaned up"

    for name in report["split_files"]:
        if name.endswith("index.json"):
            continue
        document = json.loads((out / name).read_text())
        sections = [{i["patient"] for i in document[s]} for s in ("training", "validation", "test")]
        assert not (sections[0] & sections[1]) and not (sections[0] & sections[2]) and not (sections[1] & sections[2])
        assert (out / "splits" / document["test"][0]["image"]).resolve().is_file()


def test_extracted_tree_gives_identical_output(tmp_path):
    zipped = _nested_zip(tmp_path / "release.zip")
    _convert(zipped, tmp_path / "from_zip")
    tree = tmp_path / "extracted" / "some" / "depth" / INNER_NAME
    for name, data in _release_files().items():
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        (tree / name).write_bytes(data)
    _convert(tmp_path / "extracted", tmp_path / "from_tree")
    for folder in ("images", "labels"):
        for path in sorted((tmp_path / "from_zip" / folder).iterdir()):
            assert path.read_bytes() == (tmp_path / "from_tree" / folder / path.name).read_bytes()
    assert (tmp_path / "from_zip" / "splits" / "full_seed0.json").read_bytes() == (
        tmp_path / "from_tree" / "splits" / "full_seed0.json"
    ).read_bytes()


def test_count_check_names_the_difference(tmp_path):
    raw = _nested_zip(tmp_path / "release.zip")
    with pytest.raises(CountMismatchError, match=r"found 15 images, expected 1588; found 8 patients, expected 169"):
        convert_fass(raw, tmp_path / "out")
    assert not (tmp_path / "out" / "datalist.json").exists()


def test_path_traversal_is_refused(tmp_path):
    raw = _nested_zip(tmp_path / "evil.zip", extra_outer={"../../escaped.txt": b"x"})
    out = tmp_path / "deep" / "out"
    with pytest.raises(UnsafeArchiveError, match="path traversal"):
        _convert(raw, out)
    assert not (tmp_path / "escaped.txt").exists() and not (tmp_path / "deep" / "escaped.txt").exists()


def test_unsafe_pickle_is_refused():
    class Payload:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    data = _npy_bytes({"image": np.zeros((2, 2), np.uint8), "structures": {"liver": Payload()}})
    with pytest.raises(UnsafePickleError, match="system, which is not on the NumPy-array allowlist"):
        load_structures_npy(data, "ARRAY_FORMAT/bad.npy")
    plain = io.BytesIO()
    np.save(plain, np.zeros((2, 2), np.uint8))
    with pytest.raises(ValueError, match="expected a pickled dict"):
        load_structures_npy(plain.getvalue(), "ARRAY_FORMAT/plain.npy")
    with pytest.raises(ValueError, match="unknown structure 'kidney'"):
        load_structures_npy(_npy_bytes({"structures": {"kidney": np.zeros((2, 2))}}), "x.npy")


def test_unpaired_files_and_mask_shape_errors(tmp_path):
    tree = tmp_path / "raw"
    for name, data in _release_files().items():
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        (tree / name).write_bytes(data)
    (tree / "ARRAY_FORMAT" / "P1_IMG1.npy").unlink()
    with pytest.raises(ValueError, match=r"1 PNG\(s\) without .npy \['P1_IMG1'\]"):
        _convert(tree, tmp_path / "out")
    (tree / "ARRAY_FORMAT" / "P1_IMG1.npy").write_bytes(
        _npy_bytes({"structures": {"liver": np.zeros((H + 1, W), np.uint8)}})
    )
    with pytest.raises(ValueError, match=r"mask shape \(7, 8\) does not match the image's \(6, 8\)"):
        _convert(tree, tmp_path / "out")


def test_cli(tmp_path, capsys):
    raw = _nested_zip(tmp_path / "release.zip")
    images, patients = _expected_counts()
    code = main(
        [
            str(raw),
            str(tmp_path / "cli"),
            "--expect-images",
            str(images),
            "--expect-patients",
            str(patients),
            "--no-splits",
        ]
    )
    assert code == 0
    assert f"FASS: {images} images of {patients} patients" in capsys.readouterr().out
    assert main([str(raw), str(tmp_path / "cli2")]) == 2
    assert "expected 1588" in capsys.readouterr().err
