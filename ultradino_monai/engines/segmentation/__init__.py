"""Builders the segmentation bundle's configs call: model, data, loss, results.

``bundles/segmentation/configs/train.json`` wires these into MONAI's ``SupervisedTrainer`` /
``SupervisedEvaluator`` so the config reads like UltraDINO's mmseg recipe
(``docs/recipe.md`` §1.5):

* model: ViT backbone from :func:`~ultradino_monai.networks.checkpoints.load_backbone` +
  UperNet (:class:`~ultradino_monai.networks.segmenter.Segmenter`), stochastic depth 0.4 with
  the linear per-depth rule;
* data: the shared preprocessing (DESIGN contract 2) at ``normalization="none"``, the joint
  UltraDINO augmentation on [0, 1] images, then the backbone's normalisation; an
  iteration-based random sampler (:class:`~ultradino_monai.data.sampling.IterationSampler`,
  mmengine ``InfiniteSampler``);
* loss: CE + Dice (MONAI ``DiceCELoss``), or CE + mmseg's sigmoid Dice for parity;
* optimiser (:func:`ultradino_monai.optim.build_adamw`): AdamW lr 1e-4, wd 0.01, betas
  (0.9, 0.999), layer-wise lr decay 0.99 *applied* (UltraDINO's constructor computed it but AdamW
  ignored it, docs/recipe.md §1.5 / §1.4(a); ``layer_decay false`` reproduces that: one lr and wd for all);
* schedule (:func:`ultradino_monai.optim.warmup_poly_scheduler`): linear warmup from 1e-6 over
  1500 iterations, then poly (power 1) to 0.

A trained model is ``model.pt`` (plain state dict of the :class:`Segmenter`) plus
``model.json`` (:func:`segmenter_spec`: architecture, labels, image size, normalisation,
provenance of the backbone), so evaluation and inference rebuild it without the pretraining
checkpoint.

Modules: :mod:`.data` (datalist, labels, transforms), :mod:`.model` (build the segmenter),
:mod:`.spec` (``model.json``: describe, write, read, rebuild, load), :mod:`.loss`,
:mod:`.handlers` (validation record, last validation, finish),
:mod:`.inference` (input images, mask and overlay writer), :mod:`.results` (result record).
"""

from ultradino_monai.engines.config_values import as_bool, optional_path
from ultradino_monai.engines.segmentation.data import (
    labels_of,
    resolve_normalization,
    section_items,
    segmentation_datalist,
    segmentation_transforms,
)
from ultradino_monai.engines.segmentation.handlers import FinalValidationHandler, ValidationRecorder, finish_training
from ultradino_monai.engines.segmentation.inference import PredictionWriter, image_items
from ultradino_monai.engines.segmentation.loss import SigmoidDiceCELoss, segmentation_loss
from ultradino_monai.engines.segmentation.model import BuiltSegmenter, build_segmenter, default_pretrained
from ultradino_monai.engines.segmentation.results import write_segmentation_result
from ultradino_monai.engines.segmentation.spec import (
    SPEC_FORMAT,
    SPEC_VERSION,
    load_segmenter,
    read_model_spec,
    segmenter_from_spec,
    segmenter_spec,
    spec_backbone_name,
    write_model_spec,
)

__all__ = [
    "as_bool",
    "optional_path",
    # data
    "segmentation_datalist",
    "labels_of",
    "section_items",
    "resolve_normalization",
    "segmentation_transforms",
    # model
    "default_pretrained",
    "BuiltSegmenter",
    "build_segmenter",
    # model.json
    "SPEC_FORMAT",
    "SPEC_VERSION",
    "segmenter_spec",
    "spec_backbone_name",
    "write_model_spec",
    "read_model_spec",
    "segmenter_from_spec",
    "load_segmenter",
    # training
    "SigmoidDiceCELoss",
    "segmentation_loss",
    "ValidationRecorder",
    "FinalValidationHandler",
    "finish_training",
    # inference and results
    "image_items",
    "PredictionWriter",
    "write_segmentation_result",
]
