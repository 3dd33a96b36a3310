"""Short nnU-Net trainer for smoke tests and CPU demos (registered via ``nnUNet_extTrainer``).

nnU-Net's own ``nnUNetTrainer_1epoch`` still runs 250 training + 50 validation
iterations; a seconds-scale CI run needs fewer iterations per epoch as well, and the
nnU-Net maintainers recommend subclassing instead of editing ``nnUNetTrainer``
(``docs/datasets.md`` §2.8; nnU-Net issue #1384, docs/datasets.md §2.9). Everything else
(network from the plans, loss, augmentation, SGD + poly schedule, deep supervision, EMA
pseudo-Dice checkpointing, the final validation with mirroring) is nnU-Net's default code path.

Results of this trainer are a *reduced budget*: the result records label them
``nnUNetTrainer_UltraDINOShort/2ep`` and never average them with full runs.
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
