"""Shared pieces of the public-dataset converters (``data_prep.fass``, ``data_prep.jnu_ifm``).

* :class:`SourceTree` reads a dataset release *as downloaded*: a folder, a zip
  file, or a zip inside a zip (FASS is released as an outer zip holding an inner
  zip). Files are read straight out of the archives; nothing is extracted next
  to the input, and the input is opened read-only, so it is never modified.
  Every zip member name is checked before use (no absolute paths, no ``..``,
  no symlinks, no encrypted members): an archive that tries path traversal is
  refused with :class:`UnsafeArchiveError` instead of being half-read.
  Nested zips are copied, under a name chosen here, into a private work folder
  inside the output directory and removed on exit.
* :func:`read_png_array` / :func:`to_grayscale`: decode PNG bytes and reduce
  grey-content RGB to one channel (the converters write the results with
  :func:`ultradino_monai.utils.files.write_png_atomic`).
* :func:`check_counts` compares what was found with what the dataset paper
  documents and raises :class:`CountMismatchError` naming every difference and
  the command-line switches that relax the check.
* :func:`staged_output` gives a converter a hidden staging folder inside its
  output folder and publishes the staged files into the output folder only when
  the whole conversion succeeded, so a failed run (a corrupt image half-way, a
  tree too small for the split files) leaves no datalist, split files or images
  behind, and an earlier good output stays as it was.

Operating-system clutter (``__MACOSX/`` resource forks, ``._*`` AppleDouble
files, ``.DS_Store``, ``Thumbs.db``) is skipped but still listed in
:attr:`SourceTree.skipped`, so every input is accounted for in the reports.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import secrets
import shutil
import stat
import tempfile
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

logger = logging.getLogger(__name__)

__all__ = [
    "ConversionError",
    "CountMismatchError",
    "UnsafeArchiveError",
    "SourceFile",
    "SourceTree",
    "check_counts",
    "check_output_outside_input",
    "read_png_array",
    "staged_output",
    "to_grayscale",
    "BT601_WEIGHTS",
]

# ITU-R BT.601 luma, the weights Pillow's convert("L") and
# ultradino_monai.transforms.ultrasound.ToSingleChannel use.
BT601_WEIGHTS = (0.299, 0.587, 0.114)

# Nested archives deeper than this are almost certainly a packaging mistake (or a zip bomb).
MAX_ZIP_NESTING = 3

_CLUTTER_DIRS = {"__MACOSX"}
_CLUTTER_FILES = {".DS_Store", "Thumbs.db", "desktop.ini"}


class ConversionError(ValueError):
    """The input does not look like the documented release; the message says what differs."""


class CountMismatchError(ConversionError):
    """Found a different number of images / patients / videos than the dataset documents."""


class UnsafeArchiveError(ConversionError):
    """A zip member could escape the extraction folder (absolute path, ``..``, symlink) or is encrypted."""


@dataclass(frozen=True)
class SourceFile:
    """One file of a dataset release, wherever it lives (plain folder or inside zips).

    Attributes:
        path: POSIX path relative to the release root; a member of a nested zip is
            named ``<path of the zip>/<member path>``.
        size: uncompressed size in bytes.
    """

    path: str
    size: int
    _reader: Callable[[], bytes] = field(repr=False, compare=False)

    @property
    def name(self) -> str:
        return PurePosixPath(self.path).name

    @property
    def parts(self) -> tuple[str, ...]:
        return PurePosixPath(self.path).parts

    def read_bytes(self) -> bytes:
        return self._reader()


def _is_clutter(parts: Sequence[str]) -> bool:
    if any(part in _CLUTTER_DIRS for part in parts):
        return True
    name = parts[-1]
    return name in _CLUTTER_FILES or name.startswith("._")


def safe_member_parts(name: str) -> tuple[str, ...]:
    """Split a zip member name into path parts, refusing anything that could leave the archive root.

    Raises:
        UnsafeArchiveError: absolute path, drive letter, ``..`` component or empty name.
    """
    # Zip names use "/", but archives made on Windows sometimes carry "\"; treat both
    # as separators so "..\\x" cannot sneak past the ".." check.
    normalised = name.replace("\\", "/")
    if normalised.startswith("/") or (len(normalised) > 1 and normalised[1] == ":"):
        raise UnsafeArchiveError(f"zip member {name!r} has an absolute path; refusing to read this archive")
    parts = tuple(part for part in normalised.split("/") if part not in ("", "."))
    if any(part == ".." for part in parts):
        raise UnsafeArchiveError(f"zip member {name!r} contains '..' (path traversal); refusing to read this archive")
    if not parts:
        raise UnsafeArchiveError(f"zip member {name!r} has an empty path")
    return parts


def _check_member(info: zipfile.ZipInfo, archive: str) -> tuple[str, ...]:
    parts = safe_member_parts(info.filename)
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        raise UnsafeArchiveError(
            f"{archive}: member {info.filename!r} is a symbolic link; refusing to read this archive"
        )
    if info.flag_bits & 0x1:
        raise UnsafeArchiveError(f"{archive}: member {info.filename!r} is encrypted; decrypt the archive first")
    return parts


class SourceTree:
    """Read-only view of a dataset release given as a folder or a (nested) zip.

    Use as a context manager; nested zips are staged in a private folder under
    ``work_root`` that is deleted on exit::

        with SourceTree(raw, work_root=out_dir) as tree:
            for source in tree.files(expand_nested_zips=True):
                data = source.read_bytes()

    Args:
        raw: the release: a directory or a ``.zip`` file.
        work_root: where nested zips may be staged (normally the converter's output
            folder, never inside ``raw``). It is created if needed.
    """

    def __init__(self, raw: str | os.PathLike, work_root: str | os.PathLike):
        self.raw = Path(raw)
        if not self.raw.exists():
            raise ConversionError(f"input not found: {self.raw}")
        if not (self.raw.is_dir() or zipfile.is_zipfile(self.raw)):
            raise ConversionError(f"input {self.raw} is neither a folder nor a zip archive")
        self.work_root = Path(work_root)
        self.skipped: list[str] = []
        self._workdir: Path | None = None
        self._open: list[zipfile.ZipFile] = []
        self._cache: dict[bool, list[SourceFile]] = {}

    def __enter__(self) -> SourceTree:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        for archive in self._open:
            archive.close()
        self._open.clear()
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None
        self._cache.clear()

    def _stage_dir(self) -> Path:
        if self._workdir is None:
            self.work_root.mkdir(parents=True, exist_ok=True)
            self._workdir = Path(tempfile.mkdtemp(prefix=".convert-work-", dir=self.work_root))
        return self._workdir

    def files(self, expand_nested_zips: bool = True) -> list[SourceFile]:
        """All files of the release, sorted by path, clutter removed.

        Args:
            expand_nested_zips: list the members of ``.zip`` files found inside the
                release (the zip files themselves are then not listed). With
                ``False`` a nested zip is listed as one file. A zip given as ``raw``
                is always opened.
        """
        if expand_nested_zips not in self._cache:
            self.skipped = []
            found: list[SourceFile] = []
            if self.raw.is_dir():
                self._walk_directory(found, expand_nested_zips)
            else:
                self._walk_zip(self.raw, (), found, expand_nested_zips, depth=1)
            found.sort(key=lambda source: source.path)
            self._cache[expand_nested_zips] = found
            self.skipped.sort()
        return self._cache[expand_nested_zips]

    def _walk_directory(self, found: list[SourceFile], expand: bool) -> None:
        for directory, subdirs, names in os.walk(self.raw, followlinks=False):
            subdirs.sort()
            relative_dir = Path(directory).relative_to(self.raw)
            for name in sorted(names):
                full = Path(directory) / name
                parts = tuple((relative_dir / name).parts)
                path = PurePosixPath(*parts).as_posix()
                if _is_clutter(parts):
                    self.skipped.append(path)
                    continue
                if full.is_symlink():
                    # A link could point anywhere on the machine; the release never needs one.
                    self.skipped.append(path)
                    logger.warning("skipping symbolic link in the input: %s", path)
                    continue
                if expand and name.lower().endswith(".zip") and zipfile.is_zipfile(full):
                    self._walk_zip(full, parts, found, expand, depth=1)
                    continue
                found.append(SourceFile(path, full.stat().st_size, _file_reader(full)))

    def _walk_zip(
        self, zip_path: Path, prefix: tuple[str, ...], found: list[SourceFile], expand: bool, depth: int
    ) -> None:
        if depth > MAX_ZIP_NESTING:
            raise ConversionError(f"zip archives nested deeper than {MAX_ZIP_NESTING} levels at {'/'.join(prefix)}")
        archive = zipfile.ZipFile(zip_path, "r")
        self._open.append(archive)
        label = "/".join(prefix) or str(zip_path)
        infos = archive.infolist()
        # Check every member before reading any, so a hostile archive is refused as a whole.
        checked = [(info, _check_member(info, label)) for info in infos]
        for info, parts in checked:
            if info.is_dir():
                continue
            full_parts = prefix + parts
            path = PurePosixPath(*full_parts).as_posix()
            if _is_clutter(full_parts):
                self.skipped.append(path)
                continue
            if expand and parts[-1].lower().endswith(".zip"):
                staged = self._stage_dir() / f"nested-{secrets.token_hex(8)}.zip"
                with archive.open(info) as source, open(staged, "wb") as target:
                    shutil.copyfileobj(source, target, length=1 << 20)
                if zipfile.is_zipfile(staged):
                    logger.info("reading nested archive %s", path)
                    self._walk_zip(staged, full_parts, found, expand, depth + 1)
                    continue
                staged.unlink()
            found.append(SourceFile(path, info.file_size, _member_reader(archive, info)))


def _file_reader(path: Path) -> Callable[[], bytes]:
    return path.read_bytes


def _member_reader(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> Callable[[], bytes]:
    return lambda: archive.read(info)


def check_output_outside_input(raw: str | os.PathLike, out: str | os.PathLike) -> None:
    """Refuse an output folder inside the input folder (the converter would read its own output)."""
    raw_resolved = Path(raw).resolve()
    out_resolved = Path(out).resolve()
    if raw_resolved == out_resolved or (raw_resolved.is_dir() and raw_resolved in out_resolved.parents):
        raise ConversionError(f"output folder {out} lies inside the input {raw}; choose a folder outside the input")


def read_png_array(data: bytes, what: str) -> np.ndarray:
    """Decode PNG (or any Pillow-readable) bytes to an array, keeping palette indices as values.

    Returns:
        ``[H, W]`` or ``[H, W, C]`` array in the file's dtype.
    """
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            if image.mode == "P":
                # Palette PNGs: for label maps the index *is* the value; for images the
                # index is meaningless, so callers that want intensities use to_grayscale.
                return np.asarray(image)
            if image.mode not in ("L", "RGB", "RGBA", "LA", "I;16", "I", "1"):
                image = image.convert("RGB")
            return np.asarray(image)
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise ConversionError(f"{what}: cannot decode image ({error})") from error


def to_grayscale(array: np.ndarray, what: str) -> tuple[np.ndarray, bool]:
    """Reduce an 8-bit image to one channel.

    Grey-content RGB (all channels equal) becomes its first channel, bit-exactly.
    Colour RGB (e.g. a coloured caliper burnt into the frame) becomes BT.601 luma,
    rounded, the same rule Pillow and the shared preprocessing use.

    Args:
        array: ``[H, W]``, ``[H, W, 1]``, ``[H, W, 3]`` or ``[H, W, 4]`` (alpha ignored), uint8.
        what: file name used in error messages.

    Returns:
        (``[H, W]`` uint8 array, ``True`` when the input had colour that was mixed down)
    """
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    if array.dtype != np.uint8:
        raise ConversionError(f"{what}: expected an 8-bit image, got dtype {array.dtype}")
    if array.ndim == 2:
        return array, False
    if array.ndim == 3 and array.shape[2] in (1, 2):
        return array[..., 0], False
    if array.ndim == 3 and array.shape[2] in (3, 4):
        rgb = array[..., :3]
        if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]):
            return np.ascontiguousarray(rgb[..., 0]), False
        luma = rgb.astype(np.float64) @ np.asarray(BT601_WEIGHTS)
        return np.clip(np.rint(luma), 0, 255).astype(np.uint8), True
    raise ConversionError(f"{what}: unsupported image shape {array.shape}; expected H x W or H x W x 1/3/4")


def check_counts(found: Mapping[str, int], expected: Mapping[str, int | None], hint: str) -> None:
    """Raise :class:`CountMismatchError` listing every count that differs from the expected one.

    Args:
        found: e.g. ``{"images": 1588, "patients": 169}``.
        expected: the same keys; ``None`` skips that check.
        hint: how to relax the check (command-line switches), appended to the message.
    """
    problems = [
        f"found {found[key]} {key}, expected {value}"
        for key, value in expected.items()
        if value is not None and found.get(key) != value
    ]
    if problems:
        raise CountMismatchError("; ".join(problems) + f". {hint}")


STAGING_PREFIX = ".converting-"


def _publish_order(entry: Path) -> tuple[int, str]:
    # The report goes in last: a reader that finds conversion_report.json finds a complete conversion.
    return (entry.name == "conversion_report.json", entry.name)


@contextlib.contextmanager
def staged_output(out: str | os.PathLike) -> Iterator[Path]:
    """Stage a conversion in a hidden folder inside ``out``; move it into ``out`` only on success.

    Usage::

        with staged_output(out) as stage:
            ...  # every output file is written below ``stage``

    On success every top-level entry of the staging folder replaces its namesake in ``out``:
    a file with ``os.replace``, a folder (``images/``, ``labels/``, ``splits/``) by renaming
    the old folder away and the new one in, so ``images/`` never mixes two runs.
    ``conversion_report.json`` is moved last. Entries of ``out`` that the conversion does not
    write are left alone. On any exception the staging folder is deleted, ``out`` is removed
    when this call created it and it is still empty, and the exception propagates: nothing
    of the failed run is left, and an earlier good output is untouched. The staging folder
    lies inside ``out`` so that every rename stays on one file system. Entries whose names
    start with ``.`` (work folders) are never published.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConversionError(f"output {out} exists and is not a folder")
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=out))
    try:
        yield stage
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        if created:
            with contextlib.suppress(OSError):
                out.rmdir()  # only succeeds when nothing else was put there meanwhile
        raise
    for entry in sorted(stage.iterdir(), key=_publish_order):
        if entry.name.startswith("."):
            continue
        target = out / entry.name
        if entry.is_dir() and (target.exists() or target.is_symlink()):
            retired = stage / f".retired-{entry.name}"
            os.replace(target, retired)
            try:
                os.replace(entry, target)
            except OSError:
                os.replace(retired, target)  # put the old folder back before reporting the failure
                raise
        else:
            os.replace(entry, target)
    shutil.rmtree(stage, ignore_errors=True)
