"""PNG encoding and the clean-up of temporaries left by a killed ingest run.

Every output file is written with :func:`ultradino_monai.utils.files.write_bytes_atomic`
(a temporary in the final folder, then ``os.replace``), with ``prefix=TEMP_PREFIX``, so a
reader (or a run resumed after ``kill -9``) only ever sees complete files under their final
names, and the next run can find and delete the temporaries by that prefix.
"""

from __future__ import annotations

import io
import os

import numpy as np
from PIL import Image

__all__ = ["TEMP_PREFIX", "encode_png", "sweep_temporaries"]

TEMP_PREFIX = ".ingest-tmp-"


def encode_png(frame: np.ndarray, compress_level: int) -> bytes:
    """Deterministic PNG bytes (no timestamps or text chunks) of a uint8 grey/RGB frame."""
    mode = "L" if frame.ndim == 2 else "RGB"
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(frame), mode=mode).save(buffer, format="PNG", compress_level=compress_level)
    return buffer.getvalue()


def sweep_temporaries(root: str | os.PathLike) -> int:
    """Delete temporaries (``TEMP_PREFIX*`` and the default ``.name.*.tmp``) below ``root``; return the count."""
    removed = 0
    for folder, _, files in os.walk(root):
        for name in files:
            if name.startswith(TEMP_PREFIX) or (name.startswith(".") and name.endswith(".tmp")):
                try:
                    os.unlink(os.path.join(folder, name))
                    removed += 1
                except FileNotFoundError:
                    pass
    return removed
