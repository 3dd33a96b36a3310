"""Keyed pseudonyms: HMAC-SHA256 with a secret key held outside the repository.

Reference ``docs/deidentification.md`` §0 and §1.4: every pseudonym, replacement
UID and date offset is ``HMAC(K, domain | value)`` with domain separation, so the
mapping is deterministic across runs and re-ingests without a lookup table, and
nobody without ``K`` can link an output back to an original identifier (unlike
unkeyed hashes such as ``generate_uid(entropy_srcs=...)`` or CTP ``@hashuid``).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import unicodedata
from pathlib import Path

__all__ = ["SecretKeyError", "MIN_KEY_BYTES", "load_secret_key", "Pseudonymizer", "normalise_identifier"]

MIN_KEY_BYTES = 16


class SecretKeyError(ValueError):
    """The secret key file is missing, unreadable, empty or too short."""


def load_secret_key(path: str | os.PathLike) -> bytes:
    """Read the secret key bytes (surrounding whitespace stripped).

    Raises:
        SecretKeyError: with an actionable message when the file is missing, empty or
            shorter than :data:`MIN_KEY_BYTES` bytes.
    """
    path = Path(path)
    if not path.exists():
        raise SecretKeyError(f"secret key file not found: {path}")
    if not path.is_file():
        raise SecretKeyError(f"secret key path is not a regular file: {path}")
    try:
        key = path.read_bytes().strip()
    except OSError as error:
        raise SecretKeyError(f"cannot read secret key file {path}: {error.strerror}") from None
    if not key:
        raise SecretKeyError(
            f"secret key file is empty: {path}; create one with e.g. `head -c 32 /dev/urandom | base64 > KEYFILE`"
        )
    if len(key) < MIN_KEY_BYTES:
        raise SecretKeyError(
            f"secret key in {path} is {len(key)} bytes; use at least {MIN_KEY_BYTES} random bytes "
            "(e.g. `head -c 32 /dev/urandom | base64 > KEYFILE`)"
        )
    return key


def normalise_identifier(value: object) -> str:
    """Canonical form of an identifier before hashing (dicognito #78: format drift).

    NFKC, upper case, surrounding whitespace and NULs removed, inner whitespace collapsed.
    """
    text = unicodedata.normalize("NFKC", str(value if value is not None else ""))
    text = text.replace("\x00", " ").strip().upper()
    return " ".join(text.split())


class Pseudonymizer:
    """Domain-separated HMAC-SHA256 pseudonyms under one secret key.

    Args:
        key: the secret key bytes (see :func:`load_secret_key`).
    """

    def __init__(self, key: bytes) -> None:
        if not key:
            raise SecretKeyError("empty secret key")
        self._key = bytes(key)

    def digest(self, domain: str, value: str) -> bytes:
        """32-byte HMAC of ``domain|value``."""
        message = f"{domain}|{value}".encode("utf-8", "surrogateescape")
        return hmac.new(self._key, message, hashlib.sha256).digest()

    def hex(self, domain: str, value: str, length: int = 16) -> str:
        return self.digest(domain, value).hex()[:length]

    def uid(self, original: str) -> str:
        """Replacement UID ``2.25.<int of the first 16 HMAC bytes>`` (docs/deidentification.md §1.4).

        At most 44 characters, no leading zeros, valid under DICOM PS3.5 chapter 9 (docs/deidentification.md §1.4).
        """
        canonical = str(original).replace("\x00", "").strip()
        number = int.from_bytes(self.digest("uid", canonical)[:16], "big")
        return f"2.25.{number}"

    def patient(self, patient_key: str) -> str:
        return "P" + self.hex("patient", patient_key)

    def study(self, study_uid: str) -> str:
        return "S" + self.hex("study", str(study_uid).strip())

    def series(self, series_uid: str) -> str:
        return "R" + self.hex("series", str(series_uid).strip())

    def instance(self, sop_instance_uid: str) -> str:
        return "I" + self.hex("instance", str(sop_instance_uid).strip())

    def device(self, description: str) -> str:
        return "D" + self.hex("device", description, 12)

    def item_id(self, relative_path: str, member: str | None) -> str:
        """State-file name for one input (the path itself never reaches OUTPUT)."""
        return self.hex("item", f"{relative_path}\x00{member or ''}", 32)

    def fingerprint(self, text: str) -> str:
        return self.hex("fingerprint", text, 32)

    def date_offset_days(self, patient_key: str, min_days: int, span_days: int) -> int:
        """Per-patient date shift ``-(min + h mod span)`` in whole days (docs/deidentification.md §1.5)."""
        value = int.from_bytes(self.digest("date", patient_key)[:8], "big")
        return -(min_days + value % span_days)

    def key_check(self) -> str:
        """Keyed constant that tells whether an OUTPUT was made with this key."""
        return self.hex("key-check", "ultradino-ingest", 32)
