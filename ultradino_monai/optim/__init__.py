"""Optimisation shared by pretraining and fine-tuning: AdamW parameter groups, the AdamW builder, lr schedules."""

from .adamw import adamw_kernel, backbone_depth, build_adamw
from .param_groups import (
    EMBEDDING_NAMES,
    apply_optim_scheduler,
    fuse_params_groups,
    get_params_groups_with_decay,
    layer_id_for_name,
    scale_params_groups,
)
from .schedules import WarmupPolyLambda, cosine_schedule, warmup_cosine_scheduler, warmup_poly_scheduler

__all__ = [
    "EMBEDDING_NAMES",
    "WarmupPolyLambda",
    "adamw_kernel",
    "apply_optim_scheduler",
    "backbone_depth",
    "build_adamw",
    "cosine_schedule",
    "fuse_params_groups",
    "get_params_groups_with_decay",
    "layer_id_for_name",
    "scale_params_groups",
    "warmup_cosine_scheduler",
    "warmup_poly_scheduler",
]
