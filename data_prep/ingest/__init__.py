"""DICOM ultrasound ingestion with de-identification: ``python -m data_prep.ingest``.

Public API:

* :func:`run_ingest` - ingest a folder tree into PNG frames + manifest + datalist.
* :class:`IngestConfig`, :class:`BannerPolicy` - run options.
* :func:`load_secret_key`, :class:`Pseudonymizer` - keyed HMAC pseudonyms.

See ``data_prep/ingest/README.md`` for the output layout, reason codes and the
de-identification rules (allowlist, keyed UIDs, date shifts, region crop).
"""

from .config import BannerPolicy, ConfigError, IngestConfig
from .keys import Pseudonymizer, SecretKeyError, load_secret_key
from .pipeline import MANIFEST_COLUMNS, IngestError, run_ingest

__all__ = [
    "BannerPolicy",
    "ConfigError",
    "IngestConfig",
    "IngestError",
    "MANIFEST_COLUMNS",
    "Pseudonymizer",
    "SecretKeyError",
    "load_secret_key",
    "run_ingest",
]
