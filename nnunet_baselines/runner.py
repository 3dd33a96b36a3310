"""Train, predict, choose the checkpoint and score one fold through nnunetv2's own API.

* :func:`train_fold`: ``nnunetv2.run.run_training.run_training`` (the function behind
  ``nnUNetv2_train``): nnU-Net's trainer, its data loading and augmentation, its EMA
  pseudo-Dice ``checkpoint_best.pth``, ``checkpoint_final.pth`` and its final validation.
  Before it starts, :func:`nnunet_baselines.plan.verify_splits_final` re-checks that fold k
  is our split file k.
* :func:`predict_cases`: ``nnUNetPredictor.initialize_from_trained_model_folder`` +
  ``predict_from_files_sequential`` (no worker processes; default) or ``predict_from_files``
  (``num_processes > 0``). Mirroring test-time augmentation is on by default, as in
  ``nnUNetv2_predict``; ``tta=False`` turns it off (the foundation-model evaluator uses none,
  ``docs/datasets.md`` §2.9: TTA on for the reported metric, or off on both sides).
* :func:`select_checkpoint`: the checkpoint rule.

Checkpoint rule. The foundation-model bundles keep the weights with the highest validation
foreground pooled Dice (``CheckpointSaver`` on ``val_fg_dice``). nnU-Net's
``checkpoint_best.pth`` is chosen differently: at the end of every epoch it computes a
*pseudo* Dice (TP / FP / FN pooled over the ``num_val_iterations_per_epoch`` random
validation *patches* of that epoch, mean over foreground classes), smooths it with an
exponential moving average (``ema = 0.9 * ema + 0.1 * value``) and saves when the EMA
improves. That is a pooled foreground Dice like ours, but on sampled patches and smoothed
over epochs. ``checkpoint="auto"`` (default) closes the gap as far as nnU-Net's outputs
allow: both ``checkpoint_best.pth`` and ``checkpoint_final.pth`` predict every validation case
of the fold, the project's pooled Dice scores them, and the higher foreground mean wins
(ties and NaN go to ``checkpoint_final``, nnU-Net's default). It chooses between these two
candidates only; the bundles pick among all their periodic validations.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nnunet_baselines.environment import check_nnunet_version, configure_environment, select_device
from nnunet_baselines.export import FILE_ENDING, ExportError, load_manifest
from nnunet_baselines.plan import CONFIGURATION, _plans, verify_splits_final
from nnunet_baselines.score import DEFAULT_TRAINER, build_record, score_folder
from ultradino_monai.utils.files import write_json_atomic

logger = logging.getLogger(__name__)

__all__ = [
    "CHECKPOINTS",
    "CHECKPOINT_RULES",
    "model_folder",
    "output_folders",
    "train_fold",
    "predict_cases",
    "select_checkpoint",
    "predict_fold",
    "score_fold",
    "run_fold",
]

CHECKPOINTS = {"final": "checkpoint_final.pth", "best": "checkpoint_best.pth"}
CHECKPOINT_RULES = ("auto", "final", "best")


def model_folder(dataset_folder: str, trainer: str, plans: str) -> Path:
    """``nnUNet_results/DatasetXXX_NAME/<trainer>__<plans>__2d`` (nnU-Net's layout)."""
    return Path(os.environ["nnUNet_results"]) / dataset_folder / f"{trainer}__{plans}__{CONFIGURATION}"


def output_folders(
    workdir: str | os.PathLike, dataset_folder: str, trainer: str, plans: str, fold: int
) -> dict[str, Path]:
    """This harness's own outputs for a fold: ``predictions`` and ``results`` under ``workdir``."""
    tag = f"{trainer}__{plans}__{CONFIGURATION}"
    workdir = Path(workdir).resolve()
    return {
        "predictions": workdir / "predictions" / dataset_folder / tag / f"fold_{fold}",
        "result": workdir / "results" / dataset_folder / tag / f"fold_{fold}" / "result_test.json",
    }


def _load_checkpoint_info(path: Path) -> dict[str, Any]:
    import torch

    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    logging_state = checkpoint.get("logging", {}) or {}
    ema = logging_state.get("ema_fg_dice") or []
    return {
        "path": str(path),
        "trainer": checkpoint.get("trainer_name"),
        # nnU-Net stores the number of completed epochs (current_epoch + 1 at save time)
        "epochs": int(checkpoint["current_epoch"]),
        "nnunet_best_ema_pseudo_dice": None if checkpoint.get("_best_ema") is None else float(checkpoint["_best_ema"]),
        "nnunet_last_ema_pseudo_dice": float(ema[-1]) if ema else None,
    }


def train_fold(
    workdir: str | os.PathLike,
    dataset_id: int,
    fold: int,
    *,
    trainer: str = DEFAULT_TRAINER,
    plans: str = "nnUNetPlans",
    device: str = "auto",
    continue_training: bool = False,
    augmentation_workers: int | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Train fold ``fold`` (= the export's split file ``fold``) with nnU-Net's ``run_training``.

    Args:
        workdir, dataset_id: the exported and planned dataset.
        fold: 0-based index into the split files given to ``export``.
        trainer: nnU-Net trainer class name: ``nnUNetTrainer`` (1000 epochs, the paper's
            baseline), nnU-Net's own ``nnUNetTrainer_{1,5,10,20,50,100,250,500,...}epochs``, or
            this package's ``nnUNetTrainer_UltraDINOShort`` (found via ``nnUNet_extTrainer``).
        plans: plans identifier returned by ``plan``.
        device: ``auto`` (CUDA if available, else CPU), ``cuda``, ``cpu`` or ``mps``.
        continue_training: nnU-Net's ``--c`` (resume from the latest checkpoint).
        augmentation_workers: ``nnUNet_n_proc_DA`` for this training only; 0 = nnU-Net's
            single-threaded augmenter (no worker processes; small machines and tests).
        seed: seeds Python / NumPy / torch before nnU-Net starts. nnU-Net's multi-process
            augmentation is not deterministic, so this is best effort; it is recorded.

    Returns:
        the training summary also written to ``<model folder>/fold_k/ultradino_train.json``.
    """
    import torch

    version = check_nnunet_version()
    configure_environment(workdir)
    _, manifest = load_manifest(workdir, dataset_id)
    fold_entry = verify_splits_final(workdir, dataset_id, fold, plans)
    torch_device = select_device(device)
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    recursive_find_trainer_class_by_name(trainer)  # fail before any work on a misspelled trainer
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch_device.type == "cuda":
        # as nnUNetv2_train: intra-op threads do not help when the GPU does the work
        torch.set_num_threads(1)
    previous_workers = os.environ.get("nnUNet_n_proc_DA")
    if augmentation_workers is not None:
        if augmentation_workers < 0:
            raise ValueError(f"augmentation_workers must be >= 0, got {augmentation_workers}")
        os.environ["nnUNet_n_proc_DA"] = str(int(augmentation_workers))
    from nnunetv2.run.run_training import run_training

    logger.info(
        "training %s fold %d (%s) with %s on %s",
        manifest["dataset_folder"],
        fold,
        Path(fold_entry["split_file"]).name,
        trainer,
        torch_device,
    )
    started = time.perf_counter()
    try:
        run_training(
            str(int(dataset_id)),
            CONFIGURATION,
            int(fold),
            trainer_class_name=trainer,
            plans_identifier=plans,
            continue_training=continue_training,
            device=torch_device,
        )
    finally:
        if augmentation_workers is not None:
            if previous_workers is None:
                os.environ.pop("nnUNet_n_proc_DA", None)
            else:
                os.environ["nnUNet_n_proc_DA"] = previous_workers
    seconds = time.perf_counter() - started
    fold_dir = model_folder(manifest["dataset_folder"], trainer, plans) / f"fold_{fold}"
    final = fold_dir / CHECKPOINTS["final"]
    if not final.is_file():
        raise RuntimeError(f"nnU-Net finished without writing {final}")
    final_info = _load_checkpoint_info(final)
    summary = {
        "dataset_folder": manifest["dataset_folder"],
        "fold": int(fold),
        "split_file": fold_entry["split_file"],
        "split_kind": fold_entry["kind"],
        "trainer": trainer,
        "plans": plans,
        "configuration": CONFIGURATION,
        "device": str(torch_device),
        "seed": int(seed),
        "deterministic": False,
        "epochs": final_info["epochs"],
        "seconds": round(seconds, 3),
        "continue_training": bool(continue_training),
        "nnunetv2_version": version,
        "nnunet_last_ema_pseudo_dice": final_info["nnunet_last_ema_pseudo_dice"],
        "nnunet_best_ema_pseudo_dice": final_info["nnunet_best_ema_pseudo_dice"],
    }
    write_json_atomic(fold_dir / "ultradino_train.json", summary)
    logger.info("trained %s fold %d: %d epochs in %.1f s", manifest["dataset_folder"], fold, summary["epochs"], seconds)
    return summary


def predict_cases(
    workdir: str | os.PathLike,
    dataset_id: int,
    fold: int,
    case_ids: Sequence[str],
    image_folder: str,
    out_dir: str | os.PathLike,
    *,
    trainer: str = DEFAULT_TRAINER,
    plans: str = "nnUNetPlans",
    checkpoint_name: str = CHECKPOINTS["final"],
    device: str = "auto",
    tta: bool = True,
    num_processes: int = 0,
) -> Path:
    """Predict exported cases with ``nnUNetPredictor``; writes ``out_dir/CASE.png`` (index maps).

    Args:
        case_ids: ids of cases in ``nnUNet_raw/<dataset>/<image_folder>`` (``CASE_0000.png``).
        image_folder: ``imagesTs`` (test) or ``imagesTr`` (validation cases).
        checkpoint_name: ``checkpoint_final.pth`` or ``checkpoint_best.pth``.
        tta: mirroring test-time augmentation (nnU-Net's default: on).
        num_processes: 0 = ``predict_from_files_sequential`` (no worker processes); otherwise
            ``predict_from_files`` with that many preprocessing and export workers.
    """
    configure_environment(workdir)
    dataset_dir, manifest = load_manifest(workdir, dataset_id)
    torch_device = select_device(device)
    folder = model_folder(manifest["dataset_folder"], trainer, plans)
    if not (folder / f"fold_{fold}" / checkpoint_name).is_file():
        raise FileNotFoundError(f"{folder / f'fold_{fold}' / checkpoint_name} not found; train fold {fold} first")
    if not case_ids:
        raise ExportError("no cases to predict")
    inputs = []
    for identifier in case_ids:
        path = dataset_dir / image_folder / f"{identifier}_0000{FILE_ENDING}"
        if not path.is_file():
            raise FileNotFoundError(f"exported image missing: {path}")
        inputs.append([str(path)])
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob(f"*{FILE_ENDING}"):
        stale.unlink()
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    predictor = nnUNetPredictor(
        tile_step_size=0.5,
        use_gaussian=True,
        use_mirroring=bool(tta),
        perform_everything_on_device=torch_device.type == "cuda",
        device=torch_device,
        verbose=False,
        verbose_preprocessing=False,
        allow_tqdm=False,
    )
    predictor.initialize_from_trained_model_folder(str(folder), use_folds=(int(fold),), checkpoint_name=checkpoint_name)
    outputs = [str(out_dir / identifier) for identifier in case_ids]
    if num_processes and num_processes > 0:
        predictor.predict_from_files(
            inputs,
            outputs,
            save_probabilities=False,
            overwrite=True,
            num_processes_preprocessing=int(num_processes),
            num_processes_segmentation_export=int(num_processes),
        )
    else:
        predictor.predict_from_files_sequential(inputs, outputs, save_probabilities=False, overwrite=True)
    missing = [i for i in case_ids if not (out_dir / f"{i}{FILE_ENDING}").is_file()]
    if missing:
        raise RuntimeError(f"nnUNetPredictor wrote no prediction for {len(missing)} case(s), e.g. {missing[:3]}")
    logger.info(
        "predicted %d cases with %s (%s) into %s", len(case_ids), checkpoint_name, "TTA" if tta else "no TTA", out_dir
    )
    return out_dir


def _better(candidate: float | None, incumbent: float | None) -> bool:
    if candidate is None or math.isnan(candidate):
        return False
    return incumbent is None or math.isnan(incumbent) or candidate > incumbent


def select_checkpoint(
    workdir: str | os.PathLike,
    dataset_id: int,
    fold: int,
    *,
    rule: str = "auto",
    trainer: str = DEFAULT_TRAINER,
    plans: str = "nnUNetPlans",
    device: str = "auto",
    tta: bool = True,
    num_processes: int = 0,
) -> dict[str, Any]:
    """Apply the checkpoint rule (module docstring); writes ``<predictions>/checkpoint_selection.json``.

    Args:
        rule: ``auto`` (our val pooled Dice decides between best and final), ``final`` or ``best``.

    Returns:
        ``{"rule", "chosen", "checkpoint", "candidates": {name: {..., "val_foreground_dice", ...}}}``.
    """
    if rule not in CHECKPOINT_RULES:
        raise ValueError(f"checkpoint rule must be one of {CHECKPOINT_RULES}, got {rule!r}")
    configure_environment(workdir)
    _, manifest = load_manifest(workdir, dataset_id)
    entry = verify_splits_final(workdir, dataset_id, fold, plans)
    folder = model_folder(manifest["dataset_folder"], trainer, plans) / f"fold_{fold}"
    outputs = output_folders(workdir, manifest["dataset_folder"], trainer, plans, fold)
    available = {name: folder / file for name, file in CHECKPOINTS.items() if (folder / file).is_file()}
    if "final" not in available:
        raise FileNotFoundError(f"{folder / CHECKPOINTS['final']} not found; train fold {fold} first")
    if rule == "best" and "best" not in available:
        raise FileNotFoundError(f"{folder / CHECKPOINTS['best']} not found (checkpointing disabled?)")
    candidates: dict[str, dict[str, Any]] = {}
    names = list(available) if rule == "auto" else [rule]
    labels = manifest["labels"]
    for name in names:
        info = _load_checkpoint_info(available[name])
        if rule == "auto":
            prediction_dir = predict_cases(
                workdir,
                dataset_id,
                fold,
                entry["val"],
                "imagesTr",
                outputs["predictions"] / f"val_{name}",
                trainer=trainer,
                plans=plans,
                checkpoint_name=CHECKPOINTS[name],
                device=device,
                tta=tta,
                num_processes=num_processes,
            )
            dice = score_folder(prediction_dir, entry["split_file"], "validation", manifest["image_size"], len(labels))
            info.update(
                {
                    "val_foreground_dice": dice["foreground_mean"],
                    "val_dice_per_class": dict(zip(sorted(labels, key=labels.get), dice["per_class"])),
                    "val_num_images": dice["num_images"],
                }
            )
        candidates[name] = info
    if rule == "auto":
        chosen = "final"
        if "best" in candidates and _better(
            candidates["best"]["val_foreground_dice"], candidates["final"]["val_foreground_dice"]
        ):
            chosen = "best"
    else:
        chosen = rule
    selection = {
        "rule": rule,
        "description": (
            "highest validation foreground pooled Dice (project metric) among nnU-Net's "
            "checkpoint_best.pth and checkpoint_final.pth; ties -> final"
        )
        if rule == "auto"
        else f"fixed: {CHECKPOINTS[rule]}",
        "chosen": chosen,
        "checkpoint": str(available[chosen]),
        "tta": bool(tta),
        "candidates": candidates,
    }
    write_json_atomic(outputs["predictions"] / "checkpoint_selection.json", selection)
    logger.info("fold %d checkpoint: %s (%s)", fold, CHECKPOINTS[chosen], selection["description"])
    return selection


def predict_fold(
    workdir: str | os.PathLike,
    dataset_id: int,
    fold: int,
    *,
    checkpoint: str = "auto",
    trainer: str = DEFAULT_TRAINER,
    plans: str = "nnUNetPlans",
    device: str = "auto",
    tta: bool = True,
    num_processes: int = 0,
) -> dict[str, Any]:
    """Choose the checkpoint, then predict the fold's test cases into ``<predictions>/test``.

    Returns:
        the selection dict plus ``test_predictions`` (folder).
    """
    configure_environment(workdir)
    _, manifest = load_manifest(workdir, dataset_id)
    entry = verify_splits_final(workdir, dataset_id, fold, plans)
    if not entry["test"]:
        raise ExportError(f"{entry['split_file']}: no test cases to predict")
    selection = select_checkpoint(
        workdir,
        dataset_id,
        fold,
        rule=checkpoint,
        trainer=trainer,
        plans=plans,
        device=device,
        tta=tta,
        num_processes=num_processes,
    )
    outputs = output_folders(workdir, manifest["dataset_folder"], trainer, plans, fold)
    test_dir = predict_cases(
        workdir,
        dataset_id,
        fold,
        entry["test"],
        "imagesTs",
        outputs["predictions"] / "test",
        trainer=trainer,
        plans=plans,
        checkpoint_name=CHECKPOINTS[selection["chosen"]],
        device=device,
        tta=tta,
        num_processes=num_processes,
    )
    return {**selection, "test_predictions": str(test_dir)}


def _backbone_name(dataset_folder: str, plans: str) -> str:
    """``<network class>_2d`` from the plans, e.g. ``PlainConvUNet_2d`` / ``ResidualEncoderUNet_2d``."""
    configuration = _plans(dataset_folder, plans)["configurations"][CONFIGURATION]
    architecture = configuration.get("architecture", {}).get("network_class_name", "nnUNet")
    return f"{architecture.rsplit('.', 1)[-1]}_{CONFIGURATION}"


def score_fold(
    workdir: str | os.PathLike,
    dataset_id: int,
    fold: int,
    *,
    trainer: str = DEFAULT_TRAINER,
    plans: str = "nnUNetPlans",
    seed: int = 0,
    out: str | os.PathLike | None = None,
) -> Path:
    """Score ``<predictions>/test`` with the project's pooled Dice and write the result record.

    Returns:
        the record's path (default ``workdir/results/<dataset>/<trainer>__<plans>__2d/fold_k/result_test.json``).
    """
    from ultradino_monai.evaluation.aggregate import write_result

    configure_environment(workdir)
    _, manifest = load_manifest(workdir, dataset_id)
    entry = verify_splits_final(workdir, dataset_id, fold, plans)
    outputs = output_folders(workdir, manifest["dataset_folder"], trainer, plans, fold)
    selection_path = outputs["predictions"] / "checkpoint_selection.json"
    if not selection_path.is_file():
        raise FileNotFoundError(f"{selection_path} not found; run `predict` for fold {fold} first")
    selection = json.loads(selection_path.read_text())
    train_path = model_folder(manifest["dataset_folder"], trainer, plans) / f"fold_{fold}" / "ultradino_train.json"
    training = json.loads(train_path.read_text()) if train_path.is_file() else {}
    chosen = selection["candidates"][selection["chosen"]]
    final_epochs = (
        selection["candidates"].get("final")
        or _load_checkpoint_info(
            model_folder(manifest["dataset_folder"], trainer, plans) / f"fold_{fold}" / CHECKPOINTS["final"]
        )
    )["epochs"]
    labels = manifest["labels"]
    dice = score_folder(
        outputs["predictions"] / "test", entry["split_file"], "test", manifest["image_size"], len(labels)
    )
    record = build_record(
        dice,
        labels,
        entry["split_file"],
        section="test",
        seed=int(training.get("seed", seed)),
        trainer=trainer,
        epochs=final_epochs,
        backbone=_backbone_name(manifest["dataset_folder"], plans),
        model=selection["checkpoint"],
        image_size=manifest["image_size"],
        dataset=entry["dataset"],
        extra={
            "best_validation": {
                "checkpoint": selection["chosen"],
                "foreground_dice": chosen.get("val_foreground_dice"),
                "epoch": chosen["epochs"],
            },
            "nnunet": {
                "trainer": trainer,
                "plans": plans,
                "configuration": CONFIGURATION,
                "fold": int(fold),
                "epochs": final_epochs,
                "checkpoint": CHECKPOINTS[selection["chosen"]],
                "checkpoint_rule": selection["rule"],
                "checkpoint_candidates": selection["candidates"],
                "tta": selection["tta"],
                "dataset_folder": manifest["dataset_folder"],
                "bit_depth": manifest["bit_depth"],
                "training": training,
            },
        },
    )
    path = Path(out) if out is not None else outputs["result"]
    write_result(path, record)
    logger.info("fold %d: test foreground pooled Dice %.4f -> %s", fold, dice["foreground_mean"], path)
    return path


def run_fold(
    workdir: str | os.PathLike,
    dataset_id: int,
    fold: int,
    *,
    trainer: str = DEFAULT_TRAINER,
    plans: str = "nnUNetPlans",
    device: str = "auto",
    checkpoint: str = "auto",
    tta: bool = True,
    continue_training: bool = False,
    augmentation_workers: int | None = None,
    predict_processes: int = 0,
    seed: int = 0,
) -> Path:
    """train -> choose checkpoint + predict test -> score, for one fold; returns the result record path."""
    train_fold(
        workdir,
        dataset_id,
        fold,
        trainer=trainer,
        plans=plans,
        device=device,
        continue_training=continue_training,
        augmentation_workers=augmentation_workers,
        seed=seed,
    )
    predict_fold(
        workdir,
        dataset_id,
        fold,
        checkpoint=checkpoint,
        trainer=trainer,
        plans=plans,
        device=device,
        tta=tta,
        num_processes=predict_processes,
    )
    return score_fold(workdir, dataset_id, fold, trainer=trainer, plans=plans, seed=seed)
