"""nnU-Net trainers of this project (found via ``nnUNet_extTrainer``): a smoke-test trainer and budget trainers.

nnU-Net's own ``nnUNetTrainer_1epoch`` still runs 250 training + 50 validation
iterations; a seconds-scale CI run needs fewer iterations per epoch as well, and the
nnU-Net maintainers recommend subclassing instead of editing ``nnUNetTrainer``
(``docs/datasets.md`` §2.8; nnU-Net issue #1384, docs/datasets.md §2.9). Everything else
(network from the plans, loss, augmentation, SGD + poly schedule, deep supervision, EMA
pseudo-Dice checkpointing, the final validation with mirroring) is nnU-Net's default code path.

Results of this trainer are a *reduced budget*: the result records label them
``nnUNetTrainer_UltraDINOShort/2ep`` and never average them with full runs.

``nnUNetTrainer_UltraDINOBudget_<E>x<I>_b<B>``: nnU-Net's default trainer for E epochs x I
iterations at batch B, the ViT arm's budget in a grid cell (:class:`nnUNetTrainer_UltraDINOBudget`).
"""

from __future__ import annotations

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer


class nnUNetTrainer_UltraDINOShort(nnUNetTrainer):
    """2 epochs x 2 training iterations (1 validation iteration), batch size at most 2.

    Constructor signature as in nnunetv2 >= 2.6 (docs/datasets.md §2.1):
    ``(plans, configuration, fold, dataset_json, device)``.
    """

    #: values chosen for a seconds-scale CPU run on 64 x 64 images (docs/datasets.md §2.8 measured
    #: 2 epochs x 3 iterations + final validation in ~15 s on an idle 2-core box). Two
    #: epochs, so the EMA pseudo-Dice / checkpoint_best logic runs more than once.
    SHORT_NUM_EPOCHS = 2
    SHORT_ITERATIONS_PER_EPOCH = 2
    SHORT_VAL_ITERATIONS_PER_EPOCH = 1
    SHORT_MAX_BATCH_SIZE = 2

    def __init__(
        self,
        plans: dict,
        configuration: str,
        fold: int,
        dataset_json: dict,
        device: torch.device = torch.device("cuda"),  # noqa: B008 (nnUNetTrainer's own signature)
    ):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = self.SHORT_NUM_EPOCHS
        self.num_iterations_per_epoch = self.SHORT_ITERATIONS_PER_EPOCH
        self.num_val_iterations_per_epoch = self.SHORT_VAL_ITERATIONS_PER_EPOCH

    def _set_batch_size_and_oversample(self):
        super()._set_batch_size_and_oversample()
        # DDP splits the global batch and adjusts oversampling per worker; only cap the single-process case.
        if not self.is_ddp:
            self.batch_size = min(self.batch_size, self.SHORT_MAX_BATCH_SIZE)


class nnUNetTrainer_UltraDINOBudget(nnUNetTrainer):
    """nnU-Net's default trainer on a given budget: ``BUDGET_EPOCHS`` x ``BUDGET_ITERATIONS`` steps at ``BUDGET_BATCH``.

    Not used by name: nnU-Net asks this module for ``nnUNetTrainer_UltraDINOBudget_<E>x<I>_b<B>``
    and the module-level :func:`__getattr__` builds that subclass
    (:mod:`ultradino_monai.experiments.budget`: the grid derives E, I, B from the ViT arm's
    optimiser steps x batch size). Planning, network, loss, augmentation, oversampling, SGD +
    poly schedule (over the E epochs), deep supervision and the final validation are
    nnU-Net's. The batch size replaces the plan's, so the samples seen equal the ViT arm's.
    Validation *per epoch* (the EMA pseudo-Dice behind ``checkpoint_best``) is cut to
    ``BUDGET_VAL_ITERATIONS`` random batches: it does not train, and at 50 batches per epoch
    (nnU-Net's default) it would cost more than the training steps of a demo epoch.
    """

    BUDGET_EPOCHS: int | None = None
    BUDGET_ITERATIONS: int | None = None
    BUDGET_BATCH: int | None = None
    BUDGET_VAL_ITERATIONS = 5

    def __init__(
        self,
        plans: dict,
        configuration: str,
        fold: int,
        dataset_json: dict,
        device: torch.device = torch.device("cuda"),  # noqa: B008 (nnUNetTrainer's own signature)
    ):
        if None in (self.BUDGET_EPOCHS, self.BUDGET_ITERATIONS, self.BUDGET_BATCH):
            raise TypeError(
                "nnUNetTrainer_UltraDINOBudget needs its budget in the name: "
                "nnUNetTrainer_UltraDINOBudget_<epochs>x<iterations>_b<batch>"
            )
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = self.BUDGET_EPOCHS
        self.num_iterations_per_epoch = self.BUDGET_ITERATIONS
        self.num_val_iterations_per_epoch = self.BUDGET_VAL_ITERATIONS

    def _set_batch_size_and_oversample(self):
        super()._set_batch_size_and_oversample()
        # DDP splits the global batch over workers itself; the budget is set for the single-process case.
        if not self.is_ddp:
            self.batch_size = self.BUDGET_BATCH


def __getattr__(name: str) -> type:
    """``nnUNetTrainer_UltraDINOBudget_<E>x<I>_b<B>``: the budget trainer subclass for that budget (PEP 562).

    nnU-Net's trainer lookup asks ``hasattr(module, name)`` for every module of the
    ``nnUNet_extTrainer`` folders; answering here lets the name carry the budget into nnU-Net's
    results folder and checkpoints. Classes are cached, so one name is one class.
    """
    from ultradino_monai.experiments.budget import parse_budget_trainer

    parsed = parse_budget_trainer(name)
    if parsed is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    epochs, iterations, batch = parsed
    trainer = type(
        name,
        (nnUNetTrainer_UltraDINOBudget,),
        {
            "BUDGET_EPOCHS": epochs,
            "BUDGET_ITERATIONS": iterations,
            "BUDGET_BATCH": batch,
            "__module__": __name__,
            "__doc__": f"nnU-Net's trainer for {epochs} epochs x {iterations} iterations at batch {batch}.",
        },
    )
    globals()[name] = trainer
    return trainer
