"""Per-iteration schedules of DINOv2 pretraining (docs/recipe.md §2.3, §4).

Everything is indexed by iteration; one "epoch" is ``epoch_length`` iterations
(DINOv2's ``OFFICIAL_EPOCH_LENGTH``, 1250 by default), not a pass over the data.

* lr: ``base_lr * sqrt(global_batch / 1024)``, linear warmup from 0 over
  ``warmup_epochs``, then cosine to ``min_lr`` at ``epochs``;
* weight decay: cosine ``weight_decay -> weight_decay_end`` (0.04 -> 0.4);
* teacher momentum: cosine ``momentum_teacher -> final_momentum_teacher`` (0.992 -> 1);
* teacher temperature: linear ``warmup_teacher_temp -> teacher_temp`` over
  ``warmup_teacher_temp_epochs`` (0.04 -> 0.07 over 30), constant afterwards;
* last-layer lr: the lr schedule, but 0 during the first ``freeze_last_layer_epochs``.

The cosine shapes are DINOv2's ``CosineScheduler``
(:func:`ultradino_monai.optim.schedules.cosine_schedule`: warmup ``linspace(start, base,
warmup_iters)``, then ``final + (base - final) (1 + cos(pi i / n)) / 2`` for ``i = 0..n-1``).
Past the end, :meth:`DinoSchedules.at` returns the exact final values, as DINOv2 does.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np

from ultradino_monai.optim.schedules import check_iterations, cosine_schedule

__all__ = [
    "linear_warmup_then_constant",
    "scaled_lr",
    "DinoSchedules",
    "build_dino_schedules",
]

logger = logging.getLogger(__name__)


def linear_warmup_then_constant(
    start_value: float, final_value: float, warmup_iters: int, total_iters: int
) -> np.ndarray:
    """``[total_iters]``: ``linspace(start_value, final_value, warmup_iters)`` then ``final_value``.

    The teacher-temperature schedule (0.04 -> 0.07 over 30 epochs, then 0.07; docs/recipe.md §2.3).
    ``warmup_iters`` may exceed ``total_iters`` (the ramp is then cut at ``total_iters``).
    """
    check_iterations(warmup_iters=warmup_iters, total_iters=total_iters)
    ramp = np.linspace(start_value, final_value, warmup_iters)
    constant = np.full(max(total_iters - warmup_iters, 0), float(final_value))
    return np.concatenate((ramp, constant))[:total_iters].astype(np.float64)


def scaled_lr(base_lr: float, global_batch_size: int, lr_scaling: str = "sqrt") -> float:
    """Learning rate for a global batch: ``"sqrt"``: ``base_lr * sqrt(B / 1024)`` (DINOv2's
    ``sqrt_wrt_1024``, docs/recipe.md §2.3; 0.004 at B=512 gives 2.83e-3); ``"none"``: ``base_lr``."""
    if global_batch_size < 1:
        raise ValueError(f"global_batch_size must be >= 1, got {global_batch_size}")
    if lr_scaling == "sqrt":
        return base_lr * math.sqrt(global_batch_size / 1024.0)
    if lr_scaling == "none":
        return base_lr
    raise ValueError(f"lr_scaling must be 'sqrt' or 'none', got {lr_scaling!r}")


@dataclass
class DinoSchedules:
    """Per-iteration values, each a float64 array of length ``total_iters``."""

    lr: np.ndarray
    wd: np.ndarray
    momentum: np.ndarray
    teacher_temp: np.ndarray
    last_layer_lr: np.ndarray
    final_values: dict[str, float] = field(default_factory=dict)

    @property
    def total_iters(self) -> int:
        return len(self.lr)

    def at(self, iteration: int) -> dict[str, float]:
        """``{"lr", "wd", "momentum", "teacher_temp", "last_layer_lr"}`` at a 0-based iteration.

        Iterations at or past ``total_iters`` get the final values (e.g. momentum 1.0).
        """
        if iteration < 0:
            raise ValueError(f"iteration must be >= 0, got {iteration}")
        names = ("lr", "wd", "momentum", "teacher_temp", "last_layer_lr")
        if iteration >= self.total_iters:
            return {name: float(self.final_values[name]) for name in names}
        return {name: float(getattr(self, name)[iteration]) for name in names}


def build_dino_schedules(
    base_lr: float,
    global_batch_size: int,
    epochs: int,
    epoch_length: int,
    warmup_epochs: float,
    min_lr: float,
    weight_decay: float,
    weight_decay_end: float,
    momentum_teacher: float,
    final_momentum_teacher: float,
    teacher_temp: float,
    warmup_teacher_temp: float,
    warmup_teacher_temp_epochs: float,
    freeze_last_layer_epochs: float,
    lr_scaling: str = "sqrt",
) -> DinoSchedules:
    """All five DINOv2 schedules (formulas in the module docstring).

    Recipe values (docs/recipe.md §2.3): ``base_lr=0.004, epochs=100, epoch_length=1250,
    warmup_epochs=10, min_lr=1e-6, weight_decay=0.04, weight_decay_end=0.4,
    momentum_teacher=0.992, final_momentum_teacher=1.0, teacher_temp=0.07,
    warmup_teacher_temp=0.04, warmup_teacher_temp_epochs=30, freeze_last_layer_epochs=1``.
    Fractional epochs are allowed for the warmup lengths (rounded to whole iterations).
    """
    if epochs < 1 or epoch_length < 1:
        raise ValueError(f"epochs and epoch_length must be >= 1, got {epochs} and {epoch_length}")
    for name, value in (
        ("warmup_epochs", warmup_epochs),
        ("warmup_teacher_temp_epochs", warmup_teacher_temp_epochs),
        ("freeze_last_layer_epochs", freeze_last_layer_epochs),
    ):
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
    total_iters = int(epochs * epoch_length)
    warmup_iters = int(round(warmup_epochs * epoch_length))
    if warmup_iters > total_iters:
        raise ValueError(f"warmup_epochs ({warmup_epochs}) exceeds epochs ({epochs})")
    peak_lr = scaled_lr(base_lr, global_batch_size, lr_scaling)

    lr = cosine_schedule(peak_lr, min_lr, total_iters, warmup_iters=warmup_iters, start_warmup_value=0.0)
    wd = cosine_schedule(weight_decay, weight_decay_end, total_iters)
    momentum = cosine_schedule(momentum_teacher, final_momentum_teacher, total_iters)
    temp = linear_warmup_then_constant(
        warmup_teacher_temp, teacher_temp, int(round(warmup_teacher_temp_epochs * epoch_length)), total_iters
    )
    last_layer_lr = lr.copy()
    last_layer_lr[: int(round(freeze_last_layer_epochs * epoch_length))] = 0.0

    logger.info(
        "DINO schedules: %d iterations, peak lr %.3g (base %.3g, batch %d, scaling %s), warmup %d iterations",
        total_iters,
        peak_lr,
        base_lr,
        global_batch_size,
        lr_scaling,
        warmup_iters,
    )
    return DinoSchedules(
        lr=lr,
        wd=wd,
        momentum=momentum,
        teacher_temp=temp,
        last_layer_lr=last_layer_lr,
        final_values={
            "lr": float(min_lr),
            "wd": float(weight_decay_end),
            "momentum": float(final_momentum_teacher),
            "teacher_temp": float(teacher_temp),
            "last_layer_lr": float(min_lr),
        },
    )
