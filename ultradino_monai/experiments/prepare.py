"""What an experiment needs before its cells run: demo data, split files, and every task's split files resolving."""

from __future__ import annotations

from ultradino_monai.experiments.spec import ExperimentSpec, SpecError

__all__ = ["prepare_datasets"]


def prepare_datasets(spec: ExperimentSpec) -> None:
    """Generate missing demo data, (re)write the split files of datasets with a ``splits`` entry, check every task's split files resolve."""
    import logging

    log = logging.getLogger(__name__)
    for dataset in spec.datasets.values():
        if dataset.demo_dir is not None and not dataset.datalist.is_file():
            from data_prep.demo import generate_demo

            log.info("generating the demo data in %s", dataset.demo_dir)
            generate_demo(dataset.demo_dir.resolve(), seed=0)
        if not dataset.datalist.is_file():
            raise SpecError(f"datasets.{dataset.name}.datalist: file not found: {dataset.datalist}")
        if dataset.splits is not None:
            # Split files are a pure function of (datalist, protocol, seed, options) and byte-identical
            # when nothing changed, so they are rewritten on every run: never stale after a datalist change.
            from ultradino_monai.data import splits as split_module

            function = {"fass": split_module.fass_splits, "jnu": split_module.jnu_splits,
                        "holdout": split_module.holdout_splits}[dataset.splits["protocol"]]
            log.info("writing %s split files for %s to %s", dataset.splits["protocol"], dataset.name,
                     dataset.splits["out_dir"])
            try:
                function(dataset.datalist, dataset.splits["out_dir"], dataset.splits["seed"],
                         **dataset.splits["options"])
            except TypeError as error:
                raise SpecError(f"datasets.{dataset.name}.splits.options: {error}") from error
    for task in spec.tasks.values():
        files = spec.datasets[task.dataset].resolve_splits(task.splits, f"tasks.{task.name}.splits")
        if task.pairing == "zip" and len(files) != len(task.seeds):
            raise SpecError(f"tasks.{task.name}: pairing 'zip' needs as many seeds as split files "
                            f"({len(task.seeds)} seeds, {len(files)} files: {[f.name for f in files]})")
