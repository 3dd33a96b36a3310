"""What an experiment needs before its cells run: demo data, split files, and every task's split files resolving."""

from __future__ import annotations

import os
from pathlib import Path

from ultradino_monai.experiments.spec import REPO_ROOT, ExperimentSpec, SpecError

__all__ = ["make_demo_data", "prepare_datasets", "check_dataset_datalist"]


def check_dataset_datalist(name: str, datalist: str | os.PathLike) -> None:
    """Check every section of a dataset's datalist (:func:`~ultradino_monai.data.validate.check_datalist`, the
    bundles' check) before any split file is written or cell is run; a problem is a :class:`SpecError`."""
    from ultradino_monai.data.datalist import DatalistError, read_datalist
    from ultradino_monai.data.validate import check_datalist

    try:
        document = read_datalist(datalist)
        sections = [s for s in ("training", "validation", "test") if isinstance(document.get(s), list)]
        check_datalist(datalist, sections, "auto", allow_empty=True)
    except DatalistError as error:
        raise SpecError(f"datasets.{name}.datalist: {error}") from error


def make_demo_data(demo_dir: str | os.PathLike) -> None:
    """Run ``python -m data_prep.demo DEMO_DIR`` (locked, seed 0, skipped when complete) in a subprocess.

    The runner drives the data-preparation wing through its command line, as it drives the
    bundles and nnU-Net: the library never imports ``data_prep``. The command's JSON summary
    goes to the log; a failure raises :class:`SpecError` with the end of its output.
    """
    import logging
    import subprocess
    import sys

    command = [sys.executable, "-m", "data_prep.demo", str(Path(demo_dir).resolve())]
    completed = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        tail = "\n".join((completed.stdout + completed.stderr).splitlines()[-25:])
        raise SpecError(f"{' '.join(command)} failed (exit code {completed.returncode}):\n{tail}")
    logging.getLogger(__name__).debug("demo data: %s", completed.stdout)


def prepare_datasets(spec: ExperimentSpec) -> None:
    """Generate missing demo data, (re)write the split files of datasets with a ``splits`` entry, and check that every
    task's split files resolve."""
    import logging

    log = logging.getLogger(__name__)
    for dataset in spec.datasets.values():
        if dataset.demo_dir is not None and not dataset.datalist.is_file():
            log.info("generating the demo data in %s", dataset.demo_dir)
            make_demo_data(dataset.demo_dir)
        if not dataset.datalist.is_file():
            raise SpecError(f"datasets.{dataset.name}.datalist: file not found: {dataset.datalist}")
        check_dataset_datalist(dataset.name, dataset.datalist)
        if dataset.splits is not None:
            # Split files are a pure function of (datalist, protocol, seed, options) and byte-identical
            # when nothing changed, so they are rewritten on every run: never stale after a datalist change.
            from ultradino_monai.data import splits as split_module

            function = {
                "fass": split_module.fass_splits,
                "jnu": split_module.jnu_splits,
                "holdout": split_module.holdout_splits,
            }[dataset.splits["protocol"]]
            log.info(
                "writing %s split files for %s to %s",
                dataset.splits["protocol"],
                dataset.name,
                dataset.splits["out_dir"],
            )
            try:
                function(
                    dataset.datalist, dataset.splits["out_dir"], dataset.splits["seed"], **dataset.splits["options"]
                )
            except TypeError as error:
                raise SpecError(f"datasets.{dataset.name}.splits.options: {error}") from error
    for task in spec.tasks.values():
        files = spec.datasets[task.dataset].resolve_splits(task.splits, f"tasks.{task.name}.splits")
        if task.pairing == "zip" and len(files) != len(task.seeds):
            raise SpecError(
                f"tasks.{task.name}: pairing 'zip' needs as many seeds as split files "
                f"({len(task.seeds)} seeds, {len(files)} files: {[f.name for f in files]})"
            )
