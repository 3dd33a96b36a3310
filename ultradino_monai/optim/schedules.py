"""Per-iteration learning-rate schedules: warmup + half-cosine, and warmup + polynomial decay.

* :func:`cosine_schedule` (DINOv2's ``CosineScheduler``): ``freeze_iters`` zeros, then
  ``linspace(start, base, warmup_iters)`` (its last entry equals ``base``), then
  ``final + (base - final) (1 + cos(pi i / n)) / 2`` for ``i = 0..n-1``; the last entry is within
  ``(base - final) (pi / n)^2 / 4`` of ``final``. DINOv2 pretraining uses it for lr, weight decay and
  teacher momentum (:mod:`ultradino_monai.ssl.schedules`); classification fine-tuning and the linear
  probe use it as the lr factor of :func:`warmup_cosine_scheduler`.
* :class:`WarmupPolyLambda` (mmengine ``LinearLR`` + ``PolyLR``), segmentation fine-tuning.

Both schedulers multiply every group's *initial* lr by the same factor, so per-group rates (layer-wise
decay, a grid of probe heads) keep their ratios. Step them every iteration (MONAI
``LrScheduleHandler(epoch_level=False)``).
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = [
    "WarmupPolyLambda",
    "check_iterations",
    "cosine_schedule",
    "warmup_cosine_scheduler",
    "warmup_poly_scheduler",
]


def check_iterations(**iters: int) -> None:
    """Raise ``ValueError`` unless every keyword value is a non-negative integer (named in the message)."""
    for name, value in iters.items():
        if int(value) != value or value < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {value}")


def cosine_schedule(
    base_value: float,
    final_value: float,
    total_iters: int,
    warmup_iters: int = 0,
    start_warmup_value: float = 0.0,
    freeze_iters: int = 0,
) -> np.ndarray:
    """``[total_iters]`` float64 array: zeros, linear warmup, then half-cosine.

    ``freeze_iters`` zeros, then ``linspace(start_warmup_value, base_value, warmup_iters)``,
    then ``final + (base - final) * (1 + cos(pi * i / n)) / 2`` for ``i = 0..n-1`` with
    ``n = total_iters - warmup_iters - freeze_iters``.
    """
    check_iterations(total_iters=total_iters, warmup_iters=warmup_iters, freeze_iters=freeze_iters)
    n_cosine = total_iters - warmup_iters - freeze_iters
    if n_cosine < 0:
        raise ValueError(
            f"warmup_iters ({warmup_iters}) + freeze_iters ({freeze_iters}) exceed total_iters ({total_iters})"
        )
    freeze = np.zeros(freeze_iters)
    warmup = np.linspace(start_warmup_value, base_value, warmup_iters)
    progress = np.arange(n_cosine) / max(n_cosine, 1)
    cosine = final_value + 0.5 * (base_value - final_value) * (1.0 + np.cos(np.pi * progress))
    return np.concatenate((freeze, warmup, cosine)).astype(np.float64)


def warmup_cosine_scheduler(
    optimizer: torch.optim.Optimizer,
    epochs: int,
    iterations_per_epoch: int,
    warmup_epochs: float = 0,
) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-iteration ``LambdaLR``: linear warmup from 0, then half-cosine to 0.

    The factor at iteration ``t`` is ``cosine_schedule(1, 0, T, warmup_iters=W)[min(t, T - 1)]`` with
    ``T = epochs * iterations_per_epoch`` and ``W = round(warmup_epochs * iterations_per_epoch)``
    (at most ``T - 1``). ``iterations_per_epoch`` counts the batches actually run (a dropped last
    batch excluded), so the lr ends at 0 (UltraDINO's classification code counted it with ``ceil`` and never
    reached 0).
    """
    total = int(epochs) * int(iterations_per_epoch)
    if total < 1:
        raise ValueError(f"no iterations to schedule: epochs={epochs}, iterations_per_epoch={iterations_per_epoch}")
    warmup = min(int(round(float(warmup_epochs) * int(iterations_per_epoch))), total - 1)
    factors = cosine_schedule(1.0, 0.0, total, warmup_iters=warmup)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: float(factors[min(step, total - 1)]))


class WarmupPolyLambda:
    """lr factor at iteration t: linear warmup, then polynomial decay to 0 (mmengine LinearLR + PolyLR).

    ``t < warmup``: ``start + (1 - start) · t / warmup``; afterwards
    ``(1 - (t - warmup) / (total - warmup)) ** power``, 0 from ``total`` on. UltraDINO's
    segmentation: start 1e-6, warmup 1500, power 1, total 20k (few-shot) or 45k (full FASS).
    A callable object (not a lambda), so ``LambdaLR.state_dict`` stores it.
    """

    def __init__(
        self,
        total_iterations: int,
        warmup_iterations: int = 1500,
        warmup_start_factor: float = 1e-6,
        power: float = 1.0,
    ) -> None:
        self.total_iterations = int(total_iterations)
        self.warmup_iterations = int(warmup_iterations)
        self.warmup_start_factor = float(warmup_start_factor)
        self.power = float(power)
        if self.total_iterations < 1:
            raise ValueError(f"total_iterations must be >= 1, got {total_iterations}")
        if not 0 <= self.warmup_iterations < self.total_iterations:
            raise ValueError(
                f"warmup_iterations ({warmup_iterations}) must be in [0, total_iterations={total_iterations})"
            )

    def __call__(self, iteration: int) -> float:
        if iteration < self.warmup_iterations:
            return self.warmup_start_factor + (1.0 - self.warmup_start_factor) * iteration / self.warmup_iterations
        remaining = 1.0 - (iteration - self.warmup_iterations) / (self.total_iterations - self.warmup_iterations)
        return max(0.0, remaining) ** self.power


def warmup_poly_scheduler(
    optimizer: torch.optim.Optimizer,
    total_iterations: int,
    warmup_iterations: int = 1500,
    warmup_start_factor: float = 1e-6,
    power: float = 1.0,
) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-iteration ``LambdaLR`` with :class:`WarmupPolyLambda`."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, WarmupPolyLambda(total_iterations, warmup_iterations, warmup_start_factor, power)
    )
