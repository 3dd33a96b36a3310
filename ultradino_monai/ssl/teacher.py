"""EMA teacher update (docs/recipe.md §2.2 "Teacher", §2.3 teacher momentum)::

    theta_teacher <- m * theta_teacher + (1 - m) * theta_student,   m: 0.992 -> 1 (cosine)

applied to every parameter of the backbone and heads after the optimiser step. Buffers
are not touched (the DINOv2 recipe has no BatchNorm; DINOv2 refuses to train with it).
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from ultradino_monai.utils.distributed import unwrap_model

__all__ = ["update_ema"]

logger = logging.getLogger(__name__)


@torch.no_grad()
def update_ema(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """In place: ``teacher = momentum * teacher + (1 - momentum) * student`` over all parameters.

    Args:
        teacher: EMA model (parameters usually ``requires_grad=False``).
        student: trained model with identical parameter names and shapes.
        momentum: m in [0, 1]; 1 leaves the teacher unchanged, 0 copies the student.

    Raises:
        ValueError: if the parameter names, shapes or dtypes differ.
    """
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum must be in [0, 1], got {momentum}")
    teacher_params = dict(unwrap_model(teacher).named_parameters())
    student_params = dict(unwrap_model(student).named_parameters())
    if teacher_params.keys() != student_params.keys():
        only_t = sorted(teacher_params.keys() - student_params.keys())[:5]
        only_s = sorted(student_params.keys() - teacher_params.keys())[:5]
        raise ValueError(f"teacher and student parameters differ: only in teacher {only_t}, only in student {only_s}")
    names = list(teacher_params)
    for name in names:
        t, s = teacher_params[name], student_params[name]
        if t.shape != s.shape or t.dtype != s.dtype:
            raise ValueError(
                f"parameter {name!r}: teacher {tuple(t.shape)} {t.dtype} vs student {tuple(s.shape)} {s.dtype}"
            )
    if not names:
        return
    teacher_list = [teacher_params[n] for n in names]
    student_list = [student_params[n].detach() for n in names]
    torch._foreach_mul_(teacher_list, momentum)
    torch._foreach_add_(teacher_list, student_list, alpha=1.0 - momentum)
