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
from ultradino_monai.data.shards import ShardStream, is_shard_dir, read_shard_index
from ultradino_monai.engines.config_values import as_bool, optional_path, require_dataset_dir
from ultradino_monai.engines.handlers import latest_checkpoint
from ultradino_monai.networks.checkpoints import save_backbone
from ultradino_monai.networks.dino_model import DinoModel
from ultradino_monai.ssl import MultiCropMaskCollate
from ultradino_monai.ssl.masking import collate_multicrop_with_masks
from ultradino_monai.utils.distributed import (
    close_process_group,
    get_rank,
    get_world_size,
    is_distributed,
    is_main_process,
    unwrap_model,
)
from ultradino_monai.utils.errors import MissingInputError

logger = logging.getLogger(__name__)

_BOOL_WORDS = ("1", "0", "true", "false", "yes", "no", "on", "off", "none", "")

__all__ = [
    "SampleSeededMaskCollate",
    "as_bool",
    "optional_path",
    "assert_replicas_identical",
    "close_process_group",
    "compile_backbones",
    "configure_run",
    "load_checkpoint",
    "epoch_length_for",
    "per_device_batch_size",
    "pretraining_source",
    "source_datalist",
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
        batch = collate_multicrop_with_masks(
            samples,
            mask_ratio_tuple=self.mask_ratio,
            mask_probability=self.mask_probability,
            n_tokens=self.n_tokens,
            mask_generator=self.mask_generator,
            generator=np.random.default_rng([self.seed, *seeds]),
        )
        if all("key" in sample for sample in samples):  # shard mode: which frames made this batch
            batch["keys"] = [sample["key"] for sample in samples]
        return batch


def pretrain_dataloader(
    source: str | os.PathLike,
    preprocessing,
    multicrop,
    batch_size: int,
    n_tokens: int,
    seed: int = 0,
    num_workers: int = 0,
    cache_rate: float = 0.0,
    mask_ratio: Sequence[float] = (0.1, 0.5),
    mask_probability: float = 0.5,
    shuffle_buffer: int = 1000,
    pin_memory: bool = False,
    prefetch_factor: int | None = None,
    section: str = "training",
) -> DataLoader:
    """Endless multi-crop loader over a shard folder or the ``section`` images of a datalist.

    Args:
        source: from :func:`pretraining_source`: a shard folder (``python -m data_prep.shards``,
            read as a :class:`~ultradino_monai.data.shards.ShardStream`) or a datalist JSON (e.g.
            the ``datalist.json`` written by ``data_prep.ingest``, read through an
            :class:`~ultradino_monai.data.sampling.InfiniteSeededSampler`).
        preprocessing: deterministic MONAI transform (load, single channel, [0,1]).
        multicrop: a ``Randomizable`` multi-crop transform (``global_0``, ``local_0``...).
        batch_size: images per process and iteration.
        n_tokens: patch tokens per global crop (for the iBOT masks).
        seed: seed of the sample stream, the crops and the masks.
        num_workers: data-loading processes. Datalist mode: results do not depend on it; shard
            mode: they do (each worker reads its own shards), so resume with the same count.
        cache_rate: datalist mode: fraction of the preprocessed images kept in memory (1.0 for small data).
        mask_ratio, mask_probability: iBOT masking (docs/recipe.md §2.5).
        shuffle_buffer: shard mode: samples per reader in the shuffle buffer.
        pin_memory, prefetch_factor: passed to the DataLoader (pinned memory speeds up copies to a GPU).
    """
    collate_seed = seed + get_rank()
    collate = SampleSeededMaskCollate(
        n_tokens=n_tokens, mask_ratio=tuple(mask_ratio), mask_probability=mask_probability, seed=collate_seed
    )
    loader_options = {
        "batch_size": batch_size,
        "num_workers": num_workers,
        "collate_fn": collate,
        "drop_last": True,
        # No persistent workers: the stream is endless, so one iterator serves the whole run and they would add
        # nothing, while together with pinned memory they stall the process's exit by 5 s per worker at
        # interpreter shutdown (pytorch/pytorch#81794; about 70 s with 14 workers on an H200, docs/streaming.md).
        "pin_memory": as_bool(pin_memory),
        "prefetch_factor": prefetch_factor if num_workers > 0 else None,
    }
    if is_shard_dir(source):
        stream = ShardStream(
            source, preprocessing, multicrop, batch_size=batch_size, seed=seed, shuffle_buffer=shuffle_buffer
        )
        stream.check_readers(num_workers)
        logger.info(
            "pretraining on %d images in %d shards of %s (batch %d per process)",
            stream.index.num_samples,
            len(stream.index.shards),
            source,
            batch_size,
        )
        return DataLoader(stream, **loader_options)
    # the run's first step (check_run_inputs) already checked every entry and file; no second stat per file
    items = load_datalist(source, section, check_files=False)
    if not items:
        raise ValueError(f"{source}: section {section!r} is empty; nothing to pretrain on")
    if cache_rate > 0:
        base = CacheDataset(items, transform=preprocessing, cache_rate=cache_rate, num_workers=None, progress=False)
    else:
        base = Dataset(items, transform=preprocessing)
    sampler = InfiniteSeededSampler(len(items), seed=seed)
    logger.info("pretraining on %d images from %s (batch %d per process)", len(items), source, batch_size)
    return DataLoader(SeededTransformDataset(base, multicrop), sampler=sampler, **loader_options)


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


def pretraining_source(dataset_dir: str | os.PathLike) -> str:
    """What to pretrain on: ``dataset_dir`` itself when it is a shard folder, else ``dataset_dir/datalist.json``.

    A shard folder (``index.json``) comes from ``python -m data_prep.shards``, a datalist from
    ``python -m data_prep.ingest``; the bundle config makes the demo archive, ingests and shards
    it first when ``dataset_dir`` is the demo default. Anything else is an error that says what to run.
    """
    dataset_dir = Path(require_dataset_dir(dataset_dir))
    if is_shard_dir(dataset_dir):
        return str(dataset_dir)
    datalist = dataset_dir / "datalist.json"
    if not datalist.is_file():
        raise MissingInputError(
            f"{dataset_dir} holds neither index.json (shards) nor datalist.json. Ingest the DICOM archive first: "
            f"python -m data_prep.ingest ARCHIVE INGEST_DIR --secret-file KEYFILE, then optionally "
            f"python -m data_prep.shards INGEST_DIR {dataset_dir}"
        )
    return str(datalist)


def source_datalist(source: str | os.PathLike) -> str | None:
    """The datalist to check before a run: ``source`` in datalist mode; ``None`` for a shard folder.

    A shard folder is checked here instead: its index must list shards that exist with their sizes
    (:func:`~ultradino_monai.data.shards.read_shard_index`; the shard writer checked every frame).
    """
    if is_shard_dir(source):
        read_shard_index(source)
        return None
    return str(source)


def compile_backbones(models: Sequence[DinoModel], enabled: bool | str = False) -> None:
    """``torch.compile`` the backbones of the student and teacher in place (``nn.Module.compile``).

    In place, so parameter names, checkpoints and the teacher's EMA update are unchanged. Only
    the backbones: their input shapes are fixed (global and local crops), while the head sees
    a different number of masked patch tokens every iteration. ``enabled`` may also name a
    ``torch.compile`` backend (e.g. ``"aot_eager"``); ``true`` uses the default, inductor.
    """
    backend = "inductor"
    if isinstance(enabled, str) and enabled.strip().lower() not in _BOOL_WORDS:
        backend = enabled.strip()
    elif not as_bool(enabled):
        return
    for model in models:
        unwrap_model(model).backbone.compile(backend=backend)
    logger.info("compiled the backbones of %d models (torch.compile, backend %s)", len(models), backend)


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


def epoch_length_for(source: str | os.PathLike, global_batch_size: int, section: str = "training") -> int:
    """Iterations in one pass over the frames at the global batch size (the paper's "epoch").

    ``source`` is a shard folder (its index counts the frames) or a datalist.
    """
    if is_shard_dir(source):
        count = read_shard_index(source, check_files=False).num_samples
    else:
        count = len(read_datalist(source).get(section, []))
    if not count:
        raise ValueError(f"{source}: section {section!r} is empty")
    return max(1, count // int(global_batch_size))


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
