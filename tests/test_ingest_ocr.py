"""--ocr-check: PHI-like text detection rules, and the offline OCR on a few small frames."""

from __future__ import annotations

import csv

import pytest
from phi_fixtures import SyntheticStudy, make_us_dataset
from pydicom import dcmread
from pydicom.dataset import Dataset

from data_prep.dicom_synth import write_dataset
from data_prep.ingest import BannerPolicy, IngestConfig, run_ingest
from data_prep.ingest.ocr import PhiTextDetector, header_tokens

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
KEY = b"ocr-test-key-0123456789abcdef"


def test_header_tokens_are_normalised_and_filtered():
    dataset = Dataset()
    dataset.PatientName = "Doe^Jane^^Dr"
    dataset.PatientID = "11-05-25-142825"
    dataset.InstitutionName = "Baptist Med Ctr"
    dataset.StudyID = "1"
    tokens = header_tokens(dataset)
    assert {"DOE", "JANE", "110525142825", "BAPTISTMEDCTR", "BAPTIST"} <= tokens
    assert "DR" not in tokens and "1" not in tokens and "MED" not in tokens


@pytest.mark.parametrize(
    "lines, reason",
    [
        (["Gen OB", "C5-1", "+ Cist Mag", "1.06 cm", "28Hz", "3/3/4"], None),  # examples_palette after crop
        (["TIS<0.4 MI=0.8", "LYMPH NODE"], None),
        (["BAPTIST HED CTR"], "ocr_header_token"),  # OCR misread 'MED': the institution word still hits
        (["BAPT1ST HED"], None),  # misread beyond repair: no token, date or digit run
        (["baptist med ctr"], "ocr_header_token"),
        (["Jane  DOE"], "ocr_header_token"),
        (["11-05-25-142825"], "ocr_header_token"),
        (["5/25/2011"], "ocr_date_pattern"),
        (["25.05.2011"], "ocr_date_pattern"),
        (["2011-05-25"], "ocr_date_pattern"),
        (["25 May 2011"], "ocr_date_pattern"),
        (["2:56:22 PM"], "ocr_date_pattern"),
        (["ID 00079241539"], "ocr_digit_run"),
        (["20110525"], "ocr_digit_run"),
    ],
)
def test_detector_rules(lines, reason):
    dataset = Dataset()
    dataset.PatientName = "Doe^Jane"
    dataset.PatientID = "11-05-25-142825"
    dataset.InstitutionName = "Baptist Med Ctr"
    assert PhiTextDetector(header_tokens(dataset)).finding(lines) == reason


def test_ocr_check_quarantines_burned_in_text_and_verifies_masks(tmp_path):
    pytest.importorskip("rapidocr_onnxruntime", reason="--ocr-check needs the optional 'ocr' extra")
    source, output = tmp_path / "in", tmp_path / "out"
    common = dict(rows=120, columns=200, banner_height=40, plant_everything=False)
    # The "tissue" region wrongly includes the banner: OCR must catch the name.
    leaky, _ = make_us_dataset(SyntheticStudy("OA"), region=(0, 0, 199, 119), **common)
    clean, _ = make_us_dataset(SyntheticStudy("OB"), region=(0, 44, 199, 119), **common)
    masked, _ = make_us_dataset(SyntheticStudy("OC"), region=None, **common)
    for name, dataset in (("a.dcm", leaky), ("b.dcm", clean), ("c.dcm", masked)):
        write_dataset(source / name, dataset)
    config = IngestConfig(ocr_check=True, keep_dicom=True, banner_policy=BannerPolicy.parse("mask-top-44"))
    report = run_ingest(source, output, KEY, config, workers=0, progress=False)
    assert report["files"] == {"found": 3, "converted": 2, "quarantined": 1, "skipped": 0}
    rows = list(csv.DictReader((output / "quarantine.csv").open()))
    assert {(r["position"], r["frame"], r["reason"]) for r in rows} == {
        ("0", "", "ocr_header_token"),
        ("0", "0", "ocr_header_token"),
    }
    manifest = list(csv.DictReader((output / "manifest.csv").open()))
    assert [(r["input_position"], r["pixel_policy"], r["ocr"], r["pixels_verified"]) for r in manifest] == [
        ("1", "region", "clean", "1"),
        ("2", "mask-top", "clean", "1"),
    ]
    for path in (output / "dicom").rglob("*.dcm"):
        dataset = dcmread(path)
        assert dataset.BurnedInAnnotation == "NO"
        assert "113101" in {item.CodeValue for item in dataset.DeidentificationMethodCodeSequence}
