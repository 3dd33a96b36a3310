"""``python -m nnunet_baselines {export,plan,train,predict,score,compare,run}`` (see README.md)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from ultradino_monai.utils.logs import setup_logging

logger = logging.getLogger(__name__)

__all__ = ["build_parser", "main"]


def _size(values: Sequence[int]) -> tuple[int, int]:
    if len(values) == 1:
        return int(values[0]), int(values[0])
    if len(values) == 2:
        return int(values[0]), int(values[1])
    raise argparse.ArgumentTypeError("--size takes one value (square) or two (H W)")


def _add_environment(parser: argparse.ArgumentParser, workdir_required: bool = True) -> None:
    parser.add_argument(
        "--workdir",
        type=Path,
        required=workdir_required,
        help="harness folder; nnUNet_raw / nnUNet_preprocessed / nnUNet_results go under it unless set",
    )
    parser.add_argument(
        "--processes",
        type=int,
        default=None,
        help="nnUNet_def_n_proc: pool size for planning, preprocessing and validation export",
    )
    parser.add_argument("--no-compile", action="store_true", help="nnUNet_compile=f (torch.compile off on CUDA)")


def _add_export(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("datalist", type=Path, help="the dataset's datalist.json")
    parser.add_argument(
        "--split-file",
        type=Path,
        nargs="+",
        action="extend",
        required=True,
        dest="split_files",
        help="split file(s); fold k = the k-th split file (repeatable)",
    )
    parser.add_argument(
        "--dataset-id", type=int, required=True, help="nnU-Net dataset id, e.g. 501 (FASS), 502 (JNU-IFM)"
    )
    parser.add_argument("--name", required=True, help="nnU-Net dataset name, e.g. FASS")
    parser.add_argument("--size", type=int, nargs="+", default=[224], help="network grid: S or H W (default 224)")
    parser.add_argument("--bit-depth", type=int, choices=(8, 16), default=8, help="PNG bit depth of the images")
    parser.add_argument(
        "--dataset-name", default=None, help="dataset name for result records when the split files name none"
    )


def _add_model(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--trainer",
        default="nnUNetTrainer",
        help="nnU-Net trainer class (default nnUNetTrainer, 1000 epochs); e.g. nnUNetTrainer_5epochs, "
        "nnUNetTrainer_UltraDINOShort, or nnUNetTrainer_UltraDINOBudget_<epochs>x<iterations>_b<batch> "
        "(nnU-Net's trainer on that budget: 8x25_b8 = 200 steps at batch 8)",
    )
    parser.add_argument("--plans", default=None, help="plans identifier (default: the one `plan` made)")


def _add_device(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device", default="auto", choices=("auto", "cuda", "cpu", "mps"), help="auto = cuda if available else cpu"
    )


def _add_prediction(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--checkpoint",
        default="auto",
        choices=("auto", "final", "best"),
        help="auto: the higher validation pooled Dice of checkpoint_best / checkpoint_final",
    )
    parser.add_argument("--disable-tta", action="store_true", help="no mirroring test-time augmentation")
    parser.add_argument(
        "--predict-processes",
        type=int,
        default=0,
        help="0: sequential prediction (no workers); N: nnU-Net's predict_from_files with N workers",
    )


def _add_training(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--continue",
        dest="continue_training",
        action="store_true",
        help="resume from nnU-Net's latest checkpoint (nnUNetv2_train --c)",
    )
    parser.add_argument(
        "--da-workers", type=int, default=None, help="nnUNet_n_proc_DA for training; 0 = single-threaded augmentation"
    )
    parser.add_argument("--seed", type=int, default=0, help="training seed recorded in results (best effort)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m nnunet_baselines",
        description="nnU-Net v2 baselines on the project's datalists, preprocessing, splits and metric.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)

    export = commands.add_parser("export", help="write nnUNet_raw/DatasetXXX_NAME from a datalist and split files")
    _add_export(export)
    _add_environment(export)

    plan = commands.add_parser("plan", help="plan + preprocess (2d) with integrity check; write splits_final.json")
    plan.add_argument("--dataset-id", type=int, required=True)
    plan.add_argument(
        "--planner",
        default="ExperimentPlanner",
        help="nnU-Net planner, e.g. ExperimentPlanner (nnUNetPlans) or nnUNetPlannerResEncM",
    )
    plan.add_argument("--gpu-memory-target", type=float, default=None, help="planner VRAM target in GB")
    plan.add_argument("--no-verify", action="store_true", help="skip nnU-Net's verify_dataset_integrity")
    _add_environment(plan)

    train = commands.add_parser("train", help="nnunetv2 run_training for one fold")
    train.add_argument("--dataset-id", type=int, required=True)
    train.add_argument("--fold", required=True, help="fold index, or the split file whose fold to train")
    _add_model(train)
    _add_device(train)
    _add_training(train)
    _add_environment(train)

    predict = commands.add_parser("predict", help="choose the checkpoint and predict a fold's test cases")
    predict.add_argument("--dataset-id", type=int, required=True)
    predict.add_argument("--fold", required=True, help="fold index, or the split file")
    _add_model(predict)
    _add_device(predict)
    _add_prediction(predict)
    _add_environment(predict)

    score = commands.add_parser(
        "score",
        help="pooled Dice of predictions + result record; either a trained fold (--workdir --dataset-id "
        "--fold) or any folder of CASE.png predictions (--pred-dir --split-file --size --out)",
    )
    score.add_argument("--dataset-id", type=int, default=None)
    score.add_argument("--fold", default=None, help="fold index, or the split file")
    score.add_argument("--pred-dir", type=Path, default=None, help="folder of CASE.png index maps")
    score.add_argument("--split-file", type=Path, default=None, help="split file naming the scored cases")
    score.add_argument("--section", default="test", choices=("test", "validation"))
    score.add_argument("--size", type=int, nargs="+", default=None, help="grid the predictions are on: S or H W")
    score.add_argument(
        "--epochs", type=int, default=1000, help="epoch budget of the predicting model (--pred-dir mode)"
    )
    score.add_argument("--model", type=Path, default=None, help="checkpoint that predicted (hashed; --pred-dir mode)")
    score.add_argument("--backbone", default="PlainConvUNet_2d", help="architecture name (--pred-dir mode)")
    score.add_argument(
        "--dataset-name",
        default=None,
        help="dataset name for the record when the split file names none (--pred-dir mode)",
    )
    score.add_argument("--seed", type=int, default=0)
    score.add_argument("--out", type=Path, default=None, help="result JSON path")
    _add_model(score)
    _add_environment(score, workdir_required=False)

    compare = commands.add_parser("compare", help="nnU-Net and foundation-model results in the Table 1 layout")
    compare.add_argument("result_dirs", type=Path, nargs="+", help="folders searched for result records")
    compare.add_argument("--out", type=Path, required=True, help="folder for comparison.md, table1.csv, groups.csv")

    run = commands.add_parser("run", help="export -> plan -> train -> predict -> score (-> compare) for split files")
    _add_export(run)
    run.add_argument("--folds", type=int, nargs="+", default=None, help="folds to run (default: all)")
    run.add_argument("--planner", default="ExperimentPlanner")
    run.add_argument(
        "--compare-with",
        type=Path,
        nargs="+",
        default=[],
        help="foundation-model result folders to tabulate next to nnU-Net",
    )
    _add_model(run)
    _add_device(run)
    _add_training(run)
    _add_prediction(run)
    _add_environment(run)
    return parser


def _fold_index(args, workdir: Path, dataset_id: int) -> int:
    from nnunet_baselines.export import load_manifest

    text = str(args.fold)
    if text.isdigit():
        return int(text)
    _, manifest = load_manifest(workdir, dataset_id)
    wanted = Path(text).resolve()
    for entry in manifest["folds"]:
        if Path(entry["split_file"]).resolve() == wanted:
            return int(entry["fold"])
    raise ValueError(
        f"{text} is neither a fold index nor one of the exported split files "
        f"{[entry['split_file'] for entry in manifest['folds']]}"
    )


def _plans_identifier(args, workdir: Path, dataset_id: int) -> str:
    if args.plans:
        return args.plans
    from nnunet_baselines.plan import planned_identifier

    return planned_identifier(workdir, dataset_id)


def _run(args) -> str:
    from nnunet_baselines.environment import configure_environment

    if args.command == "compare":
        from nnunet_baselines.compare import compare_results

        summary = compare_results(args.result_dirs, args.out)
        return summary["markdown"]

    workdir = args.workdir
    if workdir is not None:
        configure_environment(
            workdir, preprocessing_processes=args.processes, compile_network=False if args.no_compile else None
        )

    if args.command == "export":
        from nnunet_baselines.export import export_dataset

        path = export_dataset(
            args.datalist,
            args.split_files,
            args.dataset_id,
            args.name,
            workdir,
            size=_size(args.size),
            bit_depth=args.bit_depth,
            dataset=args.dataset_name,
        )
        return f"exported {path.parent} ({len(args.split_files)} fold(s)); manifest {path}"

    if args.command == "plan":
        from nnunet_baselines.plan import plan_and_preprocess

        identifier = plan_and_preprocess(
            workdir,
            args.dataset_id,
            planner=args.planner,
            gpu_memory_target_gb=args.gpu_memory_target,
            verify_integrity=not args.no_verify,
        )
        return f"planned dataset {args.dataset_id}: plans {identifier}, splits_final.json verified"

    if args.command == "train":
        from nnunet_baselines.runner import train_fold

        fold = _fold_index(args, workdir, args.dataset_id)
        summary = train_fold(
            workdir,
            args.dataset_id,
            fold,
            trainer=args.trainer,
            plans=_plans_identifier(args, workdir, args.dataset_id),
            device=args.device,
            continue_training=args.continue_training,
            augmentation_workers=args.da_workers,
            seed=args.seed,
        )
        return f"trained fold {fold}: {summary['epochs']} epochs of {summary['trainer']} in {summary['seconds']:.0f} s"

    if args.command == "predict":
        from nnunet_baselines.runner import predict_fold

        fold = _fold_index(args, workdir, args.dataset_id)
        result = predict_fold(
            workdir,
            args.dataset_id,
            fold,
            checkpoint=args.checkpoint,
            trainer=args.trainer,
            plans=_plans_identifier(args, workdir, args.dataset_id),
            device=args.device,
            tta=not args.disable_tta,
            num_processes=args.predict_processes,
        )
        return f"fold {fold}: {result['chosen']} checkpoint; test predictions in {result['test_predictions']}"

    if args.command == "score":
        return _score(args, workdir)

    if args.command == "run":
        return _run_all(args, workdir)
    raise ValueError(f"unknown command {args.command}")


def _score(args, workdir: Path | None) -> str:
    if args.pred_dir is not None:
        if args.split_file is None or args.size is None or args.out is None:
            raise ValueError("--pred-dir needs --split-file, --size and --out")
        from nnunet_baselines.score import build_record, score_folder
        from ultradino_monai.engines.segmentation import labels_of
        from ultradino_monai.evaluation.aggregate import write_result

        labels = labels_of(args.split_file)
        size = _size(args.size)
        dice = score_folder(args.pred_dir, args.split_file, args.section, size, len(labels))
        record = build_record(
            dice,
            labels,
            args.split_file,
            section=args.section,
            seed=args.seed,
            trainer=args.trainer,
            epochs=args.epochs,
            backbone=args.backbone,
            model=args.model,
            image_size=size,
            dataset=args.dataset_name,
        )
        write_result(args.out, record)
        return f"foreground pooled Dice {dice['foreground_mean']:.4f} on {dice['num_images']} images -> {args.out}"
    if workdir is None or args.dataset_id is None or args.fold is None:
        raise ValueError("score needs --workdir, --dataset-id and --fold (or --pred-dir mode)")
    from nnunet_baselines.runner import score_fold

    fold = _fold_index(args, workdir, args.dataset_id)
    path = score_fold(
        workdir,
        args.dataset_id,
        fold,
        trainer=args.trainer,
        plans=_plans_identifier(args, workdir, args.dataset_id),
        seed=args.seed,
        out=args.out,
    )
    metrics = json.loads(path.read_text())["metrics"]
    return f"fold {fold}: test foreground pooled Dice {metrics['foreground_dice']:.4f} -> {path}"


def _run_all(args, workdir: Path) -> str:
    from nnunet_baselines.compare import compare_results
    from nnunet_baselines.export import export_dataset
    from nnunet_baselines.plan import plan_and_preprocess
    from nnunet_baselines.runner import run_fold

    export_dataset(
        args.datalist,
        args.split_files,
        args.dataset_id,
        args.name,
        workdir,
        size=_size(args.size),
        bit_depth=args.bit_depth,
        dataset=args.dataset_name,
    )
    plans = plan_and_preprocess(workdir, args.dataset_id, planner=args.planner)
    if args.plans and args.plans != plans:
        raise ValueError(f"--plans {args.plans} but planner {args.planner} wrote {plans}; choose the planner instead")
    folds = args.folds if args.folds is not None else list(range(len(args.split_files)))
    lines = []
    for fold in folds:
        path = run_fold(
            workdir,
            args.dataset_id,
            fold,
            trainer=args.trainer,
            plans=plans,
            device=args.device,
            checkpoint=args.checkpoint,
            tta=not args.disable_tta,
            continue_training=args.continue_training,
            augmentation_workers=args.da_workers,
            predict_processes=args.predict_processes,
            seed=args.seed,
        )
        metrics = json.loads(path.read_text())["metrics"]
        lines.append(f"fold {fold}: test foreground pooled Dice {metrics['foreground_dice']:.4f} -> {path}")
    summary = compare_results([Path(workdir) / "results", *args.compare_with], Path(workdir) / "comparison")
    lines.append(f"comparison: {summary['paths']['markdown']}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(logging.DEBUG if args.verbose else logging.INFO)
    from nnunet_baselines.environment import NnUNetEnvironmentError
    from ultradino_monai.data.datalist import DatalistError

    try:
        message = _run(args)
    except (DatalistError, NnUNetEnvironmentError, FileNotFoundError, ValueError) as error:
        parser.exit(2, f"error: {error}\n")
    print(message)
    return 0


if __name__ == "__main__":
    sys.exit(main())
