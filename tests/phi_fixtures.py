"""Test fixture (not shipped): ultrasound DICOMs with PHI planted in every place a de-identifier must clean.

Tests only. The project's synthetic-DICOM generator is :mod:`data_prep.dicom_synth` (the demo archive); this
fixture takes its region item from there (tests write the files with its ``write_dataset``) and adds what a
realistic export lacks: PHI in *every* DICOM PS3.15 Table E.1-1 attribute, in nested sequences, in private
tags (an XML blob that repeats the UID and a date, a Kretz-like (7FE1) block), in an IconImageSequence, in
overlay and curve groups, in the file meta, and a burned-in banner above the tissue region.
:class:`PlantedPhi` lists every planted string, UID and date so a leak scan can look for them.

All values are fabricated; nothing here is real patient data.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, UltrasoundImageStorage, UltrasoundMultiFrameImageStorage

from data_prep.dicom_synth import region_item
from data_prep.ingest.annex_e import TABLE_E1_1

__all__ = ["PlantedPhi", "SyntheticStudy", "make_us_dataset", "fan_frames", "draw_banner"]

_UID_ROOT = "1.2.826.0.1.3680043.10.999"


@dataclass
class PlantedPhi:
    """Everything identifying that a fixture carries (for leak scans)."""

    strings: set[str] = field(default_factory=set)
    uids: set[str] = field(default_factory=set)
    dates: set[str] = field(default_factory=set)  # YYYYMMDD

    def update(self, other: PlantedPhi) -> None:
        self.strings |= other.strings
        self.uids |= other.uids
        self.dates |= other.dates


@dataclass
class SyntheticStudy:
    """Identity of one fabricated patient/study; ``tag`` makes every value unique."""

    tag: str
    patient_id: str = ""
    patient_name: str = ""
    study_date: str = "20230415"
    lmp: str | None = "20221110"
    uid_index: int | None = None

    def __post_init__(self) -> None:
        if self.uid_index is None:
            # Distinct tags give distinct UID subtrees.
            self.uid_index = int.from_bytes(hashlib.sha256(self.tag.encode()).digest()[:3], "big")
        self.patient_id = self.patient_id or f"MRN{self.tag}7731"
        self.patient_name = self.patient_name or f"ZZDOE{self.tag}^JANEQX{self.tag}"

    def uid(self, kind: int, index: int = 0) -> str:
        return f"{_UID_ROOT}.{self.uid_index}.{kind}.{index}"


def fan_frames(rows: int, columns: int, frames: int, seed: int, doppler: bool = False) -> np.ndarray:
    """Fan-shaped speckle frames, uint8 (frames, rows, columns, 3) RGB; colour blobs if ``doppler``."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:rows, 0:columns]
    apex_x, apex_y = columns / 2, rows * 0.12
    angle = np.arctan2(xx - apex_x, yy - apex_y)
    radius = np.hypot(xx - apex_x, yy - apex_y)
    fan = (np.abs(angle) < 0.6) & (radius > rows * 0.05) & (radius < rows * 0.85)
    out = np.zeros((frames, rows, columns, 3), dtype=np.uint8)
    for index in range(frames):
        speckle = rng.gamma(2.0, 40.0, size=(rows, columns))
        structure = 60 * np.sin((yy + 3 * index) / 9.0) ** 2
        grey = np.clip((speckle + structure) * fan, 0, 255).astype(np.uint8)
        out[index] = grey[..., None]
        if doppler:
            blob = ((xx - columns * 0.5) ** 2 + (yy - rows * (0.45 + 0.01 * index)) ** 2) < (rows * 0.12) ** 2
            out[index][blob & fan] = (220, 40, 30)
    return out


def draw_banner(frame: np.ndarray, lines: list[str], height: int) -> None:
    """Burn text lines into the top ``height`` rows of an RGB frame, in place."""
    image = Image.fromarray(frame[:height].copy())
    draw = ImageDraw.Draw(image)
    try:
        font = ImageFont.load_default(size=max(10, height // max(len(lines), 1) - 4))
    except TypeError:  # Pillow without FreeType sizes
        font = ImageFont.load_default()
    step = height // max(len(lines), 1)
    for index, line in enumerate(lines):
        draw.text((6, 2 + index * step), line, fill=(255, 255, 255), font=font)
    frame[:height] = np.asarray(image)


def _plant_table(dataset: Dataset, study: SyntheticStudy, planted: PlantedPhi) -> None:
    """Give every Table E.1-1 attribute a unique identifying-looking value."""
    base = _dt.date(1961, 3, 1)
    for number, tag in enumerate(sorted(TABLE_E1_1)):
        if tag >> 16 == 0x0002 or tag in (0xFFFAFFFA, 0xFFFCFFFC) or tag >> 16 == 0x0000:
            continue
        try:
            vr = dictionary_VR(tag)
        except KeyError:
            continue
        vr = vr.split(" or ")[0]
        marker = f"PHI{study.tag}X{number:03d}"
        if vr in ("PN",):
            value = f"{marker}^GIVEN{study.tag}"
            planted.strings.update({f"{marker}", f"GIVEN{study.tag}"})
        elif vr in ("LO", "SH", "LT", "ST", "UT", "UC", "UR"):
            value = marker
            planted.strings.add(marker)
        elif vr in ("CS", "AE"):
            value = marker[:16]
            planted.strings.add(value)
        elif vr == "DA":
            value = (base + _dt.timedelta(days=37 * number)).strftime("%Y%m%d")
            planted.dates.add(value)
        elif vr == "DT":
            date = (base + _dt.timedelta(days=37 * number + 11)).strftime("%Y%m%d")
            value = date + "101112"
            planted.dates.add(date)
        elif vr == "TM":
            value = f"{10 + number % 10:02d}{number % 60:02d}17.{number:06d}"
            planted.strings.add(value)
        elif vr == "UI":
            value = study.uid(900, number)
            planted.uids.add(value)
        elif vr == "AS":
            value = "031Y"
        elif vr in ("IS",):
            value = str(7000 + number)
        elif vr in ("DS",):
            value = f"{number}.5"
        elif vr in ("US", "SS", "UL", "SL", "UV", "SV"):
            value = number
        elif vr in ("FL", "FD"):
            value = float(number)
        elif vr in ("OB", "OW", "UN", "OF", "OD", "OL", "OV"):
            value = (marker + "\x00").encode() * 2
            planted.strings.add(marker)
        elif vr == "AT":
            value = 0x00100010
        elif vr == "SQ":
            item = Dataset()
            item.PatientName = f"{marker}^SEQ{study.tag}"
            item.ReferencedSOPInstanceUID = study.uid(901, number)
            inner = Dataset()
            inner.PatientID = f"{marker}NESTED"
            inner.StudyDate = (base + _dt.timedelta(days=37 * number + 3)).strftime("%Y%m%d")
            item.ContentSequence = Sequence([inner])
            value = Sequence([item])
            planted.strings.update({marker, f"SEQ{study.tag}", f"{marker}NESTED"})
            planted.uids.add(study.uid(901, number))
            planted.dates.add(inner.StudyDate)
        else:
            continue
        dataset.add_new(tag, vr, value)


def make_us_dataset(
    study: SyntheticStudy,
    *,
    rows: int = 240,
    columns: int = 320,
    frames: int = 1,
    instance: int = 1,
    series: int = 1,
    doppler: bool = False,
    region: tuple[int, int, int, int] | None = (40, 40, 279, 229),
    delta_cm: float = 0.025,
    banner_height: int = 36,
    photometric: str = "RGB",
    plant_everything: bool = True,
    seed: int = 0,
) -> tuple[Dataset, PlantedPhi]:
    """A native Explicit-VR-LE ultrasound dataset (file meta included) and its planted PHI.

    Args:
        study: the fabricated identity.
        rows, columns, frames: geometry; ``frames > 1`` gives US Multi-frame.
        doppler: paint colour-flow blobs in the fan.
        region: inclusive 2D tissue region ``(x0, y0, x1, y1)``, or None for no
            SequenceOfUltrasoundRegions.
        delta_cm: PhysicalDeltaX/Y in cm (unit code 3).
        banner_height: rows of burned-in name/ID/date above the fan (0 for none).
        photometric: ``RGB`` or ``MONOCHROME2`` for the stored pixels.
        plant_everything: fill all Table E.1-1 attributes, private tags, icon,
            overlay and curve groups with PHI.
    """
    planted = PlantedPhi()
    pixels = fan_frames(rows, columns, frames, seed=seed + 1000 * instance, doppler=doppler)
    if banner_height:
        banner = [
            f"{study.patient_name.replace('^', ' ')}  ID {study.patient_id}",
            f"{study.study_date[6:]}/{study.study_date[4:6]}/{study.study_date[:4]}",
        ]
        for frame in pixels:
            draw_banner(frame, banner, banner_height)

    dataset = Dataset()
    if plant_everything:
        _plant_table(dataset, study, planted)
    sop_class = UltrasoundMultiFrameImageStorage if frames > 1 else UltrasoundImageStorage
    dataset.SOPClassUID = sop_class
    dataset.SOPInstanceUID = study.uid(3, series * 1000 + instance)
    dataset.StudyInstanceUID = study.uid(1)
    dataset.SeriesInstanceUID = study.uid(2, series)
    dataset.FrameOfReferenceUID = study.uid(4, series)
    planted.uids |= {
        dataset.SOPInstanceUID,
        dataset.StudyInstanceUID,
        dataset.SeriesInstanceUID,
        dataset.FrameOfReferenceUID,
    }
    dataset.Modality = "US"
    dataset.ImageType = ["ORIGINAL", "PRIMARY", "ABDOMINAL"]
    dataset.Manufacturer = "Synthetic Medical"
    dataset.ManufacturerModelName = "SynthSound 9"
    dataset.SoftwareVersions = "1.0"
    dataset.TransducerData = "C1-5"
    dataset.PatientName = study.patient_name
    dataset.PatientID = study.patient_id
    dataset.IssuerOfPatientID = f"HOSP{study.tag}ISSUER"
    dataset.StudyDate = study.study_date
    dataset.SeriesDate = study.study_date
    dataset.ContentDate = study.study_date
    dataset.AcquisitionDate = study.study_date
    dataset.StudyTime = "101530.250000"
    planted.strings |= {study.patient_id, *study.patient_name.split("^"), dataset.IssuerOfPatientID, dataset.StudyTime}
    planted.dates.add(study.study_date)
    if study.lmp:
        dataset.LastMenstrualDate = study.lmp
        planted.dates.add(study.lmp)
    dataset.InstanceNumber = instance
    if frames > 1:
        dataset.FrameTime = 33.3
        dataset.CineRate = 30
    if region is not None:
        x0, y0, x1, y1 = region
        dataset.SequenceOfUltrasoundRegions = Sequence([region_item(region, delta_cm, ((x1 - x0) // 2, 0))])
    if doppler:
        dataset.UltrasoundColorDataPresent = 1

    if plant_everything:
        creator = f"ACME PHI {study.tag}"
        block = dataset.private_block(0x0009, creator, create=True)
        block.add_new(0x01, "LO", f"PRIVNAME{study.tag}")
        xml = (
            f"<Exam><Uid>{dataset.SOPInstanceUID}</Uid><Date>{study.study_date}</Date>"
            f"<Path>\\var\\patient\\{study.patient_id}\\S0002</Path></Exam>"
        )
        block.add_new(0x02, "UT", xml)
        kretz = dataset.private_block(0x7FE1, "KRETZ_US", create=True)
        kretz.add_new(0x01, "OB", b"KRETZFILE 1.0\x00" + study.patient_name.encode() + b"\x00" * 3)
        planted.strings |= {f"PRIVNAME{study.tag}", creator}
        icon = Dataset()
        icon.Rows, icon.Columns, icon.SamplesPerPixel = 8, 8, 1
        icon.PhotometricInterpretation = "MONOCHROME2"
        icon.BitsAllocated = icon.BitsStored = 8
        icon.HighBit, icon.PixelRepresentation = 7, 0
        icon.ImageComments = f"ICONPHI{study.tag}"
        icon.PixelData = bytes(64)
        dataset.IconImageSequence = Sequence([icon])
        dataset.add_new(0x60000010, "US", 8)
        dataset.add_new(0x60000011, "US", 8)
        dataset.add_new(0x60000022, "LO", f"OVERLAYPHI{study.tag}")
        dataset.add_new(0x60003000, "OW", f"OVLDATA{study.tag}".encode().ljust(8, b"\x00"))
        dataset.add_new(0x50002500, "LO", f"CURVEPHI{study.tag}")
        planted.strings |= {
            f"ICONPHI{study.tag}",
            f"OVERLAYPHI{study.tag}",
            f"OVLDATA{study.tag}",
            f"CURVEPHI{study.tag}",
        }

    if photometric == "MONOCHROME2":
        dataset.set_pixel_data(
            pixels[..., 0] if frames > 1 else pixels[0, ..., 0], "MONOCHROME2", 8, generate_instance_uid=False
        )
    else:
        dataset.set_pixel_data(pixels if frames > 1 else pixels[0], "RGB", 8, generate_instance_uid=False)
    # BurnedInAnnotation deliberately absent: for ultrasound that must mean YES.
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.SourceApplicationEntityTitle = f"AE{study.tag}PHI"[:16]
    planted.strings.add(meta.SourceApplicationEntityTitle)
    dataset.file_meta = meta
    return dataset, planted
