"""Find every input file under INPUT, expanding zip archives without extracting them.

The result is a list in a stable order (sorted relative paths, then zip member
order by name) so the *position* of an input, the only way outputs name it, is
the same for every run and every number of workers.  Zip members are never
written to disk; their names are checked for path traversal (absolute paths,
``..`` components, drive letters, symlink entries) and their sizes for zip
bombs, and offending members are quarantined.  Symlinks are not followed.
"""

from __future__ import annotations

import os
import re
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path

__all__ = ["InputItem", "discover_inputs", "is_zip_file", "unsafe_member_name"]

# A member this much larger than its compressed size, and large in absolute terms,
# is treated as a zip bomb.
_BOMB_RATIO = 200
_BOMB_MIN_BYTES = 64 * 1024 * 1024
_DRIVE = re.compile(r"^[A-Za-z]:")


@dataclass(frozen=True)
class InputItem:
    """One input: a file in INPUT, or one member of a zip archive in INPUT.

    ``relpath`` and ``member`` stay in memory and in pseudonymised state-file
    names only; outputs refer to the item by its position in the sorted list.
    ``issue`` is an ``(outcome, reason)`` decided without reading the content.
    """

    relpath: str
    member: str | None = None
    member_index: int | None = None
    size: int = 0
    stamp: str = ""
    issue: tuple[str, str] | None = None


def is_zip_file(path: str | os.PathLike, head: bytes | None = None) -> bool:
    """A zip archive by magic number, and not a DICOM file whose preamble mimics one."""
    if head is None:
        with open(path, "rb") as stream:
            head = stream.read(132)
    if len(head) >= 132 and head[128:132] == b"DICM":
        return False
    return head[:4] in (b"PK\x03\x04", b"PK\x05\x06")


def unsafe_member_name(name: str) -> bool:
    """True for member names that would escape an extraction folder."""
    if not name or "\x00" in name:
        return True
    if name.startswith(("/", "\\")) or _DRIVE.match(name):
        return True
    return any(part == ".." for part in re.split(r"[\\/]", name))


def _zip_members(relpath: str, path: Path, file_stamp: str, max_member_bytes: int) -> list[InputItem]:
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError):
        return [InputItem(relpath, size=path.stat().st_size, stamp=file_stamp, issue=("quarantined", "bad_archive"))]
    entries = [(info.filename, index, info) for index, info in enumerate(infos) if not info.is_dir()]
    entries.sort(key=lambda entry: (entry[0], entry[1]))
    if not entries:
        return [InputItem(relpath, size=path.stat().st_size, stamp=file_stamp, issue=("skipped", "empty_archive"))]
    items: list[InputItem] = []
    seen: set[str] = set()
    for name, index, info in entries:
        issue = None
        mode = info.external_attr >> 16
        if unsafe_member_name(name) or stat.S_ISLNK(mode):
            issue = ("quarantined", "zip_unsafe_path")
        elif info.flag_bits & 0x1:
            issue = ("quarantined", "zip_encrypted")
        elif name in seen:
            issue = ("quarantined", "zip_duplicate_member")
        elif info.file_size > max_member_bytes:
            issue = ("quarantined", "zip_member_too_large")
        elif info.file_size > _BOMB_MIN_BYTES and info.file_size > _BOMB_RATIO * max(info.compress_size, 1):
            issue = ("quarantined", "zip_bomb_suspect")
        seen.add(name)
        stamp = f"{file_stamp}:{index}:{info.CRC}:{info.file_size}"
        items.append(InputItem(relpath, member=name, member_index=index, size=info.file_size, stamp=stamp, issue=issue))
    return items


def discover_inputs(root: str | os.PathLike, max_member_bytes: int) -> list[InputItem]:
    """Every input under ``root`` (zip members expanded) in a stable, sorted order."""
    root = Path(root)
    found: list[tuple[str, Path]] = []
    unreadable: list[str] = []

    def folder_error(error: OSError) -> None:
        # A folder that cannot be listed still has to be accounted for.
        if error.filename and Path(error.filename) != root:
            unreadable.append(Path(error.filename).relative_to(root).as_posix())

    for folder, dirnames, filenames in os.walk(root, onerror=folder_error, followlinks=False):
        dirnames.sort()
        for name in sorted(filenames) + sorted(d for d in dirnames if os.path.islink(os.path.join(folder, d))):
            full = Path(folder) / name
            found.append((full.relative_to(root).as_posix(), full))
    found.sort(key=lambda entry: entry[0])
    items: list[InputItem] = [InputItem(f"{name}/", issue=("quarantined", "unreadable_folder")) for name in unreadable]
    for relpath, full in found:
        try:
            info = os.lstat(full)
        except OSError:
            items.append(InputItem(relpath, issue=("quarantined", "unreadable_file")))
            continue
        stamp = f"{info.st_size}:{info.st_mtime_ns}"
        if stat.S_ISLNK(info.st_mode):
            items.append(InputItem(relpath, stamp=stamp, issue=("skipped", "symlink")))
            continue
        if not stat.S_ISREG(info.st_mode):
            items.append(InputItem(relpath, stamp=stamp, issue=("skipped", "not_regular_file")))
            continue
        try:
            zipped = is_zip_file(full)
        except OSError:
            items.append(InputItem(relpath, size=info.st_size, stamp=stamp, issue=("quarantined", "unreadable_file")))
            continue
        if zipped:
            items.extend(_zip_members(relpath, full, stamp, max_member_bytes))
        else:
            items.append(InputItem(relpath, size=info.st_size, stamp=stamp))
    items.sort(key=lambda item: (item.relpath, item.member or ""))
    return items
