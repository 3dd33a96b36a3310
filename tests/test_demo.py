"""Tests of the embedded demo dataset (data_prep.demo, data_prep.dicom_synth)."""

import io
import json
from contextlib import redirect_stdout
from dataclasses import replace
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from data_prep import demo
from data_prep.dicom_synth import PRIVATE_CREATOR, PRIVATE_GROUP
from data_prep.phantom import PLANE_CLASSES
from ultradino_monai.data.datalist import load_datalist, read_datalist
from ultradino_monai.utils.files import sha256_file

SEED = 3


def _hashes(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): sha256_file(p) for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def demo_dirs(tmp_path_factory):
    base = tmp_path_factory.mktemp("demo")
    first = demo.generate_demo(base / "a", seed=SEED, scale="tiny")
    second = demo.generate_demo(base / "b", seed=SEED, scale="tiny")
    other = demo.generate_demo(base / "c", seed=SEED + 1, scale="tiny")
    return {
        "a": base / "a",
        "b": base / "b",
        "c": base / "c",
        "summary": first,
        "summary_b": second,
        "summary_c": other,
    }


@pytest.fixture(scope="module")
def phi(demo_dirs):
    return json.loads((demo_dirs["a"] / "archive_phi.json").read_text())


# ----------------------------------------------------------------------------- determinism


def test_same_seed_gives_byte_identical_files(demo_dirs):
    a, b = _hashes(demo_dirs["a"]), _hashes(demo_dirs["b"])
    assert a == b
    assert len(a) == demo_dirs["summary"]["file_count"] + 1  # + the marker
    assert any(k.endswith(".png") for k in a) and any(k.startswith("archive/") for k in a)


def test_different_seed_gives_different_files(demo_dirs):
    a, c = _hashes(demo_dirs["a"]), _hashes(demo_dirs["c"])
    images_a = {h for k, h in a.items() if k.endswith(".png") and "/images/" in k}
    images_c = {h for k, h in c.items() if k.endswith(".png") and "/images/" in k}
    assert images_a and not (images_a & images_c)
    dicom_a = {h for k, h in a.items() if k.startswith("archive/")}
    dicom_c = {h for k, h in c.items() if k.startswith("archive/")}
    assert not (dicom_a & dicom_c)
    phi_c = json.loads((demo_dirs["c"] / "archive_phi.json").read_text())
    phi_a = json.loads((demo_dirs["a"] / "archive_phi.json").read_text())
    assert not set(phi_a["uids"]) & set(phi_c["uids"])


def test_second_call_reuses_complete_demo(demo_dirs):
    root = demo_dirs["a"]
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}
    summary = demo.generate_demo(root, seed=SEED, scale="tiny")
    assert summary["regenerated"] is False
    assert summary["file_count"] == demo_dirs["summary"]["file_count"]
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()} == before
    assert demo_dirs["summary"]["regenerated"] is True
    # a different seed, or a missing file, means the folder is not a complete demo for the request
    assert demo.is_complete(root, SEED, "tiny")
    assert not demo.is_complete(root, SEED + 1, "tiny")
    assert not demo.is_complete(root, SEED, "default")


def test_incomplete_demo_is_detected(demo_dirs):
    root = demo_dirs["c"]
    victim = sorted((root / "planes" / "images").glob("*.png"))[0]
    victim.unlink()
    assert not demo.is_complete(root, SEED + 1, "tiny")


def test_files_added_by_a_user_neither_trigger_regeneration_nor_get_deleted(demo_dirs):
    root = demo_dirs["b"]
    extra = root / "fass" / "splits" / "fewshot_n20_draw0.json"
    extra.parent.mkdir(parents=True, exist_ok=True)
    extra.write_text("{}")
    try:
        assert demo.is_complete(root, SEED, "tiny")
        assert demo.generate_demo(root, seed=SEED, scale="tiny")["regenerated"] is False
        assert extra.read_text() == "{}"
    finally:
        extra.unlink()
        extra.parent.rmdir()


def test_cli_prints_summary_and_reuses(demo_dirs):
    stream = io.StringIO()
    with redirect_stdout(stream):
        assert demo.main([str(demo_dirs["b"]), "--seed", str(SEED), "--scale", "tiny"]) == 0
    summary = json.loads(stream.getvalue())
    assert summary["regenerated"] is False and summary["seed"] == SEED


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="scale"):
        demo.generate_demo(tmp_path / "x", scale="huge")
    with pytest.raises(ValueError, match="seed"):
        demo.generate_demo(tmp_path / "x", seed=-1)
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(NotADirectoryError):
        demo.generate_demo(tmp_path / "file", scale="tiny")


# ----------------------------------------------------------------------------- DICOM archive


def _ingest_files(phi):
    return [f for f in phi["files"] if f["expected"] == "ingest"]


def test_archive_covers_formats_and_sop_classes(phi):
    files = _ingest_files(phi)
    assert {f["photometric"] for f in files} == {"MONOCHROME2", "RGB", "YBR_FULL_422"}
    assert {f["sop_class_uid"] for f in files} == {"1.2.840.10008.5.1.4.1.1.6.1", "1.2.840.10008.5.1.4.1.1.3.1"}
    assert any(f["expected"] == "drop" and f["sop_class_uid"] == "1.2.840.10008.5.1.4.1.1.7" for f in phi["files"])
    assert any(not Path(f["path"]).suffix for f in files)  # DICOMDIR-style names without extension


def test_dicoms_read_back_and_decode(demo_dirs, phi):
    root = demo_dirs["a"]
    for record in phi["files"]:
        ds = pydicom.dcmread(root / record["path"])
        array = ds.pixel_array
        assert ds.Rows == 480 and ds.Columns == 640  # default frame size even at tiny scale
        n = record["frames"]
        colour = record["photometric"] != "MONOCHROME2"
        expected = (480, 640, 3) if colour else (480, 640)
        assert array.shape == ((n,) + expected if n > 1 else expected), record["path"]
        assert array.dtype == np.uint8
        assert ds.PhotometricInterpretation == record["photometric"]
        assert ds.SOPClassUID == record["sop_class_uid"]
        assert ds.file_meta.TransferSyntaxUID == record["transfer_syntax_uid"]
        if record["photometric"] == "YBR_FULL_422":
            assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.50"
            assert ds["PixelData"].is_undefined_length  # encapsulated
            # grey ultrasound decoded to RGB: channels agree up to JPEG chroma error
            frame = array if n == 1 else array[0]
            fan = frame[160:400, 200:440].astype(int)
            assert np.abs(fan[..., 0] - fan[..., 1]).mean() < 4 and fan.mean() > 10
        if n > 1:
            assert int(ds.NumberOfFrames) == n
            assert float(ds.FrameTime) > 0 and ds.FrameIncrementPointer == 0x00181063


def test_ultrasound_regions(demo_dirs, phi):
    for record in _ingest_files(phi):
        ds = pydicom.dcmread(demo_dirs["a"] / record["path"], stop_before_pixels=True)
        assert len(ds.SequenceOfUltrasoundRegions) == 1
        region = ds.SequenceOfUltrasoundRegions[0]
        assert region.RegionSpatialFormat == 1 and region.RegionDataType == 1
        assert region.PhysicalUnitsXDirection == 3 and region.PhysicalUnitsYDirection == 3
        assert region.PhysicalDeltaX == pytest.approx(record["mm_per_px"] / 10.0)
        assert region.PhysicalDeltaY == pytest.approx(record["mm_per_px"] / 10.0)
        r0, c0, r1, c1 = record["fan_bbox"]
        assert (region.RegionLocationMinX0, region.RegionLocationMinY0) == (c0, r0)
        assert (region.RegionLocationMaxX1, region.RegionLocationMaxY1) == (c1, r1)
        assert region.RegionLocationMaxX1 < ds.Columns and region.RegionLocationMaxY1 < ds.Rows
        assert region.RegionLocationMinY0 > record["banner_height"]


def test_banner_text_above_fan_and_black_sector_corners(demo_dirs, phi):
    for record in _ingest_files(phi):
        ds = pydicom.dcmread(demo_dirs["a"] / record["path"])
        frame = ds.pixel_array if record["frames"] == 1 else ds.pixel_array[0]
        grey = frame.mean(axis=-1) if frame.ndim == 3 else frame.astype(float)
        banner = grey[: record["banner_height"]]
        assert (banner > 150).sum() > 300  # light text on black
        assert np.median(banner) < 10
        r0, c0, r1, c1 = record["fan_bbox"]
        assert r0 > record["banner_height"]
        # a sector's bounding box has black bottom corners (the fan is an annular sector)
        assert grey[r1, c0] < 20 and grey[r1, c1] < 20
        # ... while the sector's centre line (the middle scan line, always inside the fan) shows tissue
        # (mean 50-65 grey levels on seeds 0-2; a scan-conversion seam on the centre ray leaves it black),
        # as does the box as a whole
        assert grey[r0 : r1 + 1, (c0 + c1) // 2].mean() > 15 and grey[r0:r1, c0:c1].mean() > 15


def test_phi_planted_in_header_private_and_nested(demo_dirs, phi):
    strings, uids = set(phi["strings"]), set(phi["uids"])
    for record in phi["files"]:
        ds = pydicom.dcmread(demo_dirs["a"] / record["path"], stop_before_pixels=True)
        for keyword in (
            "PatientName",
            "PatientID",
            "PatientBirthDate",
            "StudyDate",
            "StudyTime",
            "AccessionNumber",
            "InstitutionName",
            "ReferringPhysicianName",
            "OperatorsName",
            "StationName",
            "PatientAddress",
            "LastMenstrualDate",
            "DeviceSerialNumber",
        ):
            assert str(ds.data_element(keyword).value) in strings, keyword
        for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
            assert str(ds.data_element(keyword).value) in uids, keyword
        block = ds.private_block(PRIVATE_GROUP, PRIVATE_CREATOR)
        assert block[0x01].value == str(ds.PatientName)
        xml = block[0x02].value
        assert ds.StudyInstanceUID in xml and ds.StudyDate in xml and ds.PatientID in xml
        request = ds.RequestAttributesSequence[0]
        assert request.AccessionNumber == ds.AccessionNumber
        assert request.ReferencedStudySequence[0].ReferencedSOPInstanceUID == ds.StudyInstanceUID
        assert ds.OtherPatientIDsSequence[0].PatientID in strings
        patient = next(p for p in phi["patients"] if p["patient_id"] == ds.PatientID)
        assert patient["patient_name"] == str(ds.PatientName)


def test_every_identifying_element_is_listed(demo_dirs, phi):
    """Walk every element (nested and private too): each PN/DA/TM/DT value and instance UID is in the truth list."""
    strings, uids = set(phi["strings"]), set(phi["uids"])
    instance_uid_keywords = {
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "SOPInstanceUID",
        "ReferencedSOPInstanceUID",
        "MediaStorageSOPInstanceUID",
    }
    checked = 0
    for record in phi["files"]:
        ds = pydicom.dcmread(demo_dirs["a"] / record["path"], stop_before_pixels=True)
        elements = list(ds.file_meta) + []

        def visit(dataset, elements=elements):
            for element in dataset:
                if element.VR == "SQ":
                    for item in element.value:
                        visit(item)
                else:
                    elements.append(element)

        visit(ds)
        for element in elements:
            value = str(element.value)
            if element.VR in ("PN", "DA", "TM"):
                assert value in strings, (record["path"], element.keyword, value)
                checked += 1
            elif element.VR == "DT":
                assert value[:8] in strings and value[8:] in strings
            elif element.keyword in instance_uid_keywords:
                assert value in uids, (element.keyword, value)
                checked += 1
    assert checked > 15 * len(phi["files"])


def test_burned_in_text_lists_the_planted_identifiers(phi):
    for record in _ingest_files(phi):
        text = " ".join(record["burned_in_text"])
        patient = next(p for p in phi["patients"] if p["patient_id"] == record["patient_id"])
        assert patient["banner_name"] in text and patient["patient_id"] in text
        assert any(d in text for d in phi["phi"]["dates"] if "/" in d or "." in d)
        assert patient["banner_name"] in phi["strings"]


def test_phi_truth_list_lives_outside_archive(demo_dirs, phi):
    root = demo_dirs["a"]
    assert not list((root / "archive").rglob("*.json"))
    assert phi["seed"] == SEED and phi["version"] == demo.DEMO_VERSION
    names_in_paths = [f["path"] for f in phi["files"] if any(p["patient_id"] in f["path"] for p in phi["patients"])]
    assert names_in_paths  # the "named" export style leaks identifiers into folder names
    for path in names_in_paths:
        assert any(folder in path.split("/") for folder in phi["phi"]["paths"])
    for record in phi["files"]:
        assert (root / record["path"]).is_file()


# ----------------------------------------------------------------------------- datalists and labels


def test_plane_datalist_contract(demo_dirs):
    path = demo_dirs["a"] / "planes" / "datalist.json"
    document = read_datalist(path)
    assert document["classes"] == PLANE_CLASSES
    items = [it for section in demo.SECTIONS for it in load_datalist(path, section)]
    assert len(items) == 6 * demo.SCALES["tiny"].planes_per_class
    for item in items:
        assert isinstance(item["label"], int) and 0 <= item["label"] < 6 and item["patient"]
        image = Image.open(item["image"])
        assert image.mode == "L"
    assert np.bincount([it["label"] for it in items]).tolist() == [demo.SCALES["tiny"].planes_per_class] * 6
    # each pseudo-patient contributes different classes
    by_patient = {}
    for item in items:
        by_patient.setdefault(item["patient"], []).append(item["label"])
    assert all(len(set(v)) == len(v) for v in by_patient.values())


@pytest.mark.parametrize("folder", ["planes", "fass", "jnu_ifm"])
def test_datalists_are_patient_grouped(demo_dirs, folder):
    document = read_datalist(demo_dirs["a"] / folder / "datalist.json")
    owners = {}
    for section in demo.SECTIONS:
        assert document[section], f"{folder}: empty {section}"
        for item in document[section]:
            owners.setdefault(item["patient"], set()).add(section)
    assert all(len(sections) == 1 for sections in owners.values())


@pytest.mark.parametrize(
    "folder, labels",
    [
        ("fass", {"background": 0, "artery": 1, "liver": 2, "stomach": 3, "vein": 4}),
        ("jnu_ifm", {"background": 0, "pubic_symphysis": 1, "head": 2}),
    ],
)
def test_label_pngs_are_index_maps(demo_dirs, folder, labels):
    path = demo_dirs["a"] / folder / "datalist.json"
    assert read_datalist(path)["labels"] == labels
    seen = set()
    for section in demo.SECTIONS:
        for item in load_datalist(path, section):
            label = Image.open(item["label"])
            image = Image.open(item["image"])
            assert label.mode == "L" and label.size == image.size
            values = np.asarray(label)
            assert set(np.unique(values).tolist()) <= set(labels.values())
            # labels stay inside the fan: the display corners lie outside a sector
            assert not values[:3, :3].any() and not values[:3, -3:].any()
            assert not values[-3:, :3].any() and not values[-3:, -3:].any()
            seen |= set(np.unique(values).tolist())
    assert seen == set(labels.values())


def test_jnu_videos_and_patients(demo_dirs):
    items = [it for s in demo.SECTIONS for it in read_datalist(demo_dirs["a"] / "jnu_ifm" / "datalist.json")[s]]
    videos = {it["video"] for it in items}
    assert len(videos) == demo.SCALES["tiny"].jnu_videos
    for video in videos:
        assert len({it["patient"] for it in items if it["video"] == video}) == 1
        assert sum(it["video"] == video for it in items) == demo.SCALES["tiny"].jnu_frames


# ----------------------------------------------------------------------------- statistics


@pytest.fixture(scope="module")
def plane_features(tmp_path_factory):
    """20 images per class through the demo's own plane generator at its default display sizes."""
    from skimage.feature import hog

    out = tmp_path_factory.mktemp("planes_stats")
    scale = replace(demo.SCALES["default"], planes_per_class=20)
    demo.generate_planes(out, seed=11, scale=scale)
    items = [it for s in demo.SECTIONS for it in load_datalist(out / "planes" / "datalist.json", s)]
    stats, shapes, labels = [], [], []
    for item in items:
        image = np.asarray(Image.open(item["image"]), dtype=np.float64)
        stats.append([image.mean(), image.std()])
        small = np.asarray(Image.open(item["image"]).resize((96, 72), Image.BILINEAR), np.float32) / 255.0
        shapes.append(hog(small, orientations=8, pixels_per_cell=(16, 16), cells_per_block=(2, 2)))
        labels.append(item["label"])
    return np.array(stats), np.array(shapes), np.array(labels)


def _cv_accuracy(features, labels, C=1.0):
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=3000))
    folds = StratifiedKFold(5, shuffle=True, random_state=0)
    return cross_val_score(model, features, labels, cv=folds).mean()


def test_planes_not_separable_by_intensity_statistics(plane_features):
    stats, _, labels = plane_features
    chance = 1.0 / len(PLANE_CLASSES)
    assert _cv_accuracy(stats, labels) < chance + 0.15


def test_planes_separable_by_structure(plane_features):
    """Gradient-orientation features (HOG) see the anatomy: far above chance, unlike mean/std."""
    _, shapes, labels = plane_features
    assert _cv_accuracy(shapes, labels, C=0.05) > 0.45


def test_preview_sheet(demo_dirs, tmp_path):
    path = demo.make_preview(demo_dirs["a"], tmp_path / "preview.png")
    image = Image.open(path)
    assert image.size[0] > 1000 and image.size[1] > 600
