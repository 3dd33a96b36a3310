"""Builders the pretrain bundle's configs call: models, data, export.

Each function does one thing so ``bundles/pretrain/configs/train.json`` reads like the recipe.
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import CacheDataset, DataLoader, Dataset
from torch import nn

from ultradino_monai.data.datalist import load_datalist, read_datalist
from ultradino_monai.data.sampling import InfiniteSeededSampler, SeededTransformDataset
from ultradino_monai.engines.config_values import as_bool, optional_path, require_dataset_dir
from ultradino_monai.engines.handlers import latest_checkpoint
from ultradino_monai.networks.checkpoints import save_backbone
from ultradino_monai.networks.dino_model import DinoModel
from ultradino_monai.ssl import MultiCropMaskCollate
from ultradino_monai.ssl.masking import collate_multicrop_with_masks
from ultradino_monai.utils.distributed import get_world_size, is_distributed, is_main_process, unwrap_model
from ultradino_monai.utils.errors import MissingInputError

logger = logging.getLogger(__name__)

__all__ = [
    "SampleSeededMaskCollate",
    "as_bool",
    "optional_path",
    "assert_replicas_identical",
    "configure_run",
    "load_checkpoint",
    "epoch_length_for",
    "per_device_batch_size",
    "pretraining_datalist",
    "report_outputs",
    "export_teacher_backbone",
    "labelled_loader",
    "latest_checkpoint",
    "make_teacher",
    "pretrain_dataloader",
]


def make_teacher(student: DinoModel) -> DinoModel:
    """The teacher starts as an exact copy of the student, frozen and in eval mode (docs/recipe.md §2.2)."""
    teacher = copy.deepcopy(unwrap_model(student))
    teacher.eval()
    for parameter in teacher.parameters():
        parameter.requires_grad_(False)
    return teacher


class SampleSeededMaskCollate(MultiCropMaskCollate):
    """:class:`MultiCropMaskCollate` whose masks are seeded by the samples' own seeds.

    The samples come from :class:`~ultradino_monai.data.sampling.SeededTransformDataset`, so
    each carries the seed of its stream position. Drawing the masks from those seeds makes
    them independent of the worker count and lets a resumed run redraw exactly the masks of
    an uninterrupted one.
    """

    def __call__(self, samples):
        seeds = [int(sample["seed"]) for sample in samples]
        return collate_multicrop_with_masks(
            samples,
            mask_ratio_tuple=self.mask_ratio,
            mask_probability=self.mask_probability,
            n_tokens=self.n_tokens,
            mask_generator=self.mask_generator,
            generator=np.random.default_rng([self.seed, *seeds]),
        )


def pretrain_dataloader(
    datalist: str | os.PathLike,
    preprocessing,
    multicrop,
    batch_size: int,
    n_tokens: int,
    seed: int = 0,
    num_workers: int = 0,
    cache_rate: float = 0.0,
    mask_ratio: Sequence[float] = (0.1, 0.5),
    mask_probability: float = 0.5,
    section: str = "training",
) -> DataLoader:
    """Endless multi-crop loader over the ``section`` images of a datalist.

    Args:
        datalist: a datalist JSON (e.g. the ``datalist.json`` written by ``data_prep.ingest``).
        preprocessing: deterministic MONAI transform (load, single channel, [0,1]).
        multicrop: a ``Randomizable`` multi-crop transform (``global_0``, ``local_0``...).
        batch_size: images per process and iteration.
        n_tokens: patch tokens per global crop (for the iBOT masks).
        seed: seed of the sample stream, the crops and the masks.
        num_workers: data-loading processes (results do not depend on it).
        cache_rate: fraction of the preprocessed images kept in memory (1.0 for small data).
        mask_ratio, mask_probability: iBOT masking (docs/recipe.md §2.5).
    """
    items = load_datalist(datalist, section)
    if not items:
        raise ValueError(f"{datalist}: section {section!r} is empty; nothing to pretrain on")
    if cache_rate > 0:
        base = CacheDataset(items, transform=preprocessing, cache_rate=cache_rate, num_workers=None, progress=False)
    else:
        base = Dataset(items, transform=preprocessing)
    dataset = SeededTransformDataset(base, multicrop)
    sampler = InfiniteSeededSampler(len(items), seed=seed)
    rank_seed = seed + sampler.rank
    collate = SampleSeededMaskCollate(
        n_tokens=n_tokens, mask_ratio=tuple(mask_ratio), mask_probability=mask_probability, seed=rank_seed
    )
    logger.info("pretraining on %d images from %s (batch %d per process)", len(items), datalist, batch_size)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate,
        drop_last=True,
        persistent_workers=num_workers > 0,
    )


def labelled_loader(
    datalist: str | os.PathLike,
    section: str | Sequence[str],
    preprocessing,
    batch_size: int = 64,
) -> DataLoader:
    """Deterministic loader of one or more labelled datalist sections (kNN monitoring, linear probes)."""
    sections = [section] if isinstance(section, str) else list(section)
    items = [item for name in sections for item in load_datalist(datalist, name)]
    if not items:
        raise ValueError(f"{datalist}: section(s) {sections} are empty")
    return DataLoader(Dataset(items, transform=preprocessing), batch_size=batch_size, shuffle=False, num_workers=0)


def num_classes_of(datalist: str | os.PathLike) -> int:
    """Number of classes of a classification datalist (its top-level ``classes`` list)."""
    classes = read_datalist(datalist).get("classes")
    if not classes:
        raise ValueError(f"{datalist}: no top-level 'classes' list; kNN monitoring needs a labelled datalist")
    return len(classes)


def export_teacher_backbone(
    teacher: DinoModel,
    path: str | os.PathLike,
    mean: Sequence[float],
    std: Sequence[float],
    extra_info: dict | None = None,
) -> str:
    """Write the teacher backbone per docs/design.md contract 4 (``backbone.pt`` + ``backbone.json``), rank 0 only."""
    if is_main_process():
        save_backbone(teacher.backbone, path, extra_info=extra_info, mean=list(mean), std=list(std))
        logger.info("exported the teacher backbone to %s", path)
    return str(path)


def configure_run(seed: int = 0, deterministic: bool | str = False) -> None:
    """Seed everything; with ``deterministic`` also force deterministic kernels (bit-identical CPU runs)."""
    from monai.utils import set_determinism

    deterministic = as_bool(deterministic)
    set_determinism(seed=int(seed), use_deterministic_algorithms=deterministic)
    if deterministic:
        # cuBLAS needs this for deterministic matmuls on GPU; harmless on CPU
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    logger.info("seed %d, deterministic algorithms %s", seed, "on" if deterministic else "off")


def pretraining_datalist(dataset_dir: str | os.PathLike) -> str:
    """Return ``dataset_dir/datalist.json``, which must exist.

    A real archive is ingested beforehand with ``python -m data_prep.ingest``; the bundle
    config makes and ingests the demo archive first (``data_prep.demo``) when ``dataset_dir``
    is the demo default. A missing datalist is an error that says so.
    """
    datalist = Path(require_dataset_dir(dataset_dir)) / "datalist.json"
    if not datalist.is_file():
        raise MissingInputError(
            f"{datalist} not found. Ingest the DICOM archive first: "
            f"python -m data_prep.ingest ARCHIVE {dataset_dir} --secret-file KEYFILE"
        )
    return str(datalist)


def load_checkpoint(path: str | os.PathLike, objects: dict[str, Any], device: torch.device | str = "cpu") -> None:
    """Load the named entries of a training checkpoint into ``objects`` (strict)."""
    from ignite.handlers import Checkpoint

    checkpoint = torch.load(path, map_location=device, weights_only=False)
    Checkpoint.load_objects(to_load=objects, checkpoint=checkpoint)
    logger.info("loaded %s from %s", ", ".join(objects), path)


def report_outputs(output_dir: str | os.PathLike, export_path: str | os.PathLike) -> None:
    """Tell the user where the run wrote its outputs (rank 0)."""
    if is_main_process():
        logger.info(
            "outputs: checkpoints, TensorBoard logs and metrics.jsonl in %s; teacher backbone in %s (+ %s)",
            output_dir,
            export_path,
            Path(export_path).with_suffix(".json"),
        )


def per_device_batch_size(global_batch_size: int, world_size: int) -> int:
    """Images per process: the configured batch is the *global* batch over all processes."""
    global_batch_size, world_size = int(global_batch_size), int(world_size)
    if global_batch_size % world_size:
        raise ValueError(
            f"global_batch_size {global_batch_size} is not divisible by the {world_size} processes; "
            "choose a multiple of the number of GPUs"
        )
    return global_batch_size // world_size


def epoch_length_for(datalist: str | os.PathLike, global_batch_size: int, section: str = "training") -> int:
    """Iterations in one pass over the datalist at the global batch size (the paper's "epoch")."""
    items = read_datalist(datalist).get(section, [])
    if not items:
        raise ValueError(f"{datalist}: section {section!r} is empty")
    return max(1, len(items) // int(global_batch_size))


def assert_replicas_identical(module: nn.Module) -> None:
    """Under DDP, check that every rank holds bit-identical parameters (e.g. the EMA teacher).

    The teacher is not wrapped by DDP; it stays identical on all ranks only because every
    rank applies the same EMA to the same (synchronised) student. This check catches a
    divergence, e.g. from a rank-dependent update, before a checkpoint is trusted.
    """
    if not is_distributed():
        return
    flat = torch.cat([p.detach().float().reshape(-1).cpu() for p in module.parameters()])
    gathered = [torch.empty_like(flat) for _ in range(get_world_size())]
    torch.distributed.all_gather(gathered, flat)
    differing = [rank for rank, other in enumerate(gathered) if not torch.equal(other, gathered[0])]
    if differing:
        raise RuntimeError(f"parameters differ between rank 0 and rank(s) {differing}")
    logger.info("%d parameters identical on all %d ranks", flat.numel(), len(gathered))
