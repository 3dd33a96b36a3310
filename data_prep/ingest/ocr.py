"""Offline OCR check of written frames (``--ocr-check``).

Reference ``docs/deidentification.md`` §4.3: exact header matching alone misses
burned-in text (GREYSCALE_IMAGE shows ID, DOB and date that differ from the
header), so a frame is rejected when its OCR text contains any of

* a normalised header token (name parts >= 3 characters, IDs, accession,
  institution and station names, serial numbers),
* a date or date-time pattern (MM/DD/YYYY, DD.MM.YYYY, YYYY-MM-DD, month names,
  HH:MM:SS), or
* a run of 6 or more digits (IDs, YYYYMMDD dates).

The OCR engine is rapidocr-onnxruntime, whose wheel ships the PP-OCRv4 ONNX
models, so nothing is downloaded.  Header tokens live only in memory.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from collections.abc import Iterable

import numpy as np
from pydicom.dataset import Dataset

logger = logging.getLogger(__name__)

__all__ = ["PhiTextDetector", "OcrEngine", "OcrUnavailable", "header_tokens"]

_NAME_KEYWORDS = (
    "PatientName",
    "OtherPatientNames",
    "PatientBirthName",
    "PatientMotherBirthName",
    "ReferringPhysicianName",
    "PerformingPhysicianName",
    "OperatorsName",
    "NameOfPhysiciansReadingStudy",
    "RequestingPhysician",
    "PhysiciansOfRecord",
)
_ID_KEYWORDS = (
    "PatientID",
    "OtherPatientIDs",
    "AccessionNumber",
    "IssuerOfPatientID",
    "DeviceSerialNumber",
    "AdmissionID",
    "MedicalRecordLocator",
    "RequestedProcedureID",
    "StudyID",
)
_PLACE_KEYWORDS = ("InstitutionName", "InstitutionAddress", "InstitutionalDepartmentName", "StationName")

_MONTHS = "JAN|FEB|MAR|APR|MAY|JUN|JUL|AUG|SEP|OCT|NOV|DEC"
_DATE_PATTERNS = (
    re.compile(r"(?<!\d)\d{1,2}[/.\-]\d{1,2}[/.\-]\d{2,4}(?!\d)"),
    re.compile(r"(?<!\d)\d{4}[/.\-]\d{1,2}[/.\-]\d{1,2}(?!\d)"),
    re.compile(rf"(?<!\d)\d{{1,2}}[ .\-/]?(?:{_MONTHS})[A-Z]*[ .\-/,]*\d{{2,4}}(?!\d)", re.IGNORECASE),
    re.compile(rf"(?:{_MONTHS})[A-Z]*[ .\-/]*\d{{1,2}}[ ,.\-/]+\d{{4}}(?!\d)", re.IGNORECASE),
    re.compile(r"(?<!\d)\d{1,2}:\d{2}:\d{2}(?!\d)"),
)
_DIGIT_RUN = re.compile(r"\d{6,}")


def _normalise(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).upper()
    return "".join(ch for ch in text if ch.isalnum())


def _strings(value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, (bytes, bytearray)):
        return []
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return [str(v) for v in value if not isinstance(v, (bytes, bytearray))]
    return [str(value)]


def header_tokens(dataset: Dataset) -> set[str]:
    """Normalised identifying tokens from an original header (kept in memory only)."""
    tokens: set[str] = set()
    for keyword in _NAME_KEYWORDS:
        for value in _strings(dataset.get(keyword)):
            for part in re.split(r"[\^=\s,]+", value):
                token = _normalise(part)
                if len(token) >= 3:
                    tokens.add(token)
    for keyword in _ID_KEYWORDS:
        for value in _strings(dataset.get(keyword)):
            token = _normalise(value)
            if len(token) >= 4 or (len(token) == 3 and not token.isdigit()):
                tokens.add(token)
    for keyword in _PLACE_KEYWORDS:
        for value in _strings(dataset.get(keyword)):
            token = _normalise(value)
            if len(token) >= 3:
                tokens.add(token)
            for word in re.split(r"\W+", value):
                word = _normalise(word)
                if len(word) >= 4:
                    tokens.add(word)
    return tokens


class PhiTextDetector:
    """Decide whether recognised text looks identifying.

    Args:
        tokens: normalised header tokens from :func:`header_tokens`.
    """

    def __init__(self, tokens: Iterable[str]) -> None:
        self.tokens = sorted({t for t in tokens if t}, key=len, reverse=True)

    def finding(self, lines: Iterable[str]) -> str | None:
        """Reason code for the first kind of PHI found, or None when clean."""
        lines = [line for line in lines if line]
        joined = " ".join(lines)
        normalised = _normalise(joined)
        if any(token in normalised for token in self.tokens):
            return "ocr_header_token"
        if any(pattern.search(joined) for pattern in _DATE_PATTERNS):
            return "ocr_date_pattern"
        if _DIGIT_RUN.search(joined):
            return "ocr_digit_run"
        return None


class OcrUnavailable(RuntimeError):
    """rapidocr-onnxruntime is not installed (``pip install rapidocr-onnxruntime``)."""


class OcrEngine:
    """Lazily created RapidOCR engine, single-threaded so worker processes do not oversubscribe."""

    def __init__(self, threads: int = 1) -> None:
        self.threads = threads
        self._engine = None

    @staticmethod
    def available() -> bool:
        try:
            import rapidocr_onnxruntime  # noqa: F401
        except ImportError:
            return False
        return True

    def _load(self):
        if self._engine is None:
            try:
                from rapidocr_onnxruntime import RapidOCR
            except ImportError as error:
                raise OcrUnavailable(
                    "--ocr-check needs rapidocr-onnxruntime (pip install 'ultradino-monai[ocr]')"
                ) from error
            # The package logs recognised text at INFO; that text may be PHI.
            logging.getLogger("RapidOCR").setLevel(logging.ERROR)
            logging.getLogger("rapidocr_onnxruntime").setLevel(logging.ERROR)
            self._engine = RapidOCR(
                intra_op_num_threads=self.threads, inter_op_num_threads=self.threads, print_verbose=False
            )
        return self._engine

    def read(self, frame: np.ndarray) -> list[str]:
        """Recognised text lines of a uint8 grey or RGB frame."""
        engine = self._load()
        image = frame if frame.ndim == 3 else np.repeat(frame[..., None], 3, axis=2)
        result, _ = engine(np.ascontiguousarray(image[..., ::-1]))
        return [str(item[1]) for item in (result or [])]
