"""A small synthetic "clinical export" of fetal ultrasound DICOM files with planted fake PHI.

The archive mimics what a hospital data team gets from an OB ultrasound system
(``reference/dicom_deidentification.md`` §3):

* US Image Storage (1.2.840.10008.5.1.4.1.1.6.1) single frames and US Multi-frame
  Image Storage (…3.1) cine loops, plus an occasional Secondary Capture worksheet that
  an ingestion allowlist must drop (§3.1);
* MONOCHROME2 and RGB uncompressed (Explicit VR Little Endian) and YBR_FULL_422 JPEG
  Baseline encapsulated pixel data (§3.3), encoded with Pillow's real libjpeg encoder;
* a SequenceOfUltrasoundRegions item around the fan: RegionSpatialFormat 1 (2D),
  RegionDataType 1 (tissue), PhysicalUnitsX/YDirection 3 (cm), PhysicalDeltaX/Y in cm,
  inclusive min/max bounds (§3.2);
* burned-in annotation: a full-width top banner (24-80 px, light grey bitmap-font text
  on black) with name, ID, birth date and exam date/time, a depth ruler with 1 cm ticks
  at the right, a grey bar, an orientation marker and a parameter block (reference
  ultrasound_phantom.md §3);
* fake PHI in the header, in a GE-like private block (name repeated, an XML-ish blob with
  the StudyInstanceUID and a date), in nested sequences (RequestAttributesSequence with a
  ReferencedStudySequence, OtherPatientIDsSequence), and in some folder names.

Everything is drawn from a seeded ``numpy`` generator and UIDs are derived from the seed
(:func:`pydicom.uid.generate_uid` with entropy sources), so the same seed writes
byte-identical files. The truth list of every planted value is returned by
:func:`write_archive` for ``archive_phi.json``.
"""

from __future__ import annotations

import io
import logging
import os
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    PYDICOM_IMPLEMENTATION_UID,
    SecondaryCaptureImageStorage,
    UltrasoundImageStorage,
    UltrasoundMultiFrameImageStorage,
    generate_uid,
)

from data_prep.phantom import PLANE_CLASSES, PlaneImage, render_sequence
from ultradino_monai.data.datalist import atomic_write

logger = logging.getLogger(__name__)

PIXEL_FORMATS = ("MONOCHROME2", "RGB", "YBR_FULL_422")
#: GE-like private creator used for the planted private PHI.
PRIVATE_CREATOR = "GEMS_Ultrasound_ExamGroup_001"
PRIVATE_GROUP = 0x0009
#: An organisation root for the synthetic UIDs (pydicom's, as the files are made by pydicom).
UID_PREFIX = "1.2.826.0.1.3680043.8.498."

_SURNAMES = [
    "Lindqvist", "Okonkwo", "Marchetti", "Halvorsen", "Castellanos", "Fairweather", "Nakamura",
    "Delacroix", "Whitcombe", "Szymanska", "Abernathy", "Kowalczyk", "Thorvaldsen", "Pemberton",
    "Achterberg", "Quintanilla", "Bramwell", "Oyelaran", "Vanderhoek", "Ellingsworth",
]
_GIVEN = [
    "Maren", "Adaeze", "Giulia", "Solveig", "Paloma", "Rosalind", "Haruka", "Amelie", "Philippa",
    "Agnieszka", "Loretta", "Zofia", "Cordelia", "Ximena", "Sigrid", "Henrietta", "Birgitte",
    "Femke", "Valentina", "Ottilie",
]
_INSTITUTIONS = [
    ("St Aurelia Womens Hospital", "12 Larkspur Lane, Eastbrook"),
    ("Northfield Maternity Clinic", "4 Quarry Road, Northfield"),
]
_PHYSICIANS = ["Ramsbottom^Helena^^Dr", "Ashdown^Tobias^^Dr", "Pellegrini^Carla^^Dr"]
_SONOGRAPHERS = ["Quill^Tamsin", "Hargreaves^Imogen", "Bakshi^Anjali"]
_STATIONS = ["OBUS-ROOM3", "FETALMED-2"]
_STUDY_DESCRIPTIONS = ["OB 2nd Trimester Anomaly", "OB Growth Scan", "OB 3rd Trimester"]


# --------------------------------------------------------------------------------------
# Fake patients and studies
# --------------------------------------------------------------------------------------


@dataclass
class FakeStudy:
    """One exam of a :class:`FakePatient` (all values synthetic)."""

    index: int
    uid: str
    exam_date: date
    time: str  # HHMMSS
    accession: str
    study_id: str
    description: str
    referring: str
    operator: str
    performing: str
    institution: str
    institution_address: str
    station: str
    device_serial: str
    ga_weeks: float
    series_uids: list[str] = field(default_factory=list)


@dataclass
class FakePatient:
    """A synthetic patient with PHI-like identifiers."""

    index: int
    family: str
    given: str
    patient_id: str
    mrn: str
    birth_date: date
    lmp: date
    address: str
    phone: str
    date_style: str  # how the banner prints dates
    studies: list[FakeStudy] = field(default_factory=list)

    @property
    def dicom_name(self) -> str:
        return f"{self.family.upper()}^{self.given.upper()}"

    @property
    def banner_name(self) -> str:
        return f"{self.family.upper()}, {self.given.upper()}"

    def show_date(self, value: date) -> str:
        return value.strftime("%m/%d/%Y" if self.date_style == "us" else "%d.%m.%Y")


def _da(value: date) -> str:
    return value.strftime("%Y%m%d")


def _uid(seed: int, *parts: Any) -> str:
    """Deterministic UID: a hash of the seed and the object's place in the archive."""
    return str(generate_uid(prefix=UID_PREFIX, entropy_srcs=["ultradino-demo", str(seed)] + [str(p) for p in parts]))


def make_patients(rng: np.random.Generator, seed: int, n_patients: int, studies_per_patient: Sequence[int]) -> list[FakePatient]:
    """Draw ``n_patients`` fake patients with 1+ studies each (studies_per_patient is (min, max))."""
    if not 1 <= n_patients <= len(_SURNAMES):
        raise ValueError(f"n_patients must be in 1..{len(_SURNAMES)}, got {n_patients}")
    surnames = rng.permutation(len(_SURNAMES))
    given = rng.permutation(len(_GIVEN))
    used_ids: set[str] = set()
    patients = []
    for p in range(n_patients):
        while True:
            pid = str(int(rng.integers(10_000_000, 99_999_999)))
            if pid not in used_ids:
                used_ids.add(pid)
                break
        birth = date(1982, 1, 1) + timedelta(days=int(rng.integers(0, 365 * 20)))
        first_exam = date(2021, 1, 4) + timedelta(days=int(rng.integers(0, 365 * 3)))
        ga0 = float(rng.uniform(19, 24))
        lmp = first_exam - timedelta(days=int(round(ga0 * 7)))
        patient = FakePatient(
            index=p,
            family=_SURNAMES[surnames[p]],
            given=_GIVEN[given[p]],
            patient_id=pid,
            mrn=f"MRN{int(rng.integers(100000, 999999))}",
            birth_date=birth,
            lmp=lmp,
            address=f"{int(rng.integers(2, 200))} {rng.choice(['Willow', 'Harbour', 'Kestrel', 'Orchard'])} Street",
            phone=f"555-{int(rng.integers(1000, 9999))}",
            date_style=str(rng.choice(["us", "eu"])),
        )
        n_studies = int(rng.integers(studies_per_patient[0], studies_per_patient[1] + 1))
        for s in range(n_studies):
            exam = first_exam + timedelta(days=int(s * rng.integers(56, 100)))
            inst, addr = _INSTITUTIONS[int(rng.integers(0, len(_INSTITUTIONS)))]
            study = FakeStudy(
                index=s,
                uid=_uid(seed, "study", p, s),
                exam_date=exam,
                time=f"{int(rng.integers(8, 18)):02d}{int(rng.integers(0, 60)):02d}{int(rng.integers(0, 60)):02d}",
                accession=f"A{int(rng.integers(1_000_000, 9_999_999))}",
                study_id=str(int(rng.integers(1000, 9999))),
                description=str(rng.choice(_STUDY_DESCRIPTIONS)),
                referring=str(rng.choice(_PHYSICIANS)),
                operator=str(rng.choice(_SONOGRAPHERS)),
                performing=str(rng.choice(_PHYSICIANS)),
                institution=inst,
                institution_address=addr,
                station=str(rng.choice(_STATIONS)),
                device_serial=f"VS{int(rng.integers(10000, 99999))}",
                ga_weeks=(exam - lmp).days / 7.0,
            )
            patient.studies.append(study)
        patients.append(patient)
    return patients


class PhiRegistry:
    """Collects every planted PHI value by category (the archive_phi.json truth list)."""

    def __init__(self):
        self.values: dict[str, set[str]] = {}

    def add(self, category: str, *values: str) -> None:
        bucket = self.values.setdefault(category, set())
        for value in values:
            if value:
                bucket.add(str(value))

    def add_person_name(self, pn: str) -> None:
        """A DICOM PN plus each name component of 3+ characters (what a leak scan looks for)."""
        self.add("names", pn)
        for part in pn.replace("^", " ").split():
            if len(part) >= 3 and part.lower() != "dr":
                self.add("name_parts", part)

    def as_dict(self) -> dict[str, list[str]]:
        return {key: sorted(values) for key, values in sorted(self.values.items())}

    def all_strings(self) -> list[str]:
        everything = set()
        for values in self.values.values():
            everything |= values
        return sorted(everything)


def register_patient(registry: PhiRegistry, patient: FakePatient) -> None:
    """Record every identifier of ``patient`` in the forms this module writes (header, private, banner, paths)."""
    registry.add_person_name(patient.dicom_name)
    registry.add("names", patient.banner_name, f"{patient.given} {patient.family}")
    registry.add("name_parts", patient.given, patient.family)
    registry.add("ids", patient.patient_id, patient.mrn)
    registry.add("dates", _da(patient.birth_date), _da(patient.lmp), patient.show_date(patient.birth_date))
    registry.add("addresses", patient.address)
    registry.add("phones", patient.phone)
    for study in patient.studies:
        registry.add("uids", study.uid)
        registry.add("ids", study.accession)
        registry.add("dates", _da(study.exam_date), patient.show_date(study.exam_date))
        registry.add("times", study.time, f"{study.time[:2]}:{study.time[2:4]}:{study.time[4:]}")
        registry.add("institutions", study.institution, study.institution.upper())
        registry.add("addresses", study.institution_address)
        for person in (study.referring, study.operator, study.performing):
            registry.add_person_name(person)
        registry.add("devices", study.station, study.device_serial)


# --------------------------------------------------------------------------------------
# Burned-in overlays
# --------------------------------------------------------------------------------------


_FONT = None


def _font() -> ImageFont.ImageFont:
    global _FONT
    if _FONT is None:
        # Pillow's built-in bitmap font: identical glyphs everywhere, no font files needed
        _FONT = ImageFont.load_default_imagefont()
    return _FONT


def draw_text(canvas: np.ndarray, row: int, col: int, text: str, scale: int = 1, colour=(200, 200, 200)) -> tuple[int, int]:
    """Burn ``text`` into ``canvas`` (H, W) or (H, W, 3) uint8 at (row, col) with the bitmap font.

    ``scale`` enlarges glyphs by pixel replication (2 gives ~22 px tall text). Returns the
    (height, width) of the drawn text box.
    """
    font = _font()
    left, top, right, bottom = font.getbbox(text)
    width, height = max(right, 1), max(bottom, 1)
    glyphs = Image.new("L", (width, height), 0)
    ImageDraw.Draw(glyphs).text((0, 0), text, fill=255, font=font)
    if scale != 1:
        glyphs = glyphs.resize((width * scale, height * scale), Image.NEAREST)
    mask = np.asarray(glyphs) > 127
    h = min(mask.shape[0], canvas.shape[0] - row)
    w = min(mask.shape[1], canvas.shape[1] - col)
    if h <= 0 or w <= 0:
        return 0, 0
    region = canvas[row:row + h, col:col + w]
    sub = mask[:h, :w]
    if canvas.ndim == 3:
        region[sub] = np.asarray(colour, dtype=np.uint8)
    else:
        region[sub] = np.uint8(round(float(np.mean(colour))))
    return mask.shape[0], mask.shape[1]


def text_size(text: str, scale: int = 1) -> tuple[int, int]:
    left, top, right, bottom = _font().getbbox(text)
    return bottom * scale, right * scale


@dataclass(frozen=True)
class OverlayStyle:
    """Where the scanner UI puts things on a (H, W) frame (reference ultrasound_phantom.md §3)."""

    banner_height: int  # 24-80 px full-width banner (28-40 for small text, 72-80 for large)
    text_scale: int  # 1 or 2 (bitmap font replicated)
    left_margin: int = 36  # grey bar
    right_margin: int = 78  # depth ruler

    @staticmethod
    def sample(rng: np.random.Generator) -> "OverlayStyle":
        scale = int(rng.choice([1, 2, 2]))
        height = int(rng.integers(28, 41)) if scale == 1 else int(rng.integers(72, 81))
        return OverlayStyle(banner_height=height, text_scale=scale)

    def fan_box(self, shape: tuple[int, int]) -> tuple[int, int, int, int]:
        top = self.banner_height + 6
        return top, self.left_margin, shape[0] - top - 14, shape[1] - self.left_margin - self.right_margin


def banner_lines(patient: FakePatient, study: FakeStudy, scale: int) -> list[tuple[str, str]]:
    """(left, right) text per banner row; the PHI here is what gets burned into the pixels.

    Large text (scale 2) needs three rows to fit 640 px; small text fits in two.
    """
    ga = study.ga_weeks
    days = int(round((ga % 1) * 7)) % 7
    when = f"{patient.show_date(study.exam_date)} {study.time[:2]}:{study.time[2:4]}:{study.time[4:]}"
    ident = f"ID: {patient.patient_id}  DOB: {patient.show_date(patient.birth_date)}"
    if scale >= 2:
        return [
            (study.institution.upper(), when),
            (patient.banner_name, f"GA {int(ga)}w{days}d"),
            (ident, "MI 0.9 TIb 0.4"),
        ]
    return [
        (f"{study.institution.upper()}   {patient.banner_name}", when),
        (f"{ident}  GA {int(ga)}w{days}d", "C1-5-D OB  MI 0.9 TIb 0.4"),
    ]


def burn_overlays(
    frame: np.ndarray,
    plane: PlaneImage,
    style: OverlayStyle,
    patient: FakePatient,
    study: FakeStudy,
    colour: bool,
    frame_index: int = 0,
    n_frames: int = 1,
) -> list[str]:
    """Draw banner, grey bar, depth ruler, orientation marker and cine gauge onto ``frame`` in place.

    Returns the list of burned-in text strings.
    """
    height, width = frame.shape[:2]
    grey = (200, 200, 200)
    accent = (90, 170, 255) if colour else (230, 230, 230)
    focus_colour = (235, 200, 70) if colour else (220, 220, 220)
    frame[: style.banner_height] = 0
    rows_text = banner_lines(patient, study, style.text_scale)
    burned = []
    line_h = text_size("Ag", style.text_scale)[0]
    gap = max(1, (style.banner_height - len(rows_text) * line_h) // (len(rows_text) + 1))
    for k, (left, right) in enumerate(rows_text):
        row = gap + k * (line_h + gap)
        left_w = draw_text(frame, row, 6, left, style.text_scale, grey)[1]
        right_w = text_size(right, style.text_scale)[1]
        if 6 + left_w + 12 + right_w > width - 6:
            raise ValueError(f"banner row {k} does not fit {width} px: {left!r} + {right!r}")
        draw_text(frame, row, width - right_w - 6, right, style.text_scale, grey)
        burned += [left, right]
    # grey bar at the left, 0..255 from bottom to top
    bar_top = style.banner_height + 12
    bar = np.linspace(255, 0, 128).astype(np.uint8)
    rows = slice(bar_top, min(bar_top + 128, height))
    frame[rows, 10:20] = (bar[: rows.stop - rows.start, None, None] if frame.ndim == 3 else bar[: rows.stop - rows.start, None])
    # depth ruler: 1 cm ticks, longer every 5 cm, the depth value below (§3 "Around the fan")
    mm_px = plane.info["mm_per_px"]
    face_row = plane.info["apex_row"] + plane.info["probe"]["radius_mm"] / mm_px
    depth_cm = plane.info["probe"]["depth_mm"] / 10.0
    x = width - style.right_margin + 20
    bottom = int(round(face_row + depth_cm * 10 / mm_px))
    frame[int(round(face_row)):min(bottom, height - 1) + 1, x] = 150 if frame.ndim == 2 else (150, 150, 150)
    for cm in range(int(depth_cm) + 1):
        r = int(round(face_row + cm * 10 / mm_px))
        if r >= height:
            break
        length = 10 if cm % 5 == 0 else 5
        frame[r, x:x + length] = 200 if frame.ndim == 2 else grey
        if cm % 5 == 0 and cm > 0:
            draw_text(frame, r - 5, x + 13, str(cm), 1, grey)
    label = f"{depth_cm:.1f}cm"
    draw_text(frame, min(bottom + 3, height - 12), x - 10, label, 1, grey)
    focus_row = int(round(face_row + plane.info["focus_depth_mm"] / mm_px))
    for d in range(5):  # focal-zone triangle pointing at the ruler
        if 0 <= focus_row - d and focus_row + d < height:
            frame[focus_row - (4 - d):focus_row + (4 - d) + 1, x - 8 + d] = (focus_colour if frame.ndim == 3 else 220)
    # orientation marker at the top-left of the fan
    r0, c0 = plane.info["fan_bbox"][0], plane.info["fan_bbox"][1]
    marker_row, marker_col = r0 + 2, max(c0 - 2, style.left_margin - 14)
    frame[marker_row:marker_row + 6, marker_col:marker_col + 6] = accent if frame.ndim == 3 else 230
    # cine gauge at the bottom
    if n_frames > 1:
        gauge_w = int(round((width // 3) * (frame_index + 1) / n_frames))
        frame[height - 6:height - 3, 10:10 + gauge_w] = 160 if frame.ndim == 2 else (160, 160, 160)
    return burned


# --------------------------------------------------------------------------------------
# DICOM writing
# --------------------------------------------------------------------------------------


def ultrasound_region(plane: PlaneImage) -> Dataset:
    """SequenceOfUltrasoundRegions item for the 2D tissue fan (§3.2): inclusive bounds, cm units."""
    r0, c0, r1, c1 = plane.info["fan_bbox"]
    mm_px = plane.info["mm_per_px"]
    region = Dataset()
    region.RegionSpatialFormat = 1
    region.RegionDataType = 1
    region.RegionFlags = 0
    region.RegionLocationMinX0 = int(c0)
    region.RegionLocationMinY0 = int(r0)
    region.RegionLocationMaxX1 = int(c1)
    region.RegionLocationMaxY1 = int(r1)
    region.PhysicalUnitsXDirection = 3
    region.PhysicalUnitsYDirection = 3
    region.PhysicalDeltaX = float(mm_px / 10.0)
    region.PhysicalDeltaY = float(mm_px / 10.0)
    # reference pixel: the centre of the probe face, physical (0, 0); relative to the region origin
    face_row = plane.info["apex_row"] + plane.info["probe"]["radius_mm"] / mm_px
    region.ReferencePixelX0 = int(round(plane.info["apex_col"])) - int(c0)
    region.ReferencePixelY0 = int(round(face_row)) - int(r0)
    region.ReferencePixelPhysicalValueX = 0.0
    region.ReferencePixelPhysicalValueY = 0.0
    region.TransducerFrequency = int(round(plane.info["probe"]["frequency_mhz"] * 1000))  # kHz
    return region


def _encode_jpeg(rgb: np.ndarray, quality: int) -> bytes:
    """JPEG Baseline, YCbCr 4:2:2 (Pillow/libjpeg), the stream DICOM calls YBR_FULL_422."""
    buffer = io.BytesIO()
    Image.fromarray(rgb, "RGB").save(buffer, format="JPEG", quality=quality, subsampling="4:2:2", optimize=False)
    return buffer.getvalue()


def build_dataset(
    frames: np.ndarray,
    photometric: str,
    sop_class: str,
    sop_uid: str,
    series_uid: str,
    series_number: int,
    instance_number: int,
    patient: FakePatient,
    study: FakeStudy,
    region: Dataset | None,
    frame_time_ms: float | None,
    jpeg_quality: int = 90,
    burned_in: bool | None = True,
) -> Dataset:
    """Assemble a US (or SC) dataset with fake PHI in header, private block and nested sequences.

    Args:
        frames: uint8 (N, H, W) for MONOCHROME2 or (N, H, W, 3) RGB values for RGB/YBR_FULL_422.
        photometric: one of :data:`PIXEL_FORMATS`.
        burned_in: True/False writes BurnedInAnnotation YES/NO; None leaves it out (as many
            real US files do, §3.1 "missing means YES").
    """
    if photometric not in PIXEL_FORMATS:
        raise ValueError(f"photometric must be one of {PIXEL_FORMATS}, got {photometric!r}")
    frames = np.ascontiguousarray(frames, dtype=np.uint8)
    colour = photometric != "MONOCHROME2"
    if (frames.ndim != 4 or frames.shape[-1] != 3) if colour else frames.ndim != 3:
        raise ValueError(f"frames of shape {frames.shape} do not match {photometric}")
    n_frames, rows, cols = frames.shape[:3]
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = JPEGBaseline8Bit if photometric == "YBR_FULL_422" else ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "", "0001"] if sop_class != SecondaryCaptureImageStorage else ["DERIVED", "SECONDARY"]
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    exam = _da(study.exam_date)
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = ds.AcquisitionDate = exam
    ds.StudyTime = study.time
    ds.SeriesTime = ds.ContentTime = ds.AcquisitionTime = study.time
    ds.AcquisitionDateTime = exam + study.time
    ds.AccessionNumber = study.accession
    ds.Modality = "US"
    ds.Manufacturer = "DemoSonics (synthetic)"
    ds.InstitutionName = study.institution
    ds.InstitutionAddress = study.institution_address
    ds.ReferringPhysicianName = study.referring
    ds.StationName = study.station
    # some sites type the name into the description; every third study here does
    ds.StudyDescription = study.description + (f" {patient.family.upper()}" if study.index % 3 == patient.index % 3 else "")
    ds.SeriesDescription = "OB" if sop_class != SecondaryCaptureImageStorage else "Worksheet"
    ds.PerformingPhysicianName = study.performing
    ds.OperatorsName = study.operator
    ds.ManufacturerModelName = "DS-OB 5"
    ds.PatientName = patient.dicom_name
    ds.PatientID = patient.patient_id
    ds.PatientBirthDate = _da(patient.birth_date)
    ds.PatientSex = "F"
    ds.PatientAge = f"{(study.exam_date - patient.birth_date).days // 365:03d}Y"
    ds.PatientAddress = patient.address
    ds.PatientTelephoneNumbers = patient.phone
    ds.LastMenstrualDate = _da(patient.lmp)
    other = Dataset()
    other.PatientID = patient.mrn
    other.IssuerOfPatientID = study.institution
    ds.OtherPatientIDsSequence = DicomSequence([other])
    ds.DeviceSerialNumber = study.device_serial
    ds.SoftwareVersions = "1.0"
    ds.StudyInstanceUID = study.uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = study.study_id
    ds.SeriesNumber = series_number
    ds.InstanceNumber = instance_number
    ds.ImageComments = f"{patient.given} {patient.family} {study.description}"
    # nested PHI: the request with its accession, and a reference back to the study
    request = Dataset()
    request.AccessionNumber = study.accession
    request.RequestedProcedureID = f"RP{study.accession[1:]}"
    request.ScheduledProcedureStepID = f"SPS{study.accession[1:]}"
    request.RequestedProcedureDescription = f"{study.description} for {patient.family.upper()}^{patient.given.upper()}"
    referenced = Dataset()
    referenced.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"
    referenced.ReferencedSOPInstanceUID = study.uid
    request.ReferencedStudySequence = DicomSequence([referenced])
    ds.RequestAttributesSequence = DicomSequence([request])
    # GE-like private block: the name again and an XML-ish blob with the study UID and a date
    block = ds.private_block(PRIVATE_GROUP, PRIVATE_CREATOR, create=True)
    block.add_new(0x01, "LO", patient.dicom_name)
    block.add_new(0x02, "UT", (
        f'<?xml version="1.0"?><Exam><Patient name="{patient.given} {patient.family}" id="{patient.patient_id}"/>'
        f"<StudyUID>{study.uid}</StudyUID><ExamDate>{exam}</ExamDate><Operator>{study.operator}</Operator></Exam>"
    ))
    block.add_new(0x03, "LO", _da(patient.birth_date))
    if burned_in is not None:
        ds.BurnedInAnnotation = "YES" if burned_in else "NO"
    if region is not None:
        ds.SequenceOfUltrasoundRegions = DicomSequence([region])
    # image pixel module
    ds.SamplesPerPixel = 3 if colour else 1
    ds.PhotometricInterpretation = photometric
    if colour:
        ds.PlanarConfiguration = 0
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    if sop_class == UltrasoundMultiFrameImageStorage:
        ds.NumberOfFrames = n_frames
        ds.FrameTime = f"{frame_time_ms:.1f}"
        ds.FrameIncrementPointer = 0x00181063  # FrameTime
        ds.CineRate = int(round(1000.0 / frame_time_ms))
    elif n_frames != 1:
        raise ValueError(f"{sop_class} holds one frame, got {n_frames}")
    if photometric == "YBR_FULL_422":
        ds.PixelData = encapsulate([_encode_jpeg(f, jpeg_quality) for f in frames])
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
        ds.LossyImageCompression = "01"
        ds.LossyImageCompressionMethod = "ISO_10918_1"
    else:
        ds.PixelData = frames.tobytes()
        ds["PixelData"].VR = "OB"
    return ds


def write_dataset(path: Path, ds: Dataset) -> None:
    """Serialise with pydicom (no timestamps are added) and write atomically."""
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    atomic_write(path, lambda temporary: temporary.write_bytes(buffer.getvalue()))


# --------------------------------------------------------------------------------------
# The archive
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ArchiveConfig:
    """Size of the synthetic export.

    Attributes:
        n_patients: fake patients (<= 20).
        studies_per_patient: (min, max) studies per patient.
        stills_per_study: (min, max) single-frame US images per study (series 1).
        cines_per_study: (min, max) multi-frame cine loops per study (one series each).
        cine_frames: (min, max) frames per cine loop.
        frame_shape: (rows, columns) of every frame.
        worksheets: number of Secondary Capture worksheets (to be dropped by ingestion).
    """

    n_patients: int = 16
    studies_per_patient: tuple[int, int] = (1, 2)
    stills_per_study: tuple[int, int] = (4, 8)
    cines_per_study: tuple[int, int] = (0, 1)
    cine_frames: tuple[int, int] = (8, 16)
    frame_shape: tuple[int, int] = (480, 640)
    worksheets: int = 2


def _relative_path(patient: FakePatient, study: FakeStudy, series_number: int, instance: int, style: str) -> str:
    if style == "dicomdir":  # 8-character components, no extension, as on a DICOMDIR media export
        return f"DICOM/PA{patient.index:06d}/ST{study.index:06d}/SE{series_number:06d}/IM{instance:06d}"
    if style == "named":  # folder names with the patient's name and ID (a leak to watch for)
        return (f"Export_{_da(study.exam_date)}/{patient.family.upper()}_{patient.given.upper()}_{patient.patient_id}/"
                f"{_da(study.exam_date)}_OB/US{series_number:02d}{instance:03d}.dcm")
    return f"usb_export/{study.accession}/IMG{series_number:02d}{instance:03d}.DCM"


def write_archive(out_dir: str | os.PathLike, seed: int, config: ArchiveConfig = ArchiveConfig(),
                  relative_to: str | os.PathLike | None = None) -> dict:
    """Write the synthetic export under ``out_dir`` and return its truth record.

    Args:
        out_dir: folder to write (created).
        seed: drives everything (patients, anatomy, formats, UIDs).
        config: archive size.
        relative_to: paths in the record are relative to this folder (default: ``out_dir``'s parent).

    Returns:
        ``{"seed", "patients": [...], "phi": {category: [values]}, "strings": [...] (every PHI value
        except UIDs), "uids": [...], "dates": [...],
        "files": [{path, sop_class_uid, transfer_syntax_uid, photometric, frames, rows, columns,
        planes, patient_id, study_instance_uid, series_instance_uid, sop_instance_uid,
        region, burned_in_text, banner_height, expected}], "frames": total}``
    """
    out_dir = Path(out_dir)
    base = Path(relative_to) if relative_to is not None else out_dir.parent
    rng = np.random.default_rng([seed, 0xD1C0])
    patients = make_patients(rng, seed, config.n_patients, config.studies_per_patient)
    registry = PhiRegistry()
    for patient in patients:
        register_patient(registry, patient)
    plane_priority = list(rng.permutation(len(PLANE_CLASSES)))
    frames_per_plane = {c: 0 for c in PLANE_CLASSES}
    format_counter = int(rng.integers(0, 3))
    files = []
    total_frames = 0
    worksheet_slots = set(rng.choice(sum(len(p.studies) for p in patients),
                                     size=min(config.worksheets, sum(len(p.studies) for p in patients)), replace=False).tolist())
    study_counter = 0

    def next_plane(n_frames: int) -> str:
        # the class with the fewest frames so far (ties in a seeded order): balanced frames per plane
        plane = min((PLANE_CLASSES[i] for i in plane_priority), key=lambda c: frames_per_plane[c])
        frames_per_plane[plane] += n_frames
        return plane

    def next_format() -> str:
        nonlocal format_counter
        fmt = PIXEL_FORMATS[format_counter % 3]
        format_counter += 1
        return fmt

    for patient in patients:
        path_style = ("dicomdir", "named", "usb")[patient.index % 3]
        for study in patient.studies:
            style = OverlayStyle.sample(rng)
            n_stills = int(rng.integers(config.stills_per_study[0], config.stills_per_study[1] + 1))
            n_cines = int(rng.integers(config.cines_per_study[0], config.cines_per_study[1] + 1))
            objects = [("still", 1)] * n_stills + [("cine", int(rng.integers(config.cine_frames[0], config.cine_frames[1] + 1)))
                                                   for _ in range(n_cines)]
            if study_counter in worksheet_slots:
                objects.append(("worksheet", 1))
            study_counter += 1
            still_series = _uid(seed, "series", patient.index, study.index, 1)
            study.series_uids.append(still_series)
            instance = 0
            for kind, n_frames in objects:
                instance += 1
                if kind == "still":
                    series_number, series_uid = 1, still_series
                else:
                    series_number = len(study.series_uids) + 1
                    series_uid = _uid(seed, "series", patient.index, study.index, series_number)
                    study.series_uids.append(series_uid)
                registry.add("uids", series_uid)
                sop_uid = _uid(seed, "sop", patient.index, study.index, series_number, instance)
                registry.add("uids", sop_uid)
                record = _write_object(out_dir, base, rng, kind, n_frames, next_plane, next_format, patient, study, style,
                                       series_uid, series_number, instance, sop_uid, config, path_style)
                # folder names that carry identifiers (patient-named exports, accession folders)
                for part in Path(record["path"]).parent.parts:
                    if any(token in part for token in (patient.patient_id, study.accession, patient.family.upper())):
                        registry.add("paths", part)
                files.append(record)
                total_frames += record["frames"] if record["expected"] == "ingest" else 0
    phi = registry.as_dict()
    logger.info("synthetic archive: %d patients, %d files, %d frames in %s", len(patients), len(files), total_frames, out_dir)
    return {
        "seed": seed,
        "patients": [_patient_record(p) for p in patients],
        "phi": phi,
        "strings": sorted(set(registry.all_strings()) - set(phi.get("uids", []))),
        "uids": phi.get("uids", []),
        "dates": phi.get("dates", []),
        "files": files,
        "frames": total_frames,
    }


def _patient_record(patient: FakePatient) -> dict:
    return {
        "patient_name": patient.dicom_name,
        "banner_name": patient.banner_name,
        "patient_id": patient.patient_id,
        "other_patient_id": patient.mrn,
        "birth_date": _da(patient.birth_date),
        "last_menstrual_date": _da(patient.lmp),
        "address": patient.address,
        "phone": patient.phone,
        "studies": [{
            "study_instance_uid": s.uid,
            "study_date": _da(s.exam_date),
            "study_time": s.time,
            "accession_number": s.accession,
            "institution_name": s.institution,
            "referring_physician": s.referring,
            "operator": s.operator,
            "series_instance_uids": list(s.series_uids),
        } for s in patient.studies],
    }


def _write_object(out_dir, base, rng, kind, n_frames, next_plane, next_format, patient, study, style,
                  series_uid, series_number, instance, sop_uid, config, path_style) -> dict:
    shape = tuple(config.frame_shape)
    rel = _relative_path(patient, study, series_number, instance, path_style)
    path = out_dir / rel
    if kind == "worksheet":
        return _write_worksheet(path, base, patient, study, shape, series_uid, series_number, instance, sop_uid)
    plane = next_plane(n_frames)
    photometric = next_format()
    planes = render_sequence(plane, rng, n_frames, shape, fan_box=style.fan_box(shape), with_label=False,
                             max_rock_lines=4)
    colour = photometric != "MONOCHROME2"
    stack = []
    burned: list[str] = []
    for k, frame_plane in enumerate(planes):
        frame = np.repeat(frame_plane.image[..., None], 3, axis=2) if colour else frame_plane.image.copy()
        burned = burn_overlays(frame, frame_plane, style, patient, study, colour, k, n_frames)
        stack.append(frame)
    frames = np.stack(stack)
    sop_class = UltrasoundImageStorage if kind == "still" else UltrasoundMultiFrameImageStorage
    frame_time = float(rng.choice([33.3, 40.0, 50.0])) if kind == "cine" else None
    # BurnedInAnnotation is unreliable in the wild (§3.1): YES, absent, or a wrong NO
    burned_flag = (True, None, False)[(patient.index + instance) % 3]
    ds = build_dataset(frames, photometric, sop_class, sop_uid, series_uid, series_number, instance, patient, study,
                       ultrasound_region(planes[0]), frame_time, jpeg_quality=int(rng.integers(85, 96)),
                       burned_in=burned_flag)
    write_dataset(path, ds)
    return {
        "path": path.relative_to(base).as_posix(),
        "sop_class_uid": str(sop_class),
        "transfer_syntax_uid": str(ds.file_meta.TransferSyntaxUID),
        "photometric": photometric,
        "frames": int(n_frames),
        "rows": shape[0],
        "columns": shape[1],
        "planes": [plane] * n_frames,
        "patient_id": patient.patient_id,
        "study_instance_uid": study.uid,
        "series_instance_uid": series_uid,
        "sop_instance_uid": sop_uid,
        "banner_height": style.banner_height,
        "fan_bbox": planes[0].info["fan_bbox"],
        "mm_per_px": planes[0].info["mm_per_px"],
        "burned_in_text": burned,
        "burned_in_annotation": {True: "YES", False: "NO", None: None}[burned_flag],
        "expected": "ingest",
    }


def _write_worksheet(path, base, patient, study, shape, series_uid, series_number, instance, sop_uid) -> dict:
    """A Secondary Capture OB worksheet full of demographics: ingestion must drop it (§3.1)."""
    page = np.full(shape, 235, np.uint8)
    lines = [
        "OB WORKSHEET",
        f"Name: {patient.banner_name}",
        f"ID: {patient.patient_id}   DOB: {patient.show_date(patient.birth_date)}",
        f"Exam: {patient.show_date(study.exam_date)}   Acc: {study.accession}",
        f"LMP: {patient.show_date(patient.lmp)}   GA: {study.ga_weeks:.1f} wk",
        "BPD    HC    AC    FL",
    ]
    for k, text in enumerate(lines):
        draw_text(page, 20 + k * 30, 20, text, 2, (20, 20, 20))
    ds = build_dataset(page[None], "MONOCHROME2", SecondaryCaptureImageStorage, sop_uid, series_uid, series_number,
                       instance, patient, study, None, None, burned_in=True)
    ds.ConversionType = "WSD"
    write_dataset(path, ds)
    return {
        "path": path.relative_to(base).as_posix(),
        "sop_class_uid": str(SecondaryCaptureImageStorage),
        "transfer_syntax_uid": str(ExplicitVRLittleEndian),
        "photometric": "MONOCHROME2",
        "frames": 1,
        "rows": shape[0],
        "columns": shape[1],
        "planes": [],
        "patient_id": patient.patient_id,
        "study_instance_uid": study.uid,
        "series_instance_uid": series_uid,
        "sop_instance_uid": sop_uid,
        "banner_height": 0,
        "fan_bbox": None,
        "mm_per_px": None,
        "burned_in_text": lines[1:5],
        "burned_in_annotation": "YES",
        "expected": "drop",
    }


__all__ = [
    "ArchiveConfig", "FakePatient", "FakeStudy", "OverlayStyle", "PhiRegistry", "PIXEL_FORMATS",
    "PRIVATE_CREATOR", "build_dataset", "burn_overlays", "draw_text", "make_patients",
    "ultrasound_region", "write_archive", "write_dataset",
]
