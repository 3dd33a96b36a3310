"""DICOM datasets with fake PHI in the header, a private block and nested sequences, and their writing.

Pixel data is stored natively (MONOCHROME2, RGB; Explicit VR Little Endian) or as JPEG Baseline with
YCbCr 4:2:2 (YBR_FULL_422), encoded by Pillow's libjpeg.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    SecondaryCaptureImageStorage,
    UltrasoundMultiFrameImageStorage,
)

from ultradino_monai.utils.files import write_bytes_atomic

from .patients import FakePatient, FakeStudy, dicom_date

PIXEL_FORMATS = ("MONOCHROME2", "RGB", "YBR_FULL_422")
#: GE-like private creator used for the planted private PHI.
PRIVATE_CREATOR = "GEMS_Ultrasound_ExamGroup_001"
PRIVATE_GROUP = 0x0009


def region_item(
    bounds: tuple[int, int, int, int],
    delta_cm: float,
    reference_pixel: tuple[int, int],
    *,
    reference_value: tuple[float, float] | None = None,
    transducer_khz: int | None = None,
) -> Dataset:
    """One SequenceOfUltrasoundRegions item for a 2D tissue region (DICOM PS3.3 C.8.5.5, US Region Calibration).

    Args:
        bounds: inclusive pixel bounds (x0, y0, x1, y1), stored as RegionLocationMinX0 ... MaxY1.
        delta_cm: PhysicalDeltaX = PhysicalDeltaY, in cm per pixel (units code 3 is cm, not mm).
        reference_pixel: ReferencePixelX0/Y0, relative to the region origin (x0, y0) as the standard defines.
        reference_value: ReferencePixelPhysicalValueX/Y in cm, or None to leave them out.
        transducer_khz: TransducerFrequency in kHz, or None to leave it out.
    """
    x0, y0, x1, y1 = (int(v) for v in bounds)
    region = Dataset()
    region.RegionSpatialFormat = 1  # 2D
    region.RegionDataType = 1  # tissue
    region.RegionFlags = 0
    region.RegionLocationMinX0 = x0
    region.RegionLocationMinY0 = y0
    region.RegionLocationMaxX1 = x1
    region.RegionLocationMaxY1 = y1
    region.PhysicalUnitsXDirection = 3
    region.PhysicalUnitsYDirection = 3
    region.PhysicalDeltaX = float(delta_cm)
    region.PhysicalDeltaY = float(delta_cm)
    region.ReferencePixelX0 = int(reference_pixel[0])
    region.ReferencePixelY0 = int(reference_pixel[1])
    if reference_value is not None:
        region.ReferencePixelPhysicalValueX = float(reference_value[0])
        region.ReferencePixelPhysicalValueY = float(reference_value[1])
    if transducer_khz is not None:
        region.TransducerFrequency = int(transducer_khz)
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
            real US files do; a reader must then assume YES).
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
    ds.ImageType = (
        ["ORIGINAL", "PRIMARY", "", "0001"] if sop_class != SecondaryCaptureImageStorage else ["DERIVED", "SECONDARY"]
    )
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    exam = dicom_date(study.exam_date)
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
    ds.StudyDescription = study.description + (
        f" {patient.family.upper()}" if study.index % 3 == patient.index % 3 else ""
    )
    ds.SeriesDescription = "OB" if sop_class != SecondaryCaptureImageStorage else "Worksheet"
    ds.PerformingPhysicianName = study.performing
    ds.OperatorsName = study.operator
    ds.ManufacturerModelName = "DS-OB 5"
    ds.PatientName = patient.dicom_name
    ds.PatientID = patient.patient_id
    ds.PatientBirthDate = dicom_date(patient.birth_date)
    ds.PatientSex = "F"
    ds.PatientAge = f"{(study.exam_date - patient.birth_date).days // 365:03d}Y"
    ds.PatientAddress = patient.address
    ds.PatientTelephoneNumbers = patient.phone
    ds.LastMenstrualDate = dicom_date(patient.lmp)
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
    block.add_new(
        0x02,
        "UT",
        (
            f'<?xml version="1.0"?><Exam><Patient name="{patient.given} {patient.family}" id="{patient.patient_id}"/>'
            f"<StudyUID>{study.uid}</StudyUID><ExamDate>{exam}</ExamDate><Operator>{study.operator}</Operator></Exam>"
        ),
    )
    block.add_new(0x03, "LO", dicom_date(patient.birth_date))
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
    write_bytes_atomic(path, buffer.getvalue())
