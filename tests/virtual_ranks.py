"""The single-process reference for the multi-node test: the global batch of two ranks, in one loader.

Rank ``r`` of a 2-rank shard run trains on batches of ``ShardStream(rank=r, world_size=2)`` collated
with the mask seed ``seed + r``. :func:`global_batch_loader` builds both ranks' batches the same
way and joins them into one batch of twice the size, in the view-major layout the trainer expects
(every sample's first global crop, then every sample's second ...). A one-process run on it sees
exactly the global batches of the 2-rank run, so its losses are the 2-rank run's mean losses.
"""

from __future__ import annotations

import torch

from ultradino_monai.data.shards import ShardStream
from ultradino_monai.engines.pretrain import SampleSeededMaskCollate


def _view_major_join(parts: list[torch.Tensor], n_views: int) -> torch.Tensor:
    return torch.cat([chunk for views in zip(*(part.chunk(n_views) for part in parts)) for chunk in views])


def join_rank_batches(batches: list[dict]) -> dict:
    """Join per-rank collated batches into the batch one process would get for all of them."""
    n_global, n_local = batches[0]["n_global_crops"], batches[0]["n_local_crops"]
    masks = _view_major_join([b["masks"] for b in batches], n_global)
    mask_indices = masks.flatten().nonzero().flatten()
    return {
        "global_crops": _view_major_join([b["global_crops"] for b in batches], n_global),
        "local_crops": _view_major_join([b["local_crops"] for b in batches], n_local),
        "masks": masks,
        "mask_indices": mask_indices,
        "masks_weight": (1.0 / masks.sum(dim=-1).clamp(min=1).float()).unsqueeze(-1).expand_as(masks)[masks],
        "n_masked_patches": torch.tensor([mask_indices.numel()], dtype=torch.long),
        "upperbound": sum(b["upperbound"] for b in batches),
        "n_global_crops": n_global,
        "n_local_crops": n_local,
        "keys": [key for b in batches for key in b["keys"]],
    }


class GlobalBatchLoader:
    """Endless iterable of the joined batches of ``world_size`` virtual ranks."""

    def __init__(
        self,
        source,
        preprocessing,
        multicrop,
        batch_size,
        n_tokens,
        seed,
        mask_ratio,
        mask_probability,
        world_size=2,
        shuffle_buffer=1000,
        **_,
    ):
        per_rank = int(batch_size) // world_size
        self.streams = [
            ShardStream(
                source,
                preprocessing,
                multicrop,
                batch_size=per_rank,
                seed=seed,
                shuffle_buffer=shuffle_buffer,
                rank=rank,
                world_size=world_size,
            )
            for rank in range(world_size)
        ]
        self.collates = [
            SampleSeededMaskCollate(
                n_tokens=n_tokens, mask_ratio=tuple(mask_ratio), mask_probability=mask_probability, seed=seed + rank
            )
            for rank in range(world_size)
        ]
        self.per_rank = per_rank

    def __iter__(self):
        iterators = [iter(stream) for stream in self.streams]
        while True:
            batches = [
                collate([next(iterator) for _ in range(self.per_rank)])
                for iterator, collate in zip(iterators, self.collates)
            ]
            yield join_rank_batches(batches)


def global_batch_loader(**kwargs) -> GlobalBatchLoader:
    return GlobalBatchLoader(**kwargs)
