"""Builders the classification bundle's configs call (fine-tuning, linear probe, evaluation, inference).

Numbers come from ``docs/recipe.md`` §1.4 (UltraDINO on FETAL_PLANES_DB) and §2.6 (DINOv2 linear
probe); the bundle's configs name the value and this package only does the work. Each function does one thing, so
``bundles/classification/configs/*.json`` read like the recipe.

Modules: :mod:`.data` (datalist, classes, transforms), :mod:`.backbone` (the starting backbone and
its provenance), :mod:`.mixup` (Mixup / CutMix targets), :mod:`.metrics` (ignite metrics),
:mod:`.sidecar` (the fine-tuned model's ``model.json``), :mod:`.results` (result record, confusion
matrix), :mod:`.linear_probe` (probe datasets and report), :mod:`.inference` (PNG / DICOM inputs,
probability CSV). The optimiser and the lr schedule are :mod:`ultradino_monai.optim`'s.
"""

from ultradino_monai.engines.classification.backbone import backbone_record, load_task_backbone
from ultradino_monai.engines.classification.data import (
    class_names,
    classification_transforms,
    normalization_name,
    resolve_datalist,
    section_items,
)
from ultradino_monai.engines.classification.inference import (
    DecodeDicomFramed,
    ProbabilityCSVWriter,
    decode_dicom_frame,
    inference_items,
    inference_transforms,
)
from ultradino_monai.engines.classification.linear_probe import probe_dataset, report_linear_probe
from ultradino_monai.engines.classification.metrics import MacroF1, PredictionCollector
from ultradino_monai.engines.classification.mixup import MixupPrepareBatch
from ultradino_monai.engines.classification.results import write_classification_result, write_confusion_matrix_png
from ultradino_monai.engines.classification.sidecar import (
    MODEL_SIDECAR_FORMAT,
    classifier_from_sidecar,
    read_model_sidecar,
    write_model_sidecar,
)
from ultradino_monai.engines.config_values import as_bool

__all__ = [
    "as_bool",
    # data
    "resolve_datalist",
    "class_names",
    "section_items",
    "normalization_name",
    "classification_transforms",
    # backbone
    "load_task_backbone",
    "backbone_record",
    # training
    "MixupPrepareBatch",
    "PredictionCollector",
    "MacroF1",
    # model.json
    "MODEL_SIDECAR_FORMAT",
    "write_model_sidecar",
    "read_model_sidecar",
    "classifier_from_sidecar",
    # results and linear probe
    "write_confusion_matrix_png",
    "write_classification_result",
    "probe_dataset",
    "report_linear_probe",
    # inference
    "inference_items",
    "decode_dicom_frame",
    "DecodeDicomFramed",
    "inference_transforms",
    "ProbabilityCSVWriter",
]
