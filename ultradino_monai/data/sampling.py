"""Seeded, resumable sampling for iteration-based training.

DINOv2 trains for a fixed number of iterations per "epoch" over an endless stream of
samples (docs/recipe.md §2.3). :class:`InfiniteSeededSampler` produces that stream
reproducibly: each yielded item is ``(index, sample_seed)``, where ``index`` picks the
image and ``sample_seed`` drives every random choice made for that sample (crops,
flips, jitter). Both depend only on ``seed`` and the sample's position in the stream,
never on worker scheduling, so

* two runs with the same seed see identical samples, whatever ``num_workers`` is;
* a run resumed at iteration ``i`` continues the stream at position ``i * batch_size``;
* under DDP each rank reads a disjoint interleaved slice of the same global stream.

:class:`IterationSampler` is the simpler stream the segmentation fine-tuning uses (mmengine's
``InfiniteSampler``): plain indices, a fixed number per process and epoch.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler, Sampler

from ultradino_monai.utils.distributed import get_rank, get_world_size

_SEED_MIX = np.uint64(0x9E3779B97F4A7C15)


def mix_seed(*values: int) -> int:
    """Combine integers into one 63-bit seed (SplitMix64 finaliser, deterministic across platforms)."""
    state = np.uint64(0)
    with np.errstate(over="ignore"):
        for value in values:
            state = np.uint64(state ^ np.uint64(int(value) & 0xFFFFFFFFFFFFFFFF)) + _SEED_MIX
            z = state
            z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
            z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
            state = z ^ (z >> np.uint64(31))
    return int(state & np.uint64(0x7FFFFFFFFFFFFFFF))


class InfiniteSeededSampler(Sampler):
    """Endless stream of ``(index, sample_seed)`` pairs over ``num_samples`` items.

    Args:
        num_samples: size of the dataset.
        seed: base seed of the stream.
        shuffle: draw a fresh permutation for every pass over the data.
        rank: this process's rank; it reads global positions ``rank, rank + world_size, ...``.
        world_size: number of processes sharing the stream.
        start: number of samples this rank has already consumed (for resuming).
    """

    def __init__(
        self,
        num_samples: int,
        seed: int = 0,
        shuffle: bool = True,
        rank: int | None = None,
        world_size: int | None = None,
        start: int = 0,
    ) -> None:
        if num_samples <= 0:
            raise ValueError("InfiniteSeededSampler needs at least one sample; the datalist is empty")
        if rank is None or world_size is None:
            rank, world_size = get_rank(), get_world_size()
        self.num_samples = int(num_samples)
        self.seed = int(seed)
        self.shuffle = shuffle
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.start = int(start)

    def set_start(self, start: int) -> None:
        """Skip ahead so the next iterator starts after ``start`` samples of this rank."""
        self.start = int(start)

    def _permutation(self, data_pass: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.num_samples)
        return np.random.default_rng(mix_seed(self.seed, data_pass)).permutation(self.num_samples)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        local_position = self.start
        cached_pass, permutation = -1, None
        while True:
            position = local_position * self.world_size + self.rank
            data_pass, offset = divmod(position, self.num_samples)
            if data_pass != cached_pass:
                cached_pass, permutation = data_pass, self._permutation(data_pass)
            yield int(permutation[offset]), mix_seed(self.seed, 1, position)
            local_position += 1


def apply_seeded(transform, data: dict, sample_seed: int) -> dict:
    """Run a MONAI ``Randomizable`` transform on ``data`` with its random state reset from ``sample_seed``."""
    transform.set_random_state(seed=sample_seed % (2**32))
    return dict(transform(data))


class SeededTransformDataset(Dataset):
    """Apply a random transform with a per-sample seed from :class:`InfiniteSeededSampler`.

    ``base`` returns the deterministic part (e.g. a MONAI ``CacheDataset`` of loaded,
    single-channel [0,1] images); ``transform`` is a MONAI ``Randomizable`` whose random
    state is reset from the sample seed before each call. The sample seed is returned
    under ``"seed"`` so a collate function can derive batch-level randomness (masks) from it.
    """

    def __init__(self, base: Dataset, transform, seed_key: str = "seed") -> None:
        self.base = base
        self.transform = transform
        self.seed_key = seed_key

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, item: tuple[int, int]) -> dict:
        if not isinstance(item, tuple):
            raise TypeError("SeededTransformDataset expects (index, seed) pairs; use InfiniteSeededSampler")
        index, sample_seed = item
        output = apply_seeded(self.transform, self.base[index], sample_seed)
        output[self.seed_key] = sample_seed
        return output


class IterationSampler(DistributedSampler):
    """Random indices for a fixed number of samples per process, reshuffled every pass over the data.

    The iteration-based counterpart of mmengine's ``InfiniteSampler`` used by UltraDINO
    (docs/recipe.md §1.5): one endless stream of permutations of the dataset, seeded by ``seed + epoch``;
    process ``rank`` takes every ``num_replicas``-th index. With few images (few-shot n = 20
    at batch 64) one batch holds several passes, as in mmseg. A subclass of
    ``DistributedSampler`` so MONAI's workflow calls :meth:`set_epoch`.

    Args:
        dataset: anything with ``len``.
        samples_per_replica: indices yielded per process and epoch
            (iterations x per-process batch size).
        seed: base seed of the permutations.
        num_replicas, rank: default from ``torch.distributed`` (1 / 0 without it).
    """

    def __init__(
        self, dataset, samples_per_replica: int, seed: int = 0, num_replicas: int | None = None, rank: int | None = None
    ) -> None:
        world, this_rank = get_world_size(), get_rank()
        num_replicas = world if num_replicas is None else int(num_replicas)
        rank = this_rank if rank is None else int(rank)
        if len(dataset) == 0:
            raise ValueError("IterationSampler got an empty dataset")
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=int(seed), drop_last=False)
        self.samples_per_replica = int(samples_per_replica)
        if self.samples_per_replica < 1:
            raise ValueError(f"samples_per_replica must be >= 1, got {samples_per_replica}")

    def __iter__(self):
        size = len(self.dataset)
        total = self.samples_per_replica * self.num_replicas
        generator = torch.Generator()
        generator.manual_seed(self.seed + self.epoch)
        passes = math.ceil(total / size)
        stream = torch.cat([torch.randperm(size, generator=generator) for _ in range(passes)])[:total]
        return iter(stream[self.rank : total : self.num_replicas].tolist())

    def __len__(self) -> int:
        return self.samples_per_replica
