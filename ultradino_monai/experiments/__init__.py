"""The paper's protocol from one experiment file: grid runner and report (``python -m ultradino_monai.experiments``).

* :mod:`~ultradino_monai.experiments.spec`: load and validate an experiment YAML file.
* :mod:`~ultradino_monai.experiments.runner`: expand it into cells (backbone × task × split /
  seed) that run the existing bundles and the nnU-Net harness; skip finished cells; one
  worker per GPU or several CPU workers.
* :mod:`~ultradino_monai.experiments.report`: Table 1 (Markdown + CSV), label-efficiency and
  few-shot figures, attention maps.
"""

from ultradino_monai.experiments.spec import ExperimentSpec, SpecError, load_spec, parse_spec

__all__ = ["ExperimentSpec", "SpecError", "load_spec", "parse_spec"]
