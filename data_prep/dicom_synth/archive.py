"""The synthetic clinical export: patients, studies, series and files written under one folder.

:func:`write_archive` draws everything from one seed (same seed, byte-identical files) and returns the
truth record that ``archive_phi.json`` holds.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import (
    ExplicitVRLittleEndian,
    SecondaryCaptureImageStorage,
    UltrasoundImageStorage,
    UltrasoundMultiFrameImageStorage,
)

from data_prep.phantom import PLANE_CLASSES, PlaneImage, render_sequence

from .dataset import PIXEL_FORMATS, build_dataset, region_item, write_dataset
from .overlays import OverlayStyle, burn_overlays, draw_text
from .patients import FakePatient, FakeStudy, PhiRegistry, archive_uid, dicom_date, make_patients, register_patient

logger = logging.getLogger(__name__)


def ultrasound_region(plane: PlaneImage) -> Dataset:
    """The region item of a rendered fan: its inclusive bounding box, cm per pixel and probe frequency.

    The reference pixel is the centre of the probe face, physical (0, 0) cm.
    """
    r0, c0, r1, c1 = plane.info["fan_bbox"]
    mm_px = plane.info["mm_per_px"]
    face_row = plane.info["apex_row"] + plane.info["probe"]["radius_mm"] / mm_px
    reference = (int(round(plane.info["apex_col"])) - int(c0), int(round(face_row)) - int(r0))
    return region_item(
        (c0, r0, c1, r1),
        mm_px / 10.0,
        reference,
        reference_value=(0.0, 0.0),
        transducer_khz=int(round(plane.info["probe"]["frequency_mhz"] * 1000)),
    )


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


@dataclass(frozen=True)
class _Slot:
    """Where one DICOM object goes: its patient, study, series and instance, and the export's folder style."""

    patient: FakePatient
    study: FakeStudy
    series_uid: str
    series_number: int
    instance: int
    sop_uid: str
    path_style: str  # "dicomdir", "named" or "usb"

    def relative_path(self) -> str:
        patient, study, series, instance = self.patient, self.study, self.series_number, self.instance
        if self.path_style == "dicomdir":  # 8-character components, no extension, as on a DICOMDIR media export
            return f"DICOM/PA{patient.index:06d}/ST{study.index:06d}/SE{series:06d}/IM{instance:06d}"
        if self.path_style == "named":  # folder names with the patient's name and ID (a leak to watch for)
            exam = dicom_date(study.exam_date)
            folder = f"{patient.family.upper()}_{patient.given.upper()}_{patient.patient_id}"
            return f"Export_{exam}/{folder}/{exam}_OB/US{series:02d}{instance:03d}.dcm"
        return f"usb_export/{study.accession}/IMG{series:02d}{instance:03d}.DCM"

    def build_dataset(self, frames, photometric, sop_class, region, frame_time_ms, **options) -> Dataset:
        """:func:`build_dataset` for this slot's patient, study, series and instance."""
        identity = (self.sop_uid, self.series_uid, self.series_number, self.instance, self.patient, self.study)
        return build_dataset(frames, photometric, sop_class, *identity, region, frame_time_ms, **options)


def write_archive(
    out_dir: str | os.PathLike,
    seed: int,
    config: ArchiveConfig = ArchiveConfig(),
    relative_to: str | os.PathLike | None = None,
) -> dict:
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
    worksheet_slots = set(
        rng.choice(
            sum(len(p.studies) for p in patients),
            size=min(config.worksheets, sum(len(p.studies) for p in patients)),
            replace=False,
        ).tolist()
    )
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
            objects = [("still", 1)] * n_stills + [
                ("cine", int(rng.integers(config.cine_frames[0], config.cine_frames[1] + 1))) for _ in range(n_cines)
            ]
            if study_counter in worksheet_slots:
                objects.append(("worksheet", 1))
            study_counter += 1
            still_series = archive_uid(seed, "series", patient.index, study.index, 1)
            study.series_uids.append(still_series)
            instance = 0
            for kind, n_frames in objects:
                instance += 1
                if kind == "still":
                    series_number, series_uid = 1, still_series
                else:
                    series_number = len(study.series_uids) + 1
                    series_uid = archive_uid(seed, "series", patient.index, study.index, series_number)
                    study.series_uids.append(series_uid)
                registry.add("uids", series_uid)
                sop_uid = archive_uid(seed, "sop", patient.index, study.index, series_number, instance)
                registry.add("uids", sop_uid)
                slot = _Slot(patient, study, series_uid, series_number, instance, sop_uid, path_style)
                record = _write_object(out_dir, base, rng, config, slot, kind, n_frames, style, next_plane, next_format)
                # folder names that carry identifiers (patient-named exports, accession folders)
                for part in Path(record["path"]).parent.parts:
                    if any(token in part for token in (patient.patient_id, study.accession, patient.family.upper())):
                        registry.add("paths", part)
                files.append(record)
                total_frames += record["frames"] if record["expected"] == "ingest" else 0
    phi = registry.as_dict()
    logger.info(
        "synthetic archive: %d patients, %d files, %d frames in %s", len(patients), len(files), total_frames, out_dir
    )
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
        "birth_date": dicom_date(patient.birth_date),
        "last_menstrual_date": dicom_date(patient.lmp),
        "address": patient.address,
        "phone": patient.phone,
        "studies": [
            {
                "study_instance_uid": s.uid,
                "study_date": dicom_date(s.exam_date),
                "study_time": s.time,
                "accession_number": s.accession,
                "institution_name": s.institution,
                "referring_physician": s.referring,
                "operator": s.operator,
                "series_instance_uids": list(s.series_uids),
            }
            for s in patient.studies
        ],
    }


def _write_object(
    out_dir: Path,
    base: Path,
    rng: np.random.Generator,
    config: ArchiveConfig,
    slot: _Slot,
    kind: str,
    n_frames: int,
    style: OverlayStyle,
    next_plane: Callable[[int], str],
    next_format: Callable[[], str],
) -> dict:
    """Render and write one still, cine or worksheet at ``slot``; returns its ``files`` record."""
    shape = tuple(config.frame_shape)
    path = out_dir / slot.relative_path()
    if kind == "worksheet":
        return _write_worksheet(path, base, slot, shape)
    patient, study = slot.patient, slot.study
    plane = next_plane(n_frames)
    photometric = next_format()
    planes = render_sequence(
        plane, rng, n_frames, shape, fan_box=style.fan_box(shape), with_label=False, max_rock_lines=4
    )
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
    # BurnedInAnnotation is unreliable in real exports: YES, absent, or a wrong NO
    burned_flag = (True, None, False)[(patient.index + slot.instance) % 3]
    region = ultrasound_region(planes[0])
    quality = int(rng.integers(85, 96))
    ds = slot.build_dataset(
        frames, photometric, sop_class, region, frame_time, jpeg_quality=quality, burned_in=burned_flag
    )
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
        "series_instance_uid": slot.series_uid,
        "sop_instance_uid": slot.sop_uid,
        "banner_height": style.banner_height,
        "fan_bbox": planes[0].info["fan_bbox"],
        "mm_per_px": planes[0].info["mm_per_px"],
        "burned_in_text": burned,
        "burned_in_annotation": {True: "YES", False: "NO", None: None}[burned_flag],
        "expected": "ingest",
    }


def _write_worksheet(path: Path, base: Path, slot: _Slot, shape: tuple[int, int]) -> dict:
    """A Secondary Capture OB worksheet full of demographics: ingestion must drop it."""
    patient, study = slot.patient, slot.study
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
    ds = slot.build_dataset(page[None], "MONOCHROME2", SecondaryCaptureImageStorage, None, None, burned_in=True)
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
        "series_instance_uid": slot.series_uid,
        "sop_instance_uid": slot.sop_uid,
        "banner_height": 0,
        "fan_bbox": None,
        "mm_per_px": None,
        "burned_in_text": lines[1:5],
        "burned_in_annotation": "YES",
        "expected": "drop",
    }
