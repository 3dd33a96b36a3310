"""Training budgets of a grid's arms, and the nnU-Net trainer name that carries an equal budget.

A comparison cell (one task, one split file, one seed) is fair when every arm trains on the
same budget. Two ViT backbones of one task always run the same bundle config, so they share
its schedule. nnU-Net does not run the bundle: an nnU-Net backbone with ``budget: matched``
trains, for every segmentation task, the **same number of optimiser steps × batch size** as
the task's ViT arms (``max_iterations`` and ``batch_size`` of the task's segmentation configs
and overrides). Both are 2-D networks trained on the same images at the same size, so samples
seen is the budget that transfers between them; wall-clock is left to the GPU grid, where
the architectures' throughputs differ by more.

The budget reaches nnU-Net through the trainer *name*, ``nnUNetTrainer_UltraDINOBudget_<E>x<I>_b<B>``
(E epochs × I iterations per epoch, batch B; :func:`budget_trainer_name`). The name is what
nnU-Net stores in its results folder (``<trainer>__<plans>__2d``) and in its checkpoints, so two
budgets never share a folder, a resumed grid finds its own models, and the predictor re-creates
the same trainer from the checkpoint. ``nnunet_baselines/trainers`` builds the class from the
name (:func:`parse_budget_trainer`); everything else is nnU-Net's default trainer.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "BUDGET_TRAINER_PREFIX",
    "MAX_ITERATIONS_PER_EPOCH",
    "StepBudget",
    "nnunet_schedule",
    "budget_trainer_name",
    "parse_budget_trainer",
    "config_value",
    "segmentation_budget",
]

BUDGET_TRAINER_PREFIX = "nnUNetTrainer_UltraDINOBudget"
_TRAINER_NAME = re.compile(rf"^{BUDGET_TRAINER_PREFIX}_(\d+)x(\d+)_b(\d+)$")
#: nnU-Net's default is 250 iterations per epoch; a demo budget of a few hundred steps needs
#: several epochs so that the poly learning-rate schedule (stepped once per epoch) decays.
MAX_ITERATIONS_PER_EPOCH = 25
#: more epochs than this means ``steps`` has no divisor near 25: round the steps up instead.
_MAX_EPOCHS_FOR_EXACT = 100


@dataclass(frozen=True)
class StepBudget:
    """``steps`` optimiser steps at ``batch`` images per step (``steps * batch`` samples seen)."""

    steps: int
    batch: int

    @property
    def samples(self) -> int:
        return self.steps * self.batch

    def describe(self) -> str:
        return f"{self.steps} steps × batch {self.batch}"


def nnunet_schedule(steps: int) -> tuple[int, int]:
    """``(epochs, iterations per epoch)`` for ``steps`` optimiser steps (``steps`` ≥ 1).

    Iterations per epoch: the largest divisor of ``steps`` up to :data:`MAX_ITERATIONS_PER_EPOCH`,
    so that ``epochs * iterations == steps`` exactly (200 -> 8 × 25); when that would need more
    than 100 epochs (a prime ``steps``), 25 per epoch and the steps rounded up to a multiple of 25.
    """
    steps = int(steps)
    if steps < 1:
        raise ValueError(f"a training budget needs at least one step, got {steps}")
    per_epoch = max(d for d in range(1, min(steps, MAX_ITERATIONS_PER_EPOCH) + 1) if steps % d == 0)
    if steps // per_epoch > _MAX_EPOCHS_FOR_EXACT:
        per_epoch = MAX_ITERATIONS_PER_EPOCH
    return math.ceil(steps / per_epoch), per_epoch


def budget_trainer_name(budget: StepBudget) -> str:
    """``nnUNetTrainer_UltraDINOBudget_<E>x<I>_b<B>`` for a budget (module docstring)."""
    epochs, per_epoch = nnunet_schedule(budget.steps)
    return f"{BUDGET_TRAINER_PREFIX}_{epochs}x{per_epoch}_b{int(budget.batch)}"


def parse_budget_trainer(name: str) -> tuple[int, int, int] | None:
    """``(epochs, iterations per epoch, batch)`` of a budget trainer name, or None for any other name."""
    match = _TRAINER_NAME.match(name)
    if not match:
        return None
    epochs, per_epoch, batch = (int(group) for group in match.groups())
    if min(epochs, per_epoch, batch) < 1:
        return None
    return epochs, per_epoch, batch


def config_value(configs: Sequence[str | Path], overrides: Mapping[str, Any], key: str) -> Any:
    """``key`` as a bundle run would see it: the last config file that sets it, then ``overrides``."""
    value = None
    for config in configs:
        document = json.loads(Path(config).read_text())
        if key in document:
            value = document[key]
    return overrides.get(key, value)


def segmentation_budget(configs: Sequence[str | Path], overrides: Mapping[str, Any]) -> StepBudget:
    """The segmentation bundle's ``max_iterations`` × ``batch_size`` for these configs and overrides.

    Raises:
        ValueError: either value is missing or not a plain positive integer (an expression
            cannot be matched by another arm).
    """
    values = {}
    for key in ("max_iterations", "batch_size"):
        value = config_value(configs, overrides, key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"the segmentation configs give {key} = {value!r}; a matched budget needs a positive int")
        values[key] = value
    return StepBudget(steps=values["max_iterations"], batch=values["batch_size"])
