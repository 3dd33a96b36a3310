"""Header de-identification: keyed pseudonyms, UIDs, dates, allowlist, markers, Table E.1-1."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac

import pytest
from phi_fixtures import SyntheticStudy, make_us_dataset
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import UID

from data_prep.ingest.annex_e import TABLE_E1_1, blocklist_violations
from data_prep.ingest.config import IngestConfig
from data_prep.ingest.deid import (
    PERMITTED_REPLACEMENTS,
    HeaderDeidentifier,
    add_markers,
    classify_sop_class,
    parse_date,
)
from data_prep.ingest.keys import Pseudonymizer, SecretKeyError, load_secret_key

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom warns on the broken dates we feed it
KEY = b"unit-test-key-0123456789abcdef"


def test_uid_is_keyed_hmac_2_25_form():
    pseudo = Pseudonymizer(KEY)
    original = "1.2.840.113619.2.55.3.604688119.969.1268071029.320"
    expected = int.from_bytes(hmac.new(KEY, b"uid|" + original.encode(), hashlib.sha256).digest()[:16], "big")
    uid = pseudo.uid(original)
    assert uid == f"2.25.{expected}"
    assert UID(uid).is_valid and len(uid) <= 44 and not uid.split(".")[2].startswith("0")
    assert pseudo.uid(original + "\x00") == uid == pseudo.uid(" " + original)  # padding does not matter
    assert Pseudonymizer(b"another-key-0123456789abcdef").uid(original) != uid


def test_domains_are_separated_and_keys_disjoint():
    a, b = Pseudonymizer(KEY), Pseudonymizer(KEY + b"x")
    value = "1.2.3.4"
    assert a.patient(value)[1:] != a.study(value)[1:] != a.instance(value)[1:]
    uids = {a.uid(f"1.2.3.{i}") for i in range(200)}
    assert len(uids) == 200 and uids.isdisjoint({b.uid(f"1.2.3.{i}") for i in range(200)})


def test_key_file_errors(tmp_path):
    with pytest.raises(SecretKeyError, match="not found"):
        load_secret_key(tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.write_text("  \n")
    with pytest.raises(SecretKeyError, match="empty"):
        load_secret_key(empty)
    short = tmp_path / "short"
    short.write_text("abc")
    with pytest.raises(SecretKeyError, match="at least 16"):
        load_secret_key(short)
    good = tmp_path / "good"
    good.write_text("0123456789abcdef0123\n")
    assert load_secret_key(good) == b"0123456789abcdef0123"


def test_date_offsets_per_patient_in_range_and_intervals_kept():
    config = IngestConfig()
    pseudo = Pseudonymizer(KEY)
    offsets = {
        pseudo.date_offset_days(f"id:|MRN{i}", config.date_shift_min_days, config.date_shift_span_days)
        for i in range(50)
    }
    assert len(offsets) > 40  # differ between patients
    assert all(
        -(config.date_shift_min_days + config.date_shift_span_days) < o <= -config.date_shift_min_days for o in offsets
    )
    deid = HeaderDeidentifier(pseudo, config)
    study = SyntheticStudy("DT", study_date="20230415", lmp="20221110")
    dataset, _ = make_us_dataset(study, plant_everything=False, banner_height=0)
    dataset.AcquisitionDate = "20230416"
    dataset.AcquisitionDateTime = "20230416093000.5"
    identity = deid.identity(dataset)
    clean = deid.clean_header(dataset, identity)
    shift = dt.timedelta(days=identity.date_offset_days)
    assert clean.StudyDate == (dt.date(2023, 4, 15) + shift).strftime("%Y%m%d")
    assert clean.AcquisitionDate == (dt.date(2023, 4, 16) + shift).strftime("%Y%m%d")
    assert clean.AcquisitionDateTime == clean.AcquisitionDate  # time part removed
    assert identity.study_date == (dt.date(2023, 4, 15) + shift).isoformat()
    # GA = acquisition date - LMP, computed before anything is shifted or dropped.
    assert identity.gestational_age_days == (dt.date(2023, 4, 16) - dt.date(2022, 11, 10)).days == 157
    assert "LastMenstrualDate" not in clean and clean.StudyTime == ""


def test_patient_key_normalisation_and_fallback():
    deid = HeaderDeidentifier(Pseudonymizer(KEY), IngestConfig())
    a, b = Dataset(), Dataset()
    a.PatientID, b.PatientID = " mrn 0042 ", "MRN  0042"
    assert deid.patient_key(a) == deid.patient_key(b)
    b.IssuerOfPatientID = "HOSPITAL B"
    assert deid.patient_key(a) != deid.patient_key(b)
    c = Dataset()
    c.StudyInstanceUID = "1.2.3"
    assert deid.patient_key(c) == "study:1.2.3"


def test_legacy_and_broken_dates():
    assert parse_date("1997.04.24") == dt.date(1997, 4, 24)  # ACR-NEMA dotted (ExplVR_BigEnd)
    assert parse_date("20230230") is None and parse_date("garbage") is None and parse_date("") is None
    deid = HeaderDeidentifier(Pseudonymizer(KEY), IngestConfig())
    dataset, _ = make_us_dataset(SyntheticStudy("LG"), plant_everything=False, banner_height=0)
    dataset.SeriesDate = "2023-13-45"
    dataset.ContentDate = "1997.04.24"
    clean = deid.clean_header(dataset, deid.identity(dataset))
    assert "SeriesDate" not in clean  # does not parse: removed
    assert len(clean.ContentDate) == 8 and clean.ContentDate != "19970424"


def test_date_policy_drop_keeps_no_dates():
    deid = HeaderDeidentifier(Pseudonymizer(KEY), IngestConfig(date_policy="drop"))
    dataset, _ = make_us_dataset(SyntheticStudy("DR"), plant_everything=False, banner_height=0)
    identity = deid.identity(dataset)
    clean = deid.clean_header(dataset, identity)
    assert identity.date_offset_days is None and identity.study_date is None
    assert identity.gestational_age_days == 156  # GA in days survives as a number
    assert clean.StudyDate == "" and "ContentDate" not in clean and "SeriesDate" not in clean
    add_markers(clean, pixels_verified=True, dates_kept=False)
    assert clean.LongitudinalTemporalInformationModified == "REMOVED"
    assert {i.CodeValue for i in clean.DeidentificationMethodCodeSequence} == {"113100", "113101"}


def test_allowlisted_header_passes_blocklist_and_drops_everything_planted():
    deid = HeaderDeidentifier(Pseudonymizer(KEY), IngestConfig())
    dataset, planted = make_us_dataset(SyntheticStudy("AL"))
    assert len(blocklist_violations(dataset, PERMITTED_REPLACEMENTS)) > 500  # the fixture is full of PHI
    clean = deid.clean_header(dataset, deid.identity(dataset))
    add_markers(clean, pixels_verified=True, dates_kept=True)
    assert blocklist_violations(clean, PERMITTED_REPLACEMENTS) == []
    text = str(clean)
    assert not [s for s in planted.strings if len(s) >= 5 and s in text]
    assert not [u for u in planted.uids if u in text]
    assert clean.PatientIdentityRemoved == "YES" and clean.BurnedInAnnotation == "NO"
    assert {i.CodeValue for i in clean.DeidentificationMethodCodeSequence} == {"113100", "113101", "113107"}
    assert clean.LongitudinalTemporalInformationModified == "MODIFIED"
    assert len(clean.DeidentificationMethod) == 3
    kept = {e.keyword for e in clean}
    assert {"Manufacturer", "ManufacturerModelName", "SoftwareVersions", "TransducerData", "ImageType"} <= kept


def test_blocklist_catches_each_kind_of_leak():
    dataset = Dataset()
    dataset.SOPInstanceUID = "1.2.3.4"  # U, not replaced
    dataset.InstitutionName = "X"  # X/Z/D, not permitted
    dataset.add_new(0x00091001, "LO", "private")
    dataset.add_new(0x60003000, "OW", b"\x00\x01")
    item = Dataset()
    item.PatientBirthDate = "19700101"
    dataset.ReferencedStudySequence = Sequence([item])
    problems = "\n".join(blocklist_violations(dataset, PERMITTED_REPLACEMENTS))
    for needle in (
        "SOPInstanceUID: UID was not replaced",
        "InstitutionName",
        "private tag",
        "overlay",
        "ReferencedStudySequence",
    ):
        assert needle in problems
    assert TABLE_E1_1[0x00100010] == "Z" and TABLE_E1_1[0x00880200] == "X" and len(TABLE_E1_1) > 600


def test_markers_without_verified_pixels():
    dataset = Dataset()
    add_markers(dataset, pixels_verified=False, dates_kept=True)
    assert dataset.BurnedInAnnotation == "YES"
    assert "113101" not in {i.CodeValue for i in dataset.DeidentificationMethodCodeSequence}


@pytest.mark.parametrize(
    "sop_class, image_type, expected",
    [
        ("1.2.840.10008.5.1.4.1.1.6.1", ["ORIGINAL", "PRIMARY"], None),
        ("1.2.840.10008.5.1.4.1.1.3.1", ["ORIGINAL", "PRIMARY"], None),
        ("1.2.840.10008.5.1.4.1.1.6", [], None),
        ("1.2.840.10008.5.1.4.1.1.6.1", ["DERIVED", "SECONDARY"], ("skipped", "derived_secondary")),
        ("1.2.840.10008.5.1.4.1.1.7", [], ("skipped", "secondary_capture")),
        ("1.2.840.10008.5.1.4.1.1.88.33", [], ("skipped", "structured_report")),
        ("1.2.840.10008.5.1.4.1.1.104.1", [], ("skipped", "encapsulated_document")),
        ("1.2.840.10008.5.1.4.1.1.66", [], ("skipped", "raw_data")),
        ("1.2.840.10008.5.1.4.1.1.2", [], ("skipped", "not_ultrasound_image")),
        ("", [], ("quarantined", "missing_sop_class")),
    ],
)
def test_sop_class_allowlist(sop_class, image_type, expected):
    dataset = Dataset()
    if sop_class:
        dataset.SOPClassUID = sop_class
    if image_type:
        dataset.ImageType = image_type
    assert classify_sop_class(dataset) == expected
