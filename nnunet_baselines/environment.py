"""nnU-Net v2 environment: folders, worker counts, external trainers, device, version check.

nnunetv2 reads several environment variables *when its modules are imported*
(``nnunetv2.configuration.default_num_processes`` from ``nnUNet_def_n_proc`` and
``default_n_proc_DA`` from ``nnUNet_n_proc_DA``), others when they are used
(``nnUNet_raw`` / ``nnUNet_preprocessed`` / ``nnUNet_results``, ``nnUNet_extTrainer``,
``nnUNet_compile``). :func:`configure_environment` therefore has to run before any
``nnunetv2`` module is imported; every module of this package imports nnunetv2 lazily,
inside the functions that need it, after calling it.

Reference: ``docs/datasets.md`` §2.2 (variables), §2.8 (a
0-worker ``nnUNet_n_proc_DA`` crashes planning in ``torch.set_num_threads(0)``),
docs/datasets.md §2.9 (too many augmentation workers stall small machines).
"""

from __future__ import annotations

import logging
import os
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

__all__ = [
    "TESTED_NNUNET_VERSION",
    "MIN_NNUNET_VERSION",
    "TRAINER_DIR",
    "NnUNetEnvironmentError",
    "check_nnunet_version",
    "configure_environment",
    "select_device",
    "nnunet_paths",
]

#: The release this harness was written and tested against (docs/datasets.md §2.1: trainer
#: constructor signatures changed across releases, so the harness is pinned).
TESTED_NNUNET_VERSION = "2.8.1"
#: ``nnUNet_extTrainer`` (external trainer folders) exists from 2.8.0 on (docs/datasets.md §2.2).
MIN_NNUNET_VERSION = (2, 8, 0)
#: Folder searched by nnU-Net for this package's trainers (see :mod:`nnunet_baselines.trainers`).
TRAINER_DIR = Path(__file__).resolve().parent / "trainers"

_FOLDER_VARIABLES = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")


class NnUNetEnvironmentError(RuntimeError):
    """nnunetv2 is missing, too old, or the environment is inconsistent."""


def _version_tuple(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def check_nnunet_version() -> str:
    """Return the installed nnunetv2 version; raise if it is missing or older than 2.8.0.

    Other 2.8.x / later versions are accepted with a warning: the harness relies on
    ``run_training``, ``nnUNetPredictor``, ``splits_final.json`` and ``nnUNet_extTrainer``,
    whose behaviour it was checked against in 2.8.1.
    """
    try:
        version = metadata.version("nnunetv2")
    except metadata.PackageNotFoundError as error:
        raise NnUNetEnvironmentError(
            f"nnunetv2 is not installed; install it with `pip install nnunetv2=={TESTED_NNUNET_VERSION}`"
        ) from error
    if _version_tuple(version) < MIN_NNUNET_VERSION:
        raise NnUNetEnvironmentError(
            f"nnunetv2 {version} is too old: external trainers (nnUNet_extTrainer) need >= 2.8.0; "
            f"install nnunetv2=={TESTED_NNUNET_VERSION}"
        )
    if version != TESTED_NNUNET_VERSION:
        logger.warning("nnunetv2 %s found; this harness was tested with %s", version, TESTED_NNUNET_VERSION)
    return version


def nnunet_paths() -> dict[str, Path]:
    """The three nnU-Net folders from the environment (after :func:`configure_environment`)."""
    missing = [name for name in _FOLDER_VARIABLES if not os.environ.get(name)]
    if missing:
        raise NnUNetEnvironmentError(f"{missing} not set; call configure_environment(workdir) first")
    return {name: Path(os.environ[name]) for name in _FOLDER_VARIABLES}


def configure_environment(
    workdir: str | os.PathLike,
    *,
    preprocessing_processes: int | None = None,
    augmentation_workers: int | None = None,
    compile_network: bool | None = None,
) -> dict[str, Any]:
    """Set nnU-Net's environment variables for a run under ``workdir``.

    * ``nnUNet_raw`` / ``nnUNet_preprocessed`` / ``nnUNet_results`` become
      ``workdir/nnUNet_raw`` etc. unless they are already set (then they are kept, and
      logged, so a user's global nnU-Net folders are honoured).
    * ``nnUNet_extTrainer``: :data:`TRAINER_DIR` is prepended (kept once), so nnU-Net
      finds ``nnUNetTrainer_UltraDINOShort`` by name at training *and* inference time.
    * ``nnUNet_def_n_proc`` (pool size for planning, preprocessing, validation export)
      and ``nnUNet_n_proc_DA`` (augmentation workers per GPU): the explicit arguments
      win; otherwise an existing value is kept; otherwise ``min(8, cpus)`` and
      ``max(1, min(12, cpus - 1))`` (nnU-Net's own defaults are 8 and a host table
      defaulting to 12, capped at the CPU count). ``augmentation_workers=0`` selects
      nnU-Net's single-threaded augmenter (no worker processes); it is only applied
      around training by :func:`nnunet_baselines.runner.train_fold`, because planning
      calls ``torch.set_num_threads(nnUNet_n_proc_DA)`` and 0 crashes it (docs/datasets.md §2.8).
    * ``nnUNet_compile``: ``False`` sets ``f`` (torch.compile off; worth it for short GPU
      runs, docs/datasets.md §2.9), ``True`` sets ``t``; ``None`` leaves nnU-Net's default (on for CUDA,
      always off on CPU / MPS).

    Returns:
        the values now in effect (for logging / provenance).

    Raises:
        NnUNetEnvironmentError: an nnunetv2 module that reads these variables at import
            time is already imported with *different* worker settings.
    """
    workdir = Path(workdir).resolve()
    for name in _FOLDER_VARIABLES:
        if os.environ.get(name):
            if Path(os.environ[name]).resolve() != (workdir / name):
                logger.info("%s is already set to %s; keeping it", name, os.environ[name])
        else:
            os.environ[name] = str(workdir / name)
        Path(os.environ[name]).mkdir(parents=True, exist_ok=True)

    existing = [p for p in os.environ.get("nnUNet_extTrainer", "").split(os.pathsep) if p.strip()]
    trainer_dir = str(TRAINER_DIR)
    os.environ["nnUNet_extTrainer"] = os.pathsep.join([trainer_dir] + [p for p in existing if p != trainer_dir])

    cpus = os.cpu_count() or 1
    if preprocessing_processes is not None:
        if preprocessing_processes < 1:
            raise ValueError(f"preprocessing_processes must be >= 1, got {preprocessing_processes}")
        os.environ["nnUNet_def_n_proc"] = str(int(preprocessing_processes))
    else:
        os.environ.setdefault("nnUNet_def_n_proc", str(min(8, cpus)))
    if augmentation_workers is not None and augmentation_workers < 0:
        raise ValueError(f"augmentation_workers must be >= 0, got {augmentation_workers}")
    if augmentation_workers:
        os.environ["nnUNet_n_proc_DA"] = str(int(augmentation_workers))
    else:
        os.environ.setdefault("nnUNet_n_proc_DA", str(max(1, min(12, cpus - 1))))
    if compile_network is not None:
        os.environ["nnUNet_compile"] = "t" if compile_network else "f"

    configuration = sys.modules.get("nnunetv2.configuration")
    if configuration is not None:
        imported = int(getattr(configuration, "default_num_processes", -1))
        if imported != int(os.environ["nnUNet_def_n_proc"]):
            raise NnUNetEnvironmentError(
                f"nnunetv2.configuration was imported with nnUNet_def_n_proc={imported} before the harness set "
                f"{os.environ['nnUNet_def_n_proc']}; configure the environment before importing nnunetv2 "
                "(run each pipeline in its own process, e.g. through `python -m nnunet_baselines`)"
            )
    settings = {
        name: os.environ.get(name)
        for name in (*_FOLDER_VARIABLES, "nnUNet_extTrainer", "nnUNet_def_n_proc", "nnUNet_n_proc_DA", "nnUNet_compile")
    }
    logger.debug("nnU-Net environment: %s", settings)
    return settings


def select_device(device: str = "auto"):
    """``"auto"``: CUDA when available, else CPU; or an explicit ``"cuda"`` / ``"cpu"`` / ``"mps"``.

    Returns:
        a ``torch.device``. Asking for ``"cuda"`` without a GPU raises.
    """
    import torch

    name = str(device).lower()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name not in ("cuda", "cpu", "mps"):
        raise ValueError(
            f"device must be auto, cuda, cpu or mps (nnU-Net picks the GPU via CUDA_VISIBLE_DEVICES); got {device!r}"
        )
    if name == "cuda" and not torch.cuda.is_available():
        raise NnUNetEnvironmentError("device 'cuda' requested but torch sees no CUDA device")
    return torch.device(name)
