"""Command line: ``python -m ultradino_monai.data.splits {fass,jnu,holdout} DATALIST OUT_DIR [--seed N]``."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from ultradino_monai.data.datalist import DatalistError
from ultradino_monai.data.splits.fass import fass_splits
from ultradino_monai.data.splits.holdout import holdout_splits
from ultradino_monai.data.splits.jnu import jnu_splits
from ultradino_monai.utils.logs import setup_logging


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m ultradino_monai.data.splits {fass,jnu,holdout} DATALIST OUT_DIR [--seed N]``."""
    parser = argparse.ArgumentParser(
        prog="python -m ultradino_monai.data.splits",
        description="Write patient-grouped, seeded split files for a datalist.",
    )
    parser.add_argument("protocol", choices=("fass", "jnu", "holdout"))
    parser.add_argument("datalist", type=Path)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--jnu-val-includes-train-patients",
        action="store_true",
        help="JNU few-shot: put the training patients' unused frames into validation (the paper's literal "
        "wording; breaks patient grouping of train/val)",
    )
    args = parser.parse_args(argv)
    setup_logging()
    try:
        if args.protocol == "fass":
            paths = fass_splits(args.datalist, args.out_dir, args.seed)
        elif args.protocol == "jnu":
            paths = jnu_splits(
                args.datalist,
                args.out_dir,
                args.seed,
                val_includes_train_patients=args.jnu_val_includes_train_patients,
            )
        else:
            paths = holdout_splits(args.datalist, args.out_dir, args.seed)
    except DatalistError as error:
        parser.exit(2, f"error: {error}\n")
    print(f"wrote {len(paths)} files to {args.out_dir}")
    return 0
