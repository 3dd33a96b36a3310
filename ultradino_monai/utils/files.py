"""Atomic file writes and file hashes.

Every writer puts the content into a temporary file in the destination folder and renames it over
the destination with ``os.replace`` (atomic on POSIX within one file system), so a reader, or a run
resumed after ``kill -9``, only ever sees complete files under their final names. A failed write
removes its temporary and leaves the destination as it was. Temporaries are named
``<prefix>XXXXXXXX.tmp`` (default prefix ``.<name>.``), so a caller that sweeps its output folder
after a kill can pick a prefix of its own.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "atomic_write",
    "sha256_file",
    "write_bytes_atomic",
    "write_json_atomic",
    "write_png_atomic",
    "write_text_atomic",
]

# Read once at import: os.umask can only be read by setting it, which is not thread-safe later on.
_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None], prefix: str | None = None) -> Path:
    """Call ``write(temporary)`` on a temporary file next to ``path``, then rename it over ``path``.

    Args:
        path: the destination; its folder is created when missing.
        write: fills the temporary file (given as a :class:`~pathlib.Path`, already created, empty).
        prefix: the temporary's name prefix; default ``".<name>."``.

    The result gets the permissions ``open()`` would give a new file (``0o666`` minus the umask), not
    ``mkstemp``'s owner-only ``0o600``. Returns ``path`` as a :class:`~pathlib.Path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=prefix or f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        write(Path(temporary))
        os.chmod(temporary, 0o666 & ~_UMASK)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
    return path


def write_bytes_atomic(path: str | os.PathLike, data: bytes, prefix: str | None = None) -> Path:
    """Write ``data`` atomically (``prefix``: see :func:`atomic_write`)."""
    return atomic_write(path, lambda temporary: temporary.write_bytes(data), prefix=prefix)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write a text file (Markdown, CSV) atomically, UTF-8."""
    return atomic_write(path, lambda temporary: temporary.write_text(text, encoding="utf-8"))


def write_json_atomic(path: str | os.PathLike, document: Any) -> Path:
    """Write JSON (2-space indent, newline-terminated) atomically."""
    return atomic_write(path, lambda temporary: temporary.write_text(json.dumps(document, indent=2) + "\n"))


def write_png_atomic(path: str | os.PathLike, array: np.ndarray, compress_level: int = 6) -> Path:
    """Write ``[H, W]`` uint8 / uint16 (grey) or ``[H, W, 3]`` uint8 (RGB) as a PNG, atomically.

    A 2-D uint8 array becomes an 8-bit single-channel ("L") PNG. Other shapes or dtypes raise
    ``ValueError`` rather than letting Pillow pick a surprising mode. ``compress_level`` is zlib's
    0-9 (6: Pillow's default); Pillow writes no timestamp, so equal arrays give equal files.
    """
    from PIL import Image

    array = np.asarray(array)
    grey = array.ndim == 2 and array.dtype in (np.uint8, np.uint16)
    rgb = array.ndim == 3 and array.shape[2] == 3 and array.dtype == np.uint8
    if not (grey or rgb):
        raise ValueError(
            f"write_png_atomic expects [H, W] uint8/uint16 or [H, W, 3] uint8, got {array.dtype} {array.shape}"
        )
    image = Image.fromarray(np.ascontiguousarray(array))
    return atomic_write(path, lambda temporary: image.save(temporary, format="PNG", compress_level=compress_level))


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 (64 lower-case digits) of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
