"""nnU-Net v2 baselines on the project's datalists, preprocessing, splits and metric.

``python -m nnunet_baselines {export,plan,train,predict,score,compare,run}`` drives
nnunetv2's own planner (``plan_and_preprocess_api``), trainer (``run_training``) and
predictor (``nnUNetPredictor``); this package only decides *what* they see:

* :func:`export_dataset` — the datalist through THE shared preprocessing into
  ``nnUNet_raw/DatasetXXX_NAME`` (test cases only in ``imagesTs`` / ``labelsTs``);
* :func:`plan_and_preprocess` — fingerprint with integrity check, plan, preprocess ``2d``,
  ``splits_final.json`` = our split files (asserted);
* :func:`train_fold`, :func:`predict_fold`, :func:`select_checkpoint` — training and
  inference, checkpoint chosen by the project's validation pooled Dice;
* :func:`score_folder`, :func:`score_fold`, :func:`build_record` — the project's pooled
  Dice and result records;
* :func:`compare_results` — Table 1 layout next to the foundation-model results.

See README.md in this folder. Attributes are imported lazily: nnunetv2 reads environment
variables at import time, so nothing here imports it before
:func:`configure_environment` has run.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "configure_environment": "nnunet_baselines.environment",
    "check_nnunet_version": "nnunet_baselines.environment",
    "select_device": "nnunet_baselines.environment",
    "TRAINER_DIR": "nnunet_baselines.environment",
    "export_dataset": "nnunet_baselines.export",
    "load_manifest": "nnunet_baselines.export",
    "case_id": "nnunet_baselines.export",
    "plan_and_preprocess": "nnunet_baselines.plan",
    "write_splits_final": "nnunet_baselines.plan",
    "verify_splits_final": "nnunet_baselines.plan",
    "train_fold": "nnunet_baselines.runner",
    "predict_cases": "nnunet_baselines.runner",
    "select_checkpoint": "nnunet_baselines.runner",
    "predict_fold": "nnunet_baselines.runner",
    "score_fold": "nnunet_baselines.runner",
    "run_fold": "nnunet_baselines.runner",
    "score_folder": "nnunet_baselines.score",
    "build_record": "nnunet_baselines.score",
    "budget_label": "nnunet_baselines.score",
    "compare_results": "nnunet_baselines.compare",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'nnunet_baselines' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
