"""Plan and preprocess with nnU-Net's own planner, then pin nnU-Net's folds to OUR split files.

``plan_and_preprocess`` runs the three steps of ``nnUNetv2_plan_and_preprocess -d ID -c 2d
--verify_dataset_integrity --clean`` through nnunetv2's Python API
(``nnunetv2.experiment_planning.plan_and_preprocess_api``: ``extract_fingerprints`` with the
integrity check, ``plan_experiments``, ``preprocess`` for the ``2d`` configuration only), then
writes ``nnUNet_preprocessed/DatasetXXX_NAME/splits_final.json``.

Why the split file matters (``docs/datasets.md`` §2.5): nnU-Net uses
``splits_final.json`` when it exists; without it, it makes its own seeded 5-fold split, and
for a fold index beyond the file's length it *silently* falls back to a random 80:20 split.
:func:`write_splits_final` therefore writes one fold per exported split file (fold k =
``split_files[k]``: one per seed for full data, one per draw for few-shot), and
:func:`verify_splits_final` (run again by every ``train`` call) asserts that

* the file has exactly one fold per split file, and the requested fold exists;
* fold k's ``train`` / ``val`` case-id sets equal the split file's ``training`` /
  ``validation`` sections, re-read from the split file itself (and its sha256 still
  matches the export);
* every train / val id is a preprocessed nnU-Net case and no test case is;
* the preprocessed data was planned from the current export (:data:`PLAN_STATE`, which
  records the export manifest's sha256: a later re-export must be planned again).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from nnunet_baselines.environment import check_nnunet_version, configure_environment
from nnunet_baselines.export import ExportError, load_manifest, split_case_ids
from ultradino_monai.utils.files import sha256_file, write_json_atomic

logger = logging.getLogger(__name__)

__all__ = [
    "CONFIGURATION",
    "PLAN_STATE",
    "SplitMismatchError",
    "planned_identifier",
    "plan_and_preprocess",
    "preprocessed_identifiers",
    "write_splits_final",
    "verify_splits_final",
]

#: 2D data: the planner makes only the 2d configuration (docs/datasets.md §2.4).
CONFIGURATION = "2d"
#: Written next to the plans: which plans identifier ``plan`` made from which export.
PLAN_STATE = "ultradino_plan.json"


class SplitMismatchError(ExportError):
    """nnU-Net's ``splits_final.json`` does not equal our split files."""


def _preprocessed_folder(dataset_folder: str) -> Path:
    return Path(os.environ["nnUNet_preprocessed"]) / dataset_folder


def _plans(dataset_folder: str, plans_identifier: str) -> dict[str, Any]:
    path = _preprocessed_folder(dataset_folder) / f"{plans_identifier}.json"
    if not path.is_file():
        raise ExportError(f"{path} not found; run `plan` first (or pass the plans identifier the planner wrote)")
    return json.loads(path.read_text())


def preprocessed_identifiers(dataset_folder: str, plans_identifier: str = "nnUNetPlans") -> set[str]:
    """Case ids nnU-Net preprocessed for the 2d configuration (what its trainer can load)."""
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

    plans = _plans(dataset_folder, plans_identifier)
    if CONFIGURATION not in plans.get("configurations", {}):
        raise ExportError(f"{plans_identifier}.json of {dataset_folder} has no '{CONFIGURATION}' configuration")
    data_folder = _preprocessed_folder(dataset_folder) / plans["configurations"][CONFIGURATION]["data_identifier"]
    if not data_folder.is_dir():
        raise ExportError(f"{data_folder} not found; preprocessing did not run")
    return set(infer_dataset_class(str(data_folder)).get_identifiers(str(data_folder)))


def _manifest_sha256(workdir: str | os.PathLike, dataset_id: int) -> str:
    from nnunet_baselines.export import MANIFEST_NAME

    dataset_dir, _ = load_manifest(workdir, dataset_id)
    return sha256_file(dataset_dir / MANIFEST_NAME)


def planned_identifier(workdir: str | os.PathLike, dataset_id: int) -> str:
    """The plans identifier ``plan`` wrote for the current export (fails if the export changed since)."""
    configure_environment(workdir)
    _, manifest = load_manifest(workdir, dataset_id)
    path = _preprocessed_folder(manifest["dataset_folder"]) / PLAN_STATE
    if not path.is_file():
        raise SplitMismatchError(f"{path} not found; run `plan` for dataset {dataset_id} first")
    state = json.loads(path.read_text())
    if state.get("manifest_sha256") != _manifest_sha256(workdir, dataset_id):
        raise SplitMismatchError(
            f"dataset {dataset_id} was exported again after `plan` (the export manifest changed); rerun `plan` so "
            "nnU-Net does not train on stale preprocessed data"
        )
    return str(state["plans_identifier"])


def write_splits_final(workdir: str | os.PathLike, dataset_id: int, plans_identifier: str = "nnUNetPlans") -> Path:
    """Write ``splits_final.json`` (one fold per exported split file) and verify it; returns its path."""
    configure_environment(workdir)
    dataset_dir, manifest = load_manifest(workdir, dataset_id)
    splits = [{"train": list(fold["train"]), "val": list(fold["val"])} for fold in manifest["folds"]]
    path = _preprocessed_folder(manifest["dataset_folder"]) / "splits_final.json"
    write_json_atomic(path, splits)
    for fold in range(len(splits)):
        verify_splits_final(workdir, dataset_id, fold, plans_identifier)
    logger.info("wrote %s: %d fold(s) = %s", path, len(splits), [Path(f["split_file"]).name for f in manifest["folds"]])
    return path


def verify_splits_final(
    workdir: str | os.PathLike, dataset_id: int, fold: int, plans_identifier: str = "nnUNetPlans"
) -> dict[str, Any]:
    """Assert nnU-Net's fold ``fold`` is exactly our split file's train / val (module docstring).

    Returns:
        the manifest's fold entry (split file, kind, dataset, ids).

    Raises:
        SplitMismatchError: with the first difference found.
    """
    configure_environment(workdir)
    _, manifest = load_manifest(workdir, dataset_id)
    planned = planned_identifier(workdir, dataset_id)
    if planned != plans_identifier:
        raise SplitMismatchError(f"asked for plans {plans_identifier!r} but `plan` made {planned!r} for this export")
    folds = manifest["folds"]
    if isinstance(fold, bool) or not isinstance(fold, int) or not 0 <= fold < len(folds):
        raise SplitMismatchError(
            f"fold {fold!r} does not exist: the export has {len(folds)} split file(s) (folds 0..{len(folds) - 1}); "
            "nnU-Net would silently train on a random 80:20 split"
        )
    path = _preprocessed_folder(manifest["dataset_folder"]) / "splits_final.json"
    if not path.is_file():
        raise SplitMismatchError(f"{path} not found; run `plan` first")
    splits = json.loads(path.read_text())
    if not isinstance(splits, list) or len(splits) != len(folds):
        raise SplitMismatchError(
            f"{path} has {len(splits) if isinstance(splits, list) else '?'} folds, "
            f"the export has {len(folds)} split files; rerun `plan`"
        )
    entry = folds[fold]
    split_file = Path(entry["split_file"])
    if not split_file.is_file():
        raise SplitMismatchError(f"split file of fold {fold} is gone: {split_file}")
    if sha256_file(split_file) != entry["split_sha256"]:
        raise SplitMismatchError(f"{split_file} changed since `export`; export and plan again")
    truth = split_case_ids(split_file)
    for ours, theirs in (("train", "train"), ("val", "val")):
        expected = set(truth[ours])
        found = set(splits[fold].get(theirs, []))
        if expected != found:
            raise SplitMismatchError(
                f"{path} fold {fold} '{theirs}' differs from {split_file.name}: "
                f"{len(found - expected)} extra (e.g. {sorted(found - expected)[:3]}), "
                f"{len(expected - found)} missing (e.g. {sorted(expected - found)[:3]})"
            )
    if set(truth["train"]) & set(truth["val"]):
        raise SplitMismatchError(f"{split_file}: training and validation share cases")
    identifiers = preprocessed_identifiers(manifest["dataset_folder"], plans_identifier)
    missing = (set(truth["train"]) | set(truth["val"])) - identifiers
    if missing:
        raise SplitMismatchError(
            f"fold {fold}: {len(missing)} train/val case(s) were not preprocessed, "
            f"e.g. {sorted(missing)[:3]}; rerun `plan`"
        )
    leaked = set(truth["test"]) & identifiers
    if leaked:
        raise SplitMismatchError(f"fold {fold}: test case(s) {sorted(leaked)[:3]} were preprocessed as training data")
    return entry


def plan_and_preprocess(
    workdir: str | os.PathLike,
    dataset_id: int,
    *,
    num_processes: int | None = None,
    planner: str = "ExperimentPlanner",
    gpu_memory_target_gb: float | None = None,
    verify_integrity: bool = True,
) -> str:
    """Fingerprint (+ integrity check), plan, preprocess ``2d``, write and verify ``splits_final.json``.

    Args:
        workdir: the harness work folder (see :func:`configure_environment`).
        dataset_id: the exported dataset id.
        num_processes: pool size for fingerprinting and preprocessing (default ``nnUNet_def_n_proc``).
        planner: nnU-Net planner class name, e.g. ``ExperimentPlanner`` (default plans
            ``nnUNetPlans``) or ``nnUNetPlannerResEncM`` (plans ``nnUNetResEncUNetMPlans``).
        gpu_memory_target_gb: planner's VRAM target (nnU-Net default when None).
        verify_integrity: run nnU-Net's ``verify_dataset_integrity`` first (labels, shapes, counts).

    Returns:
        the plans identifier to pass to training and inference.
    """
    check_nnunet_version()
    configure_environment(workdir)
    _, manifest = load_manifest(workdir, dataset_id)
    processes = int(num_processes or os.environ["nnUNet_def_n_proc"])
    if int(os.environ.get("nnUNet_n_proc_DA", "1")) < 1:
        # the planner calls torch.set_num_threads(nnUNet_n_proc_DA) (docs/datasets.md §2.8)
        os.environ["nnUNet_n_proc_DA"] = "1"
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (
        extract_fingerprints,
        plan_experiments,
        preprocess,
    )

    logger.info("fingerprinting %s (integrity check: %s)", manifest["dataset_folder"], verify_integrity)
    extract_fingerprints(
        [int(dataset_id)],
        num_processes=processes,
        check_dataset_integrity=verify_integrity,
        clean=True,
        verbose=False,
        show_progress_bar=False,
    )
    plans_identifier = plan_experiments([int(dataset_id)], planner, gpu_memory_target_in_gb=gpu_memory_target_gb)
    plans = _plans(manifest["dataset_folder"], plans_identifier)
    if CONFIGURATION not in plans.get("configurations", {}):
        raise ExportError(f"the planner made no '{CONFIGURATION}' configuration for {manifest['dataset_folder']}")
    preprocess(
        [int(dataset_id)],
        plans_identifier,
        configurations=(CONFIGURATION,),
        num_processes=[processes],
        verbose=False,
        show_progress_bar=False,
    )
    write_json_atomic(
        _preprocessed_folder(manifest["dataset_folder"]) / PLAN_STATE,
        {
            "plans_identifier": plans_identifier,
            "planner": planner,
            "manifest_sha256": _manifest_sha256(workdir, dataset_id),
            "pixels_sha256": manifest.get("pixels_sha256"),
        },
    )
    write_splits_final(workdir, dataset_id, plans_identifier)
    configuration = plans["configurations"][CONFIGURATION]
    logger.info(
        "planned %s with %s: patch %s, batch %s",
        manifest["dataset_folder"],
        plans_identifier,
        configuration.get("patch_size"),
        configuration.get("batch_size"),
    )
    return plans_identifier
