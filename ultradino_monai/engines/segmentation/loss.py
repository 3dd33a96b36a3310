"""The segmentation training loss: MONAI's CE + softmax Dice, or CE + mmseg's sigmoid Dice for parity."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.data import MetaTensor
from monai.losses import DiceCELoss
from torch import nn

__all__ = ["SigmoidDiceCELoss", "segmentation_loss"]


class SigmoidDiceCELoss(nn.Module):
    """Cross-entropy + mmseg 1.2.2's default ``DiceLoss`` (UltraDINO's loss, docs/recipe.md §1.5), for exact parity.

    Per image, with the class, row and column axes flattened together:
    ``dice = 2 Σ p·t / (Σ p² + eps + Σ t² + eps)`` with ``p = sigmoid(logits)`` (not
    softmax) and ``t`` the one-hot target; ``loss_dice = mean over images of (1 - dice)``.
    The total is ``ce_weight · CE + dice_weight · loss_dice`` (both weights 1 in UltraDINO).

    Input: logits ``[B, K, H, W]``; target ``[B, 1, H, W]`` or ``[B, H, W]`` class ids.
    """

    def __init__(self, ce_weight: float = 1.0, dice_weight: float = 1.0, eps: float = 1e-3) -> None:
        super().__init__()
        self.ce_weight = float(ce_weight)
        self.dice_weight = float(dice_weight)
        self.eps = float(eps)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if isinstance(logits, MetaTensor):
            logits = logits.as_tensor()
        if isinstance(target, MetaTensor):
            target = target.as_tensor()
        if target.ndim == logits.ndim:
            target = target.squeeze(1)
        target = target.long()
        num_classes = logits.shape[1]
        if target.min() < 0 or target.max() >= num_classes:
            raise ValueError(f"target holds class ids outside 0..{num_classes - 1}")
        ce = F.cross_entropy(logits, target)
        probabilities = logits.float().sigmoid().flatten(1)
        one_hot = F.one_hot(target, num_classes).permute(0, 3, 1, 2).float().flatten(1)
        intersection = (probabilities * one_hot).sum(1)
        denominator = (probabilities * probabilities).sum(1) + self.eps + (one_hot * one_hot).sum(1) + self.eps
        dice_loss = (1.0 - 2.0 * intersection / denominator).mean()
        return self.ce_weight * ce + self.dice_weight * dice_loss


def segmentation_loss(kind: str = "dice_ce") -> nn.Module:
    """The training loss.

    ``"dice_ce"`` (default): MONAI ``DiceCELoss(to_onehot_y=True, softmax=True)``, softmax Dice
    averaged over classes and images plus CE. ``"mmseg_sigmoid_dice_ce"``: :class:`SigmoidDiceCELoss`,
    exactly UltraDINO's CE + mmseg sigmoid Dice (docs/recipe.md §1.5).
    """
    kind = str(kind).lower()
    if kind == "dice_ce":
        return DiceCELoss(to_onehot_y=True, softmax=True)
    if kind in ("mmseg_sigmoid_dice_ce", "mmseg"):
        return SigmoidDiceCELoss()
    raise ValueError(f"unknown loss {kind!r}; use 'dice_ce' or 'mmseg_sigmoid_dice_ce'")
