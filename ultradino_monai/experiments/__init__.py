"""The paper's protocol from one experiment file: grid runner and report (``python -m ultradino_monai.experiments``).

* :mod:`~ultradino_monai.experiments.spec`: the experiment file's data model and layout;
  :mod:`~ultradino_monai.experiments.parse` loads and validates one;
  :mod:`~ultradino_monai.experiments.prepare` writes its demo data and split files.
* :mod:`~ultradino_monai.experiments.runner`: expand it into cells (backbone × task × split /
  seed) that run the existing bundles and the nnU-Net harness; skip finished cells; one
  worker per GPU or several CPU workers.
* :mod:`~ultradino_monai.experiments.report`: Table 1 (Markdown + CSV), label-efficiency and
  few-shot figures, attention maps.
"""

from ultradino_monai.experiments.parse import load_spec, parse_spec
from ultradino_monai.experiments.spec import ExperimentSpec, SpecError

__all__ = ["ExperimentSpec", "SpecError", "load_spec", "parse_spec"]
