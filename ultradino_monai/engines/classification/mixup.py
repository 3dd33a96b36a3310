"""Mixup / CutMix with label smoothing as a MONAI ``prepare_batch`` (UltraDINO's fine-tuning targets)."""

from __future__ import annotations

import torch
from monai.engines.utils import PrepareBatch, default_prepare_batch

from ultradino_monai.engines.config_values import as_bool

__all__ = ["MixupPrepareBatch"]


class MixupPrepareBatch(PrepareBatch):
    """MONAI ``prepare_batch`` that applies timm Mixup / CutMix with label smoothing.

    UltraDINO's fine-tuning (docs/recipe.md §1.4): ``Mixup(mixup_alpha=0.8, cutmix_alpha=1.0,
    prob=1.0, switch_prob=0.5, mode="batch", label_smoothing=0.1)`` with
    ``SoftTargetCrossEntropy``. The targets become soft ``[B, num_classes]`` float tensors.
    With ``enabled=False`` (or both alphas 0) images are left alone and the targets are the
    label-smoothed one-hot vectors, so the same loss applies.

    timm mixes image i with image B-1-i and needs an even batch: use ``drop_last=True``
    (UltraDINO does) and an even batch size.
    """

    def __init__(
        self,
        num_classes: int,
        mixup_alpha: float = 0.8,
        cutmix_alpha: float = 1.0,
        prob: float = 1.0,
        switch_prob: float = 0.5,
        mode: str = "batch",
        label_smoothing: float = 0.1,
        enabled: bool = True,
    ) -> None:
        from timm.data import Mixup

        self.num_classes = int(num_classes)
        self.label_smoothing = float(label_smoothing)
        self.enabled = as_bool(enabled) and (mixup_alpha > 0 or cutmix_alpha > 0) and prob > 0
        self.mixup = (
            Mixup(
                mixup_alpha=mixup_alpha,
                cutmix_alpha=cutmix_alpha,
                prob=prob,
                switch_prob=switch_prob,
                mode=mode,
                label_smoothing=label_smoothing,
                num_classes=num_classes,
            )
            if self.enabled
            else None
        )

    def __call__(self, batchdata, device=None, non_blocking: bool = False, **kwargs):
        from timm.data.mixup import mixup_target

        images, labels = default_prepare_batch(batchdata, device, non_blocking, **kwargs)
        images = images.as_tensor() if hasattr(images, "as_tensor") else torch.as_tensor(images)  # no MONAI meta
        labels = torch.as_tensor(labels).reshape(-1).long()
        if self.mixup is None:
            return images, mixup_target(labels, self.num_classes, lam=1.0, smoothing=self.label_smoothing)
        if images.shape[0] % 2:
            raise ValueError(
                f"Mixup/CutMix needs an even batch, got {images.shape[0]}; use an even batch_size and drop_last=True"
            )
        return self.mixup(images, labels)
