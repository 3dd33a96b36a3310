"""Fake patients and studies of the synthetic archive, and the truth list of every PHI value planted.

All names, IDs, addresses and institutions are invented; UIDs are derived from the seed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

import numpy as np
from pydicom.uid import generate_uid

#: An organisation root for the synthetic UIDs (pydicom's, as the files are made by pydicom).
UID_PREFIX = "1.2.826.0.1.3680043.8.498."

_SURNAMES = [
    "Lindqvist",
    "Okonkwo",
    "Marchetti",
    "Halvorsen",
    "Castellanos",
    "Fairweather",
    "Nakamura",
    "Delacroix",
    "Whitcombe",
    "Szymanska",
    "Abernathy",
    "Kowalczyk",
    "Thorvaldsen",
    "Pemberton",
    "Achterberg",
    "Quintanilla",
    "Bramwell",
    "Oyelaran",
    "Vanderhoek",
    "Ellingsworth",
]
_GIVEN = [
    "Maren",
    "Adaeze",
    "Giulia",
    "Solveig",
    "Paloma",
    "Rosalind",
    "Haruka",
    "Amelie",
    "Philippa",
    "Agnieszka",
    "Loretta",
    "Zofia",
    "Cordelia",
    "Ximena",
    "Sigrid",
    "Henrietta",
    "Birgitte",
    "Femke",
    "Valentina",
    "Ottilie",
]
_INSTITUTIONS = [
    ("St Aurelia Womens Hospital", "12 Larkspur Lane, Eastbrook"),
    ("Northfield Maternity Clinic", "4 Quarry Road, Northfield"),
]
_PHYSICIANS = ["Ramsbottom^Helena^^Dr", "Ashdown^Tobias^^Dr", "Pellegrini^Carla^^Dr"]
_SONOGRAPHERS = ["Quill^Tamsin", "Hargreaves^Imogen", "Bakshi^Anjali"]
_STATIONS = ["OBUS-ROOM3", "FETALMED-2"]
_STUDY_DESCRIPTIONS = ["OB 2nd Trimester Anomaly", "OB Growth Scan", "OB 3rd Trimester"]


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


def dicom_date(value: date) -> str:
    return value.strftime("%Y%m%d")


def archive_uid(seed: int, *parts: Any) -> str:
    """Deterministic UID: a hash of the seed and the object's place in the archive."""
    return str(generate_uid(prefix=UID_PREFIX, entropy_srcs=["ultradino-demo", str(seed)] + [str(p) for p in parts]))


def make_patients(
    rng: np.random.Generator, seed: int, n_patients: int, studies_per_patient: Sequence[int]
) -> list[FakePatient]:
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
                uid=archive_uid(seed, "study", p, s),
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
    registry.add(
        "dates", dicom_date(patient.birth_date), dicom_date(patient.lmp), patient.show_date(patient.birth_date)
    )
    registry.add("addresses", patient.address)
    registry.add("phones", patient.phone)
    for study in patient.studies:
        registry.add("uids", study.uid)
        registry.add("ids", study.accession)
        registry.add("dates", dicom_date(study.exam_date), patient.show_date(study.exam_date))
        registry.add("times", study.time, f"{study.time[:2]}:{study.time[2:4]}:{study.time[4:]}")
        registry.add("institutions", study.institution, study.institution.upper())
        registry.add("addresses", study.institution_address)
        for person in (study.referring, study.operator, study.performing):
            registry.add_person_name(person)
        registry.add("devices", study.station, study.device_serial)
