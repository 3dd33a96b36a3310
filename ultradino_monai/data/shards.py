"""Pretraining frames as webdataset tar shards: the index, and the seeded per-rank stream.

A shard folder (written by ``python -m data_prep.shards``) holds ``shard-000000.tar`` ...
in the `webdataset <https://github.com/webdataset/webdataset>`_ layout (one sample = the
tar members ``KEY.png`` and ``KEY.json`` that share a key) and ``index.json``, which lists
every shard with its sample count, byte size and sha256. The index is written last, so its
presence marks a finished folder (:func:`is_shard_dir`).

:class:`ShardStream` reads such a folder as an endless stream, the shard-mode counterpart of
:class:`~ultradino_monai.data.sampling.InfiniteSeededSampler` (docs/streaming.md). With ``R`` ranks
and ``W`` DataLoader workers there are ``R * W`` readers; reader ``q = rank * W + worker``. For every data pass ``p``:

1. the full shard list is permuted with ``mix_seed(seed, p)``, identically on every rank;
2. reader ``q`` takes shards ``q, q + R*W, q + 2*R*W, ...`` of that permutation;
3. their samples go through a shuffle buffer seeded by ``(seed, p, q)``, emptied at the
   end of the pass.

So every frame is read exactly once per data pass, by exactly one reader. Each sample gets
the seed ``mix_seed(seed, 2, q, n)`` from its position ``n`` in the reader's output, which
drives its crops and masks. Everything depends only on ``seed``, the world size and the
worker count, so a run resumed at iteration ``i`` (:meth:`ShardStream.set_start_iteration`)
continues bit-identically with the same topology: no sample is repeated or skipped.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import webdataset as wds
from torch.utils.data import IterableDataset, get_worker_info

from ultradino_monai.data.datalist import DatalistError
from ultradino_monai.data.sampling import apply_seeded, mix_seed
from ultradino_monai.utils.distributed import get_rank, get_world_size

logger = logging.getLogger(__name__)

SHARD_INDEX = "index.json"
SHARD_FORMAT = "ultradino-webdataset/1"
SHARD_PATTERN = "shard-%06d.tar"


class ShardIndexError(DatalistError):
    """A shard folder is missing its index, or the index does not match the shards on disk."""


@dataclass(frozen=True)
class ShardInfo:
    """One tar shard: file name (relative to the folder), samples, bytes, sha256."""

    name: str
    num_samples: int
    num_bytes: int
    sha256: str


@dataclass(frozen=True)
class ShardIndex:
    """A finished shard folder: its ``root`` and the shards in write order."""

    root: Path
    shards: tuple[ShardInfo, ...]
    section: str

    @property
    def num_samples(self) -> int:
        return sum(shard.num_samples for shard in self.shards)

    def path(self, shard: ShardInfo) -> str:
        return str(self.root / shard.name)


def sample_key(image_path: str) -> str:
    """The webdataset key of a frame: its datalist image path without the extension.

    webdataset splits a member name at the first dot of its last path part, so the key's
    last part must hold no dot; folders may.
    """
    path = PurePosixPath(image_path)
    stem = path.name.split(".", 1)[0]
    if not stem:
        raise ValueError(f"cannot make a shard key from {image_path!r}")
    return str(path.parent / stem) if str(path.parent) != "." else stem


def is_shard_dir(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a finished shard folder (it holds ``index.json``)."""
    return (Path(path) / SHARD_INDEX).is_file()


def read_shard_index(root: str | os.PathLike, check_files: bool = True) -> ShardIndex:
    """Read and check ``root/index.json``.

    With ``check_files``, every listed shard must exist with the listed byte size (a cheap
    check; the sha256 sums are for ``python -m data_prep.shards --verify``).
    """
    root = Path(root)
    index_path = root / SHARD_INDEX
    if not index_path.is_file():
        raise ShardIndexError(f"{index_path} not found: write the shards with python -m data_prep.shards")
    try:
        document = json.loads(index_path.read_text())
    except json.JSONDecodeError as error:
        raise ShardIndexError(f"{index_path}: not valid JSON ({error})") from error
    if not isinstance(document, dict) or document.get("format") != SHARD_FORMAT:
        raise ShardIndexError(f"{index_path}: not a shard index of format {SHARD_FORMAT!r}")
    shards = []
    for position, entry in enumerate(document.get("shards", [])):
        try:
            shard = ShardInfo(str(entry["name"]), int(entry["num_samples"]), int(entry["bytes"]), str(entry["sha256"]))
        except (KeyError, TypeError, ValueError) as error:
            raise ShardIndexError(f"{index_path}: shards[{position}] is malformed ({error})") from error
        if check_files:
            size = (root / shard.name).stat().st_size if (root / shard.name).is_file() else None
            if size != shard.num_bytes:
                found = "missing" if size is None else f"{size} bytes"
                raise ShardIndexError(
                    f"{root / shard.name}: {found}, the index says {shard.num_bytes} bytes; rewrite the shards"
                )
        shards.append(shard)
    if not shards or not any(shard.num_samples for shard in shards):
        raise ShardIndexError(f"{index_path}: lists no samples")
    return ShardIndex(root=root, shards=tuple(shards), section=str(document.get("section", "training")))


def reader_shards(index: ShardIndex, seed: int, data_pass: int, reader: int, num_readers: int) -> list[ShardInfo]:
    """The shards reader ``reader`` of ``num_readers`` reads in pass ``data_pass`` (same on every rank)."""
    order = np.random.default_rng(mix_seed(seed, data_pass)).permutation(len(index.shards))
    return [index.shards[i] for i in order[reader::num_readers]]


def _decode_sample(sample: dict[str, Any]) -> dict[str, Any]:
    """A raw webdataset sample -> ``{**datalist record, "image": PNG bytes, "image_path", "key"}``."""
    record = json.loads(sample["json"]) if "json" in sample else {}
    if "png" not in sample:
        raise ShardIndexError(f"{sample.get('__url__')}: sample {sample.get('__key__')!r} has no png member")
    return {**record, "image": sample["png"], "image_path": record.get("image"), "key": sample["__key__"]}


class ShardStream(IterableDataset):
    """Endless, seeded, resumable stream of preprocessed pretraining samples from a shard folder.

    Args:
        index: a :class:`ShardIndex` or a shard folder.
        preprocessing: deterministic MONAI transform; receives ``{"image": PNG bytes, ...}``
            (:class:`~ultradino_monai.transforms.ultrasound.LoadUltrasoundImaged` decodes bytes).
        random_transform: ``Randomizable`` transform reseeded per sample (the multi-crop).
        batch_size: images per batch of this rank; the DataLoader batches inside each worker,
            so resuming skips ``batch_size`` samples per batch a worker already delivered.
        seed: seed of the shard order, the shuffle buffers and the per-sample seeds.
        shuffle_buffer: samples held per reader for shuffling within a pass (1 = no shuffle).
        rank, world_size: default from ``torch.distributed`` / the ``RANK`` environment.

    Yields dicts with the transform outputs plus ``"seed"`` (the sample seed) and ``"key"``.
    """

    def __init__(
        self,
        index: ShardIndex | str | os.PathLike,
        preprocessing=None,
        random_transform=None,
        batch_size: int = 1,
        seed: int = 0,
        shuffle_buffer: int = 1000,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        self.index = index if isinstance(index, ShardIndex) else read_shard_index(index)
        self.preprocessing = preprocessing
        self.random_transform = random_transform
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.shuffle_buffer = int(shuffle_buffer)
        if self.batch_size < 1 or self.shuffle_buffer < 1:
            raise ValueError(f"batch_size and shuffle_buffer must be >= 1, got {batch_size}, {shuffle_buffer}")
        if rank is None or world_size is None:
            rank, world_size = get_rank(), get_world_size()
        self.rank, self.world_size = int(rank), int(world_size)
        self.start_iteration = 0

    def set_start_iteration(self, iteration: int) -> None:
        """Continue after ``iteration`` batches of this rank (call before creating the loader iterator)."""
        self.start_iteration = int(iteration)

    def check_readers(self, num_workers: int) -> None:
        """Every reader needs a shard in every pass: ``shards >= ranks x workers``."""
        readers = self.world_size * max(1, int(num_workers))
        if len(self.index.shards) < readers:
            raise ShardIndexError(
                f"{self.index.root}: {len(self.index.shards)} shards for {self.world_size} rank(s) x "
                f"{max(1, int(num_workers))} worker(s); each reader needs a shard. Write more, smaller shards "
                "(python -m data_prep.shards --shard-size-mb) or use fewer workers"
            )

    def _reader(self) -> tuple[int, int, int]:
        """(reader id, number of readers, batches this reader delivered before ``start_iteration``)."""
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        # The DataLoader takes batches from its workers round-robin, starting with worker 0: of the
        # first k batches, worker w made ceil((k - w) / W). A loader resumed after k batches starts
        # again at worker 0, so worker w takes over the stream of worker (w + k) mod W.
        role = (worker + self.start_iteration) % workers
        delivered = max(0, math.ceil((self.start_iteration - role) / workers))
        return self.rank * workers + role, self.world_size * workers, delivered

    def raw_samples(self, reader: int, num_readers: int, skip: int = 0) -> Iterator[tuple[int, dict[str, Any]]]:
        """``(position, undecoded sample)`` of one reader, endlessly, starting after ``skip`` samples."""
        position = 0
        for data_pass in itertools.count():
            shards = reader_shards(self.index, self.seed, data_pass, reader, num_readers)
            in_pass = sum(shard.num_samples for shard in shards)
            if in_pass == 0:
                raise ShardIndexError(f"{self.index.root}: reader {reader} of {num_readers} got no sample")
            if position + in_pass <= skip:  # a whole pass delivered before the checkpoint: no need to read it
                position += in_pass
                continue
            urls = iter([{"url": self.index.path(shard)} for shard in shards])
            stream = wds.tarfile_to_samples()(urls)
            rng = random.Random(mix_seed(self.seed, 3, data_pass, reader))
            if self.shuffle_buffer > 1:
                stream = wds.shuffle(bufsize=self.shuffle_buffer, initial=self.shuffle_buffer, rng=rng)(stream)
            for sample in stream:
                if position >= skip:
                    yield position, sample
                position += 1

    def __iter__(self) -> Iterator[dict[str, Any]]:
        reader, num_readers, delivered = self._reader()
        for position, raw in self.raw_samples(reader, num_readers, skip=delivered * self.batch_size):
            data = _decode_sample(raw)
            if self.preprocessing is not None:
                try:
                    data = self.preprocessing(data)
                except (ValueError, OSError) as error:
                    raise ShardIndexError(f"{raw.get('__url__')}: sample {raw.get('__key__')!r}: {error}") from error
            sample_seed = mix_seed(self.seed, 2, reader, position)
            if self.random_transform is not None:
                data = apply_seeded(self.random_transform, data, sample_seed)
            yield {**data, "seed": sample_seed}
