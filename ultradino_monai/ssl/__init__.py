"""DINOv2-style self-supervised pretraining pieces (losses, masking, schedules, EMA, monitors).

Pure library code; the ignite engine in ``ultradino_monai.engines`` wires them together.
The projection head lives in :mod:`ultradino_monai.networks.heads`.
"""

from .centering import CenteredTeacherLoss, sinkhorn_knopp
from .dino_clstoken_loss import DINOLoss, soft_cross_entropy
from .ibot_patch_loss import iBOTPatchLoss, masks_weight_from_masks
from .knn import knn_accuracy, knn_classify, knn_leave_one_group_out
from .koleo_loss import KoLeoLoss
from .masking import MaskingGenerator, MultiCropMaskCollate, collate_multicrop_with_masks
from .rankme import rankme
from .schedules import DinoSchedules, build_dino_schedules, linear_warmup_then_constant, scaled_lr
from .teacher import update_ema

__all__ = [
    "CenteredTeacherLoss",
    "sinkhorn_knopp",
    "DINOLoss",
    "soft_cross_entropy",
    "iBOTPatchLoss",
    "masks_weight_from_masks",
    "KoLeoLoss",
    "MaskingGenerator",
    "MultiCropMaskCollate",
    "collate_multicrop_with_masks",
    "linear_warmup_then_constant",
    "scaled_lr",
    "DinoSchedules",
    "build_dino_schedules",
    "update_ema",
    "rankme",
    "knn_classify",
    "knn_accuracy",
    "knn_leave_one_group_out",
]
