"""Pack an ingest output into webdataset tar shards: ``python -m data_prep.shards INGEST_DIR SHARDS_DIR``.

Input: a ``data_prep.ingest`` output folder (``datalist.json`` + ``images/``). Output, in SHARDS_DIR:

* ``shard-000000.tar``, ``shard-000001.tar``, ...: plain tar files in the webdataset layout. Each
  frame is two members with the same key (its image path without ``.png``): ``KEY.png``, the
  ingested PNG bytes as they are (no re-encoding), and ``KEY.json``, its datalist record.
* ``index.json``, written last: every shard with its sample count, byte size and sha256, plus
  the sha256 of the datalist it came from (:mod:`ultradino_monai.data.shards` reads it).

The frames of one patient go into one shard where they fit (a patient larger than a shard is
split over consecutive shards); patients keep the datalist's order. Shards are planned from
the file sizes before anything is written, so the output depends only on the input and
``--shard-size-mb``: members carry mtime 0 and fixed owners, and two runs give byte-identical
shards. Each shard is written to a temporary file and renamed; a ``.progress/`` record marks it
done. A killed run resumes: finished shards are kept, the rest are written again.

Exit status: 0 on success (also when SHARDS_DIR is already up to date), 2 with one line on bad
input (a missing datalist or PNG, an output folder inside the input, shards of another input).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import shutil
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import webdataset as wds

from ultradino_monai.data.datalist import DatalistError, read_datalist
from ultradino_monai.data.shards import SHARD_FORMAT, SHARD_INDEX, SHARD_PATTERN, read_shard_index, sample_key
from ultradino_monai.utils.cli import positive_int
from ultradino_monai.utils.errors import UserInputError
from ultradino_monai.utils.files import atomic_write, sha256_file, write_json_atomic
from ultradino_monai.utils.logs import setup_logging

logger = logging.getLogger(__name__)

SECTION = "training"
PROGRESS = ".progress"
TEMP_PREFIX = ".shard-tmp-"
TAR_BLOCK = 512


class ShardError(UserInputError):
    """The input or output folder cannot be used; the message says which file and why."""


@dataclass(frozen=True)
class Frame:
    """One datalist entry to pack: its key, PNG path, record and estimated bytes in the tar."""

    key: str
    png: str
    record: dict[str, Any]
    tar_bytes: int


def _member_bytes(size: int) -> int:
    """Bytes a tar member of ``size`` bytes takes: a header block plus the data padded to 512."""
    return TAR_BLOCK + math.ceil(size / TAR_BLOCK) * TAR_BLOCK


def read_frames(ingest_dir: Path) -> tuple[list[Frame], str]:
    """The training frames of ``ingest_dir/datalist.json``, each checked to exist; and the datalist's sha256."""
    datalist = ingest_dir / "datalist.json"
    try:
        document = read_datalist(datalist)
    except DatalistError as error:
        raise ShardError(f"{error}; is {ingest_dir} a data_prep.ingest output?") from None
    items = document.get(SECTION)
    if not isinstance(items, list) or not items:
        raise ShardError(f"{datalist}: section {SECTION!r} is missing or empty; nothing to shard")
    frames, keys = [], {}
    for index, item in enumerate(items):
        image = item.get("image") if isinstance(item, dict) else None
        if not isinstance(image, str) or not image:
            raise ShardError(f"{datalist}: {SECTION}[{index}] has no 'image' path")
        png = ingest_dir / image
        try:
            size = png.stat().st_size
        except OSError:
            raise ShardError(f"{datalist}: {SECTION}[{index}] image file not found: {image}") from None
        key = sample_key(image)
        if key in keys:
            raise ShardError(f"{datalist}: {SECTION}[{index}] and [{keys[key]}] share the shard key {key!r}")
        keys[key] = index
        record_size = len(json.dumps(item).encode())
        frames.append(Frame(key, str(png), dict(item), _member_bytes(size) + _member_bytes(record_size)))
    return frames, sha256_file(datalist)


def plan_shards(frames: Sequence[Frame], max_bytes: int) -> list[list[Frame]]:
    """Group frames into shards of at most ``max_bytes`` (one frame may exceed it alone).

    Patients stay together in one shard when they fit in an empty one; the first appearance
    of each patient fixes the patient order, and frames keep their order within a patient.
    """
    by_patient: dict[str, list[Frame]] = {}
    for frame in frames:
        by_patient.setdefault(str(frame.record.get("patient", frame.key)), []).append(frame)
    shards: list[list[Frame]] = [[]]
    used = 0
    for patient_frames in by_patient.values():
        size = sum(frame.tar_bytes for frame in patient_frames)
        if shards[-1] and used + size > max_bytes and size <= max_bytes:
            shards.append([])
            used = 0
        for frame in patient_frames:  # a patient larger than a shard fills consecutive shards
            if shards[-1] and used + frame.tar_bytes > max_bytes:
                shards.append([])
                used = 0
            shards[-1].append(frame)
            used += frame.tar_bytes
    return shards


def _fingerprint(frames: Sequence[Frame]) -> str:
    digest = hashlib.sha256()
    for frame in frames:
        digest.update(f"{frame.key}\0{frame.tar_bytes}\0".encode())
    return digest.hexdigest()


class _HashingStream:
    """A write-only binary stream that feeds every byte to sha256 on its way to the file.

    The shard is hashed while it is written, not read back afterwards (about 200 GB at 2M frames).
    tarfile's stream mode (``"w|"``, what ``TarWriter`` uses) only calls ``write``.
    """

    def __init__(self, stream) -> None:
        self.stream = stream
        self.digest = hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        return self.stream.write(data)


def write_shard(path: str, frames: Sequence[Frame]) -> dict[str, Any]:
    """Write one tar shard atomically; return its index entry (name, samples, bytes, sha256)."""
    hashed: dict[str, str] = {}

    def fill(temporary: Path) -> None:
        with open(temporary, "wb") as stream:
            hashing = _HashingStream(stream)
            writer = wds.TarWriter(hashing, mtime=0, user="ultradino", group="ultradino", mode=0o444)
            for frame in frames:
                writer.write({"__key__": frame.key, "png": Path(frame.png).read_bytes(), "json": frame.record})
            writer.close()
            hashed["sha256"] = hashing.digest.hexdigest()

    atomic_write(path, fill, prefix=TEMP_PREFIX)
    return {"name": Path(path).name, "num_samples": len(frames), "bytes": os.path.getsize(path), **hashed}


def _write_planned(args: tuple[str, str, list[Frame]]) -> dict[str, Any]:
    """Worker task: write a shard, then its progress record (the shard counts as done only then)."""
    path, progress, frames = args
    entry = write_shard(path, frames)
    entry["plan"] = _fingerprint(frames)
    write_json_atomic(progress, entry)
    return entry


def _done_entry(progress: Path, shard: Path, frames: Sequence[Frame]) -> dict[str, Any] | None:
    """The progress record of a shard finished by an earlier run, if it still matches the plan."""
    try:
        entry = json.loads(progress.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if entry.get("plan") != _fingerprint(frames) or not shard.is_file() or shard.stat().st_size != entry["bytes"]:
        return None
    return entry


def _check_folders(ingest_dir: Path, shards_dir: Path) -> None:
    ingest, out = ingest_dir.resolve(), shards_dir.resolve()
    if out == ingest or ingest in out.parents:
        raise ShardError(f"SHARDS_DIR {shards_dir} is inside INGEST_DIR {ingest_dir}; choose a folder outside it")
    if out in ingest.parents:
        raise ShardError(f"INGEST_DIR {ingest_dir} is inside SHARDS_DIR {shards_dir}; choose another SHARDS_DIR")
    if not ingest_dir.is_dir():
        raise ShardError(f"INGEST_DIR not found: {ingest_dir}")


def _clear_stale(shards_dir: Path) -> None:
    """Remove what an earlier run of this writer left for another input (only its own files)."""
    for path in [shards_dir / SHARD_INDEX, *shards_dir.glob("shard-*.tar"), *shards_dir.glob(f"{TEMP_PREFIX}*")]:
        path.unlink(missing_ok=True)
    shutil.rmtree(shards_dir / PROGRESS, ignore_errors=True)


def write_shards(
    ingest_dir: str | os.PathLike,
    shards_dir: str | os.PathLike,
    shard_size_mb: float = 512,
    workers: int = 1,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Pack ``ingest_dir`` into ``shards_dir`` (see the module docstring); return the index document."""
    ingest_dir, shards_dir = Path(ingest_dir), Path(shards_dir)
    if not (math.isfinite(shard_size_mb) and shard_size_mb > 0):
        raise ShardError(f"--shard-size-mb must be a positive number, got {shard_size_mb}")
    if workers < 1:
        raise ShardError(f"--workers must be >= 1, got {workers}")
    _check_folders(ingest_dir, shards_dir)
    frames, datalist_sha = read_frames(ingest_dir)
    plan = plan_shards(frames, int(shard_size_mb * 2**20))
    source = {"datalist_sha256": datalist_sha, "plan_sha256": _fingerprint(frames), "shard_size_mb": shard_size_mb}

    index_path = shards_dir / SHARD_INDEX
    if index_path.is_file():
        existing = json.loads(index_path.read_text())
        if existing.get("source") == source:
            read_shard_index(shards_dir)  # raises when a listed shard is missing or resized
            logger.info("%s is up to date (%d frames in %d shards)", shards_dir, len(frames), len(plan))
            return existing
        if not overwrite:
            raise ShardError(
                f"{index_path} belongs to another input or shard size; pass --overwrite or choose an empty SHARDS_DIR"
            )
        _clear_stale(shards_dir)
    progress_dir = shards_dir / PROGRESS
    plan_file = progress_dir / "source.json"
    if plan_file.is_file() and json.loads(plan_file.read_text()) != source:
        if not overwrite:
            raise ShardError(
                f"{shards_dir} holds an unfinished run for another input; pass --overwrite or choose an empty folder"
            )
        _clear_stale(shards_dir)
    progress_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(plan_file, source)
    for temporary in shards_dir.glob(f"{TEMP_PREFIX}*"):  # left by a killed run
        temporary.unlink()

    entries: dict[int, dict[str, Any]] = {}
    todo = []
    for number, shard_frames in enumerate(plan):
        shard = shards_dir / (SHARD_PATTERN % number)
        progress = progress_dir / f"{shard.stem}.json"
        done = _done_entry(progress, shard, shard_frames)
        if done is not None:
            entries[number] = done
        else:
            todo.append((number, (str(shard), str(progress), shard_frames)))
    logger.info(
        "%d frames of %d patients -> %d shards (%d already written), %g MiB each at most",
        len(frames),
        len({str(f.record.get("patient", f.key)) for f in frames}),
        len(plan),
        len(entries),
        shard_size_mb,
    )
    started = time.monotonic()
    if workers > 1 and len(todo) > 1:
        with ProcessPoolExecutor(max_workers=min(workers, len(todo))) as pool:
            for (number, _), entry in zip(todo, pool.map(_write_planned, [task for _, task in todo])):
                entries[number] = entry
    else:
        for number, task in todo:
            entries[number] = _write_planned(task)
    written = sum(len(task[2]) for _, task in todo)
    if todo:
        elapsed = time.monotonic() - started
        logger.info("wrote %d shards (%d frames) in %.1f s", len(todo), written, elapsed)

    shards = [{k: entries[n][k] for k in ("name", "num_samples", "bytes", "sha256")} for n in range(len(plan))]
    counted = sum(entry["num_samples"] for entry in shards)
    if counted != len(frames) or any(e["num_samples"] != len(p) for e, p in zip(shards, plan)):
        raise ShardError(f"{shards_dir}: the shards hold {counted} frames, the datalist {len(frames)}; rerun")
    document = {"format": SHARD_FORMAT, "section": SECTION, "num_samples": counted, "source": source, "shards": shards}
    write_json_atomic(index_path, document)
    shutil.rmtree(progress_dir, ignore_errors=True)
    logger.info("%s: %d frames in %d shards, index %s", shards_dir, counted, len(shards), index_path)
    return document


def verify_shards(shards_dir: str | os.PathLike) -> int:
    """Re-hash every shard and count its samples with webdataset; return the number of samples."""
    index = read_shard_index(shards_dir)
    total = 0
    for shard in index.shards:
        path = index.path(shard)
        if sha256_file(path) != shard.sha256:
            raise ShardError(f"{path}: sha256 differs from {SHARD_INDEX}; the shard is corrupt, rewrite it")
        keys = {sample["__key__"] for sample in wds.tarfile_to_samples()(iter([{"url": path}]))}
        if len(keys) != shard.num_samples:
            raise ShardError(f"{path}: {len(keys)} samples, {SHARD_INDEX} says {shard.num_samples}")
        total += len(keys)
    return total


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m data_prep.shards", description=__doc__.splitlines()[0])
    parser.add_argument("ingest_dir", metavar="INGEST_DIR", help="a data_prep.ingest output (datalist.json, images/)")
    parser.add_argument("shards_dir", metavar="SHARDS_DIR", help="output folder (created; resumable)")
    parser.add_argument("--shard-size-mb", type=float, default=512, help="largest shard in MiB (default 512)")
    parser.add_argument("--workers", type=positive_int, default=1, help="shards written in parallel (default 1)")
    parser.add_argument("--overwrite", action="store_true", help="replace shards written from another input")
    parser.add_argument("--verify", action="store_true", help="afterwards, re-hash and count every shard")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    try:
        write_shards(args.ingest_dir, args.shards_dir, args.shard_size_mb, args.workers, args.overwrite)
        if args.verify:
            logger.info("verified %d samples against %s", verify_shards(args.shards_dir), SHARD_INDEX)
    except (ShardError, DatalistError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
