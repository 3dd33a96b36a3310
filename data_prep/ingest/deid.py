"""Header de-identification by allowlist, keyed pseudonyms and per-patient date shifts.

Reference ``docs/deidentification.md``:

* docs/deidentification.md §0 / §1.1: build the output header from scratch out of an allowlist (image
  pixel, US region calibration, frame timing, equipment make/model/software,
  transducer data, image type, modality, SOP class); everything else, including
  private groups, unknown sequences, overlays, curves and the IconImageSequence,
  is never copied.
* docs/deidentification.md §1.4: UIDs become ``2.25.<HMAC>`` under the secret key, consistently
  everywhere (references included), and file meta is regenerated so
  MediaStorageSOPInstanceUID equals SOPInstanceUID.
* docs/deidentification.md §1.5: DA values and the date part of DT values move by a keyed per-patient
  offset in whole days (option 113107); times are removed; gestational age in
  days is computed from LastMenstrualDate before anything is dropped.
* docs/deidentification.md §1.3: the Annex E markers.
"""

from __future__ import annotations

import datetime as _dt
import logging
import re
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.tag import Tag
from pydicom.uid import UID

from .config import IngestConfig
from .keys import Pseudonymizer, normalise_identifier

logger = logging.getLogger(__name__)

__all__ = [
    "US_IMAGE_SOP_CLASSES",
    "Identity",
    "HeaderDeidentifier",
    "classify_sop_class",
    "add_markers",
    "parse_date",
    "PERMITTED_REPLACEMENTS",
]

# docs/deidentification.md §3.1: US Image, US Multi-frame Image and their retired predecessors.
US_IMAGE_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.6.1": "us_image",
    "1.2.840.10008.5.1.4.1.1.3.1": "us_multiframe",
    "1.2.840.10008.5.1.4.1.1.6": "us_image_retired",
    "1.2.840.10008.5.1.4.1.1.3": "us_multiframe_retired",
}
MULTIFRAME_SOP_CLASSES = {"1.2.840.10008.5.1.4.1.1.3.1", "1.2.840.10008.5.1.4.1.1.3"}
MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"

# Deidentification Method codes (CID 7050, docs/deidentification.md §1.1).
_METHOD_CODES = {
    "113100": "Basic Application Confidentiality Profile",
    "113101": "Clean Pixel Data Option",
    "113107": "Retain Longitudinal Temporal Information Modified Dates Option",
}

# How the allowlisted header legitimately carries Table E.1-1 attributes; used by
# annex_e.blocklist_violations on every header we write.
PERMITTED_REPLACEMENTS: dict[int, str] = {
    Tag("SOPInstanceUID"): "uid",
    Tag("StudyInstanceUID"): "uid",
    Tag("SeriesInstanceUID"): "uid",
    Tag("FrameOfReferenceUID"): "uid",
    Tag("ReferencedSOPInstanceUID"): "uid",
    Tag("MediaStorageSOPInstanceUID"): "uid",
    Tag("PatientName"): "dummy",
    Tag("PatientID"): "dummy",
    Tag("PatientBirthDate"): "empty",
    Tag("PatientSex"): "empty",
    Tag("ReferringPhysicianName"): "empty",
    Tag("StudyID"): "empty",
    Tag("AccessionNumber"): "empty",
    Tag("StudyTime"): "empty",
    Tag("StudyDate"): "shifted",
    Tag("SeriesDate"): "shifted",
    Tag("AcquisitionDate"): "shifted",
    Tag("ContentDate"): "shifted",
    Tag("AcquisitionDateTime"): "shifted",
    Tag("SourceImageSequence"): "cleaned",
    Tag("ReferencedImageSequence"): "cleaned",
}

# Plain attributes copied when their value passes the VR check below (docs/deidentification.md §0 list).
_COPY_TEXT = ("Manufacturer", "ManufacturerModelName", "SoftwareVersions", "TransducerData")
_COPY_NUMBER = ("FrameTime", "CineRate", "RecommendedDisplayFrameRate", "InstanceNumber", "UltrasoundColorDataPresent")
_SHIFTED_DATES = ("StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate")
_GA_REFERENCE_DATES = ("AcquisitionDate", "ContentDate", "SeriesDate", "StudyDate")
# Longest plausible pregnancy; anything outside [0, this] is a data error, not a GA.
_MAX_GESTATIONAL_AGE_DAYS = 320

_DATE_PATTERN = re.compile(r"^\s*(\d{4})[.\-/]?(\d{2})[.\-/]?(\d{2})")
_CS_ITEM = re.compile(r"^[A-Z0-9 _]{0,16}$")


def parse_date(value: Any) -> _dt.date | None:
    """Parse a DA, the date part of a DT, or an ACR-NEMA dotted date; None if it does not parse."""
    if value is None:
        return None
    match = _DATE_PATTERN.match(str(value))
    if not match:
        return None
    try:
        return _dt.date(int(match.group(1)), int(match.group(2)), int(match.group(3)))
    except ValueError:
        return None


def classify_sop_class(dataset: Dataset) -> tuple[str, str] | None:
    """Decide whether a header is an ultrasound image we ingest.

    Returns ``None`` to go on, or ``(outcome, reason)`` with outcome ``skipped``
    (a well-formed object we do not ingest: secondary capture, SR, PDF, raw data,
    DICOMDIR, other modalities, derived secondary images) or ``quarantined``
    (a header that cannot be classified).
    """
    meta = getattr(dataset, "file_meta", None)
    media_class = str(meta.get("MediaStorageSOPClassUID", "")) if meta is not None else ""
    if media_class == MEDIA_STORAGE_DIRECTORY or "DirectoryRecordSequence" in dataset:
        return ("skipped", "dicomdir")
    sop_class = str(dataset.get("SOPClassUID", "") or media_class).strip()
    if not sop_class:
        return ("quarantined", "missing_sop_class")
    if sop_class in US_IMAGE_SOP_CLASSES:
        image_type = [str(v).upper() for v in _as_list(dataset.get("ImageType"))]
        if "SAVE" in image_type or image_type[:2] == ["DERIVED", "SECONDARY"]:
            return ("skipped", "derived_secondary")
        return None
    prefix = "1.2.840.10008.5.1.4.1.1."
    if sop_class.startswith(prefix + "7"):
        return ("skipped", "secondary_capture")
    if sop_class.startswith(prefix + "88."):
        return ("skipped", "structured_report")
    if sop_class.startswith(prefix + "104."):
        return ("skipped", "encapsulated_document")
    if sop_class == prefix + "66":
        return ("skipped", "raw_data")
    if sop_class.startswith(prefix + "11."):
        return ("skipped", "presentation_state")
    if sop_class.startswith(prefix + "6.2") or sop_class.startswith(prefix + "6.3"):
        return ("skipped", "us_volume")
    return ("skipped", "not_ultrasound_image")


@dataclass(frozen=True)
class Identity:
    """Keyed pseudonyms and date facts of one instance (nothing reversible without the key)."""

    patient: str
    study: str
    series: str
    instance: str
    device: str
    date_offset_days: int | None
    study_date: str | None  # shifted, ISO 8601, or None
    gestational_age_days: int | None


class HeaderDeidentifier:
    """Turn an original header into pseudonyms and an allowlisted clean header.

    Args:
        pseudonymizer: keyed HMAC source for every replacement.
        config: the run options (date policy and shift range).
    """

    def __init__(self, pseudonymizer: Pseudonymizer, config: IngestConfig) -> None:
        self.pseudo = pseudonymizer
        self.config = config

    # -- identity ---------------------------------------------------------------------------
    @staticmethod
    def patient_key(dataset: Dataset) -> str:
        """Normalised (IssuerOfPatientID, PatientID); a study stands in when PatientID is absent."""
        patient_id = normalise_identifier(_text(dataset.get("PatientID")))
        if patient_id:
            issuer = normalise_identifier(_text(dataset.get("IssuerOfPatientID")))
            return f"id:{issuer}|{patient_id}"
        return "study:" + _text(dataset.get("StudyInstanceUID")).strip()

    def identity(self, dataset: Dataset) -> Identity:
        key = self.patient_key(dataset)
        offset = None
        if self.config.date_policy == "shift":
            offset = self.pseudo.date_offset_days(
                key, self.config.date_shift_min_days, self.config.date_shift_span_days
            )
        device_parts = [
            normalise_identifier(_text(dataset.get(name)))
            for name in ("Manufacturer", "ManufacturerModelName", "DeviceSerialNumber", "StationName")
        ]
        study_date = parse_date(_text(dataset.get("StudyDate")))
        shifted_study = _shift(study_date, offset)
        return Identity(
            patient=self.pseudo.patient(key),
            study=self.pseudo.study(_text(dataset.get("StudyInstanceUID"))),
            series=self.pseudo.series(_text(dataset.get("SeriesInstanceUID"))),
            instance=self.pseudo.instance(_text(dataset.get("SOPInstanceUID"))),
            device=self.pseudo.device("|".join(device_parts)),
            date_offset_days=offset,
            study_date=shifted_study.isoformat() if shifted_study else None,
            gestational_age_days=gestational_age_days(dataset),
        )

    # -- header -----------------------------------------------------------------------------
    def clean_header(self, dataset: Dataset, identity: Identity) -> Dataset:
        """A new dataset holding only allowlisted attributes (no pixel module, no markers)."""
        out = Dataset()
        out.SpecificCharacterSet = "ISO_IR 192"
        out.SOPClassUID = UID(_text(dataset.get("SOPClassUID")).strip())
        out.SOPInstanceUID = self.pseudo.uid(_text(dataset.SOPInstanceUID))
        out.StudyInstanceUID = self.pseudo.uid(_text(dataset.StudyInstanceUID))
        out.SeriesInstanceUID = self.pseudo.uid(_text(dataset.SeriesInstanceUID))
        if _text(dataset.get("FrameOfReferenceUID")).strip():
            out.FrameOfReferenceUID = self.pseudo.uid(_text(dataset.FrameOfReferenceUID))
        out.Modality = "US"
        image_type = [str(v).strip().upper() for v in _as_list(dataset.get("ImageType"))]
        if image_type and all(_CS_ITEM.match(v) for v in image_type):
            out.ImageType = image_type
        for keyword in _COPY_TEXT:
            value = _safe_text(dataset.get(keyword))
            if value:
                setattr(out, keyword, value)
        for keyword in _COPY_NUMBER:
            value = _safe_number(dataset, keyword)
            if value is not None:
                setattr(out, keyword, value)
        # Type 2 patient/study attributes: pseudonym or zero length (actions D / Z).
        out.PatientName = identity.patient
        out.PatientID = identity.patient
        out.PatientBirthDate = ""
        out.PatientSex = ""
        out.ReferringPhysicianName = ""
        out.StudyID = ""
        out.AccessionNumber = ""
        out.StudyTime = ""
        out.StudyDate = ""
        if identity.date_offset_days is not None:
            for keyword in _SHIFTED_DATES:
                shifted = _shift(parse_date(_text(dataset.get(keyword))), identity.date_offset_days)
                if shifted is not None:
                    setattr(out, keyword, shifted.strftime("%Y%m%d"))
            shifted_dt = _shift(parse_date(_text(dataset.get("AcquisitionDateTime"))), identity.date_offset_days)
            if shifted_dt is not None:
                out.AcquisitionDateTime = shifted_dt.strftime("%Y%m%d")
        for keyword in ("SourceImageSequence", "ReferencedImageSequence"):
            items = self._clean_references(dataset.get(keyword))
            if items:
                setattr(out, keyword, Sequence(items))
        return out

    def _clean_references(self, sequence: Any) -> list[Dataset]:
        """Image references keep only the class, a remapped instance UID and frame numbers."""
        cleaned = []
        for item in sequence or []:
            instance_uid = _text(item.get("ReferencedSOPInstanceUID")).strip()
            class_uid = _text(item.get("ReferencedSOPClassUID")).strip()
            if not instance_uid or not class_uid:
                continue
            reference = Dataset()
            reference.ReferencedSOPClassUID = UID(class_uid)
            reference.ReferencedSOPInstanceUID = self.pseudo.uid(instance_uid)
            frames = [int(v) for v in _as_list(item.get("ReferencedFrameNumber")) if _is_int(v)]
            if frames:
                reference.ReferencedFrameNumber = frames
            cleaned.append(reference)
        return cleaned


def add_markers(dataset: Dataset, *, pixels_verified: bool, dates_kept: bool) -> None:
    """Set the Annex E markers (docs/deidentification.md §1.3).

    BurnedInAnnotation is ``NO`` and option 113101 is claimed only when the pixel
    step passed (crop to a valid tissue region, or a banner mask confirmed by OCR).
    """
    codes = ["113100"] + (["113101"] if pixels_verified else []) + (["113107"] if dates_kept else [])
    dataset.PatientIdentityRemoved = "YES"
    dataset.DeidentificationMethod = [_METHOD_CODES[c] for c in codes]
    items = []
    for code in codes:
        item = Dataset()
        item.CodeValue = code
        item.CodingSchemeDesignator = "DCM"
        item.CodeMeaning = _METHOD_CODES[code]
        items.append(item)
    dataset.DeidentificationMethodCodeSequence = Sequence(items)
    dataset.BurnedInAnnotation = "NO" if pixels_verified else "YES"
    dataset.LongitudinalTemporalInformationModified = "MODIFIED" if dates_kept else "REMOVED"


def gestational_age_days(dataset: Dataset) -> int | None:
    """Days from LastMenstrualDate to the acquisition date, if both parse and it is plausible."""
    lmp = parse_date(_text(dataset.get("LastMenstrualDate")))
    if lmp is None:
        return None
    for keyword in _GA_REFERENCE_DATES:
        reference = parse_date(_text(dataset.get(keyword)))
        if reference is not None:
            days = (reference - lmp).days
            return days if 0 <= days <= _MAX_GESTATIONAL_AGE_DAYS else None
    return None


def _shift(date: _dt.date | None, offset: int | None) -> _dt.date | None:
    if date is None or offset is None:
        return None
    try:
        return date + _dt.timedelta(days=offset)
    except OverflowError:
        return None


def _text(value: Any) -> str:
    """An element value (or element) as text; multi-values and bytes become ''."""
    if value is None:
        return ""
    value = getattr(value, "value", value)
    if isinstance(value, (bytes, bytearray, list, tuple)) or type(value).__name__ == "MultiValue":
        return ""
    return str(value)


def _safe_text(element: Any) -> str:
    """Printable, length-limited copy of an LO/SH value (multi-values joined by '\\')."""
    if element is None:
        return ""
    value = getattr(element, "value", element)
    parts = value if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue" else [value]
    cleaned = []
    for part in parts:
        if isinstance(part, (bytes, bytearray)) or part is None:
            continue
        text = "".join(ch for ch in str(part) if ch.isprintable() and ch != "\\").strip()
        if text:
            cleaned.append(text[:64])
    return "\\".join(cleaned)


def _safe_number(dataset: Dataset, keyword: str) -> Any:
    try:
        element = dataset.get(keyword)
        if element is None:
            return None
        value = element if not hasattr(element, "value") else element.value
        if value is None or value == "":
            return None
        if keyword in ("InstanceNumber", "UltrasoundColorDataPresent"):
            return int(value)
        number = float(value)
        return value if number == number and abs(number) < 1e9 else None
    except (TypeError, ValueError, OverflowError):
        return None


def _as_list(value: Any) -> list:
    if value is None:
        return []
    value = getattr(value, "value", value)
    if isinstance(value, str):
        return [value] if value else []
    try:
        return list(value)
    except TypeError:
        return [value]


def _is_int(value: Any) -> bool:
    try:
        int(value)
        return True
    except (TypeError, ValueError):
        return False
