"""Atomic file writes and the clean-up of temporaries left by a killed run.

Every output file is written to a temporary name in its final folder and then
renamed with ``os.replace``, so a reader (or a run resumed after ``kill -9``)
only ever sees complete files under their final names.  Temporaries share one
prefix so the next run can delete them.
"""

from __future__ import annotations

import io
import os
import secrets
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["TEMP_PREFIX", "atomic_write_bytes", "encode_png", "sweep_temporaries"]

TEMP_PREFIX = ".ingest-tmp-"


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a same-folder temporary and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.parent / f"{TEMP_PREFIX}{secrets.token_hex(8)}"
    try:
        with open(temporary, "wb") as stream:
            stream.write(data)
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except FileNotFoundError:
            pass
        raise


def encode_png(frame: np.ndarray, compress_level: int) -> bytes:
    """Deterministic PNG bytes (no timestamps or text chunks) of a uint8 grey/RGB frame."""
    mode = "L" if frame.ndim == 2 else "RGB"
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(frame), mode=mode).save(buffer, format="PNG", compress_level=compress_level)
    return buffer.getvalue()


def sweep_temporaries(root: str | os.PathLike) -> int:
    """Delete temporaries (ours and datalist.py's ``.name.*.tmp``) below ``root``; return the count."""
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
