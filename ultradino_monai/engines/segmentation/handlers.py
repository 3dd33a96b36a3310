"""Training-time handlers: the validation record, the last validation, and the finish of a run."""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ultradino_monai.engines.segmentation.spec import write_model_spec
from ultradino_monai.utils.distributed import is_main_process

logger = logging.getLogger(__name__)

__all__ = ["ValidationRecorder", "FinalValidationHandler", "finish_training"]


class ValidationRecorder:
    """Logs every validation of a training run and remembers the best one.

    Attach it to the evaluator *and* the trainer (``attach(evaluator, trainer)``, the bundle does
    it in ``run``): after each validation it appends ``{"iteration", "<metric>", "per_class",
    "mean_with_background", "per_image_mean"}`` to ``path`` (JSON lines, rank 0) using the
    :class:`~ultradino_monai.evaluation.metrics.PooledDiceMetric` details, and logs one line.

    Args:
        path: the JSON-lines file (``output_dir/validation.jsonl``).
        metric_name: the evaluator's key metric (``val_fg_dice``).
        labels: class name -> index, to name the per-class values.
    """

    def __init__(self, path: str | os.PathLike, metric_name: str, labels: Mapping[str, int]) -> None:
        self.path = Path(path)
        self.metric_name = str(metric_name)
        self.names = [name for name, _ in sorted(labels.items(), key=lambda item: item[1])]
        self.best: dict[str, Any] | None = None
        self.history: list[dict[str, Any]] = []
        self._trainer = None

    def attach(self, evaluator, trainer) -> None:
        from ignite.engine import Events

        self._trainer = trainer
        evaluator.add_event_handler(Events.COMPLETED, self._record)

    def _record(self, evaluator) -> None:
        value = float(evaluator.state.metrics[self.metric_name])
        details = (getattr(evaluator.state, "metric_details", None) or {}).get(self.metric_name) or {}
        record: dict[str, Any] = {
            "iteration": int(self._trainer.state.iteration) if self._trainer is not None else None,
            self.metric_name: value,
        }
        if "per_class" in details:
            record["per_class"] = dict(zip(self.names, [float(v) for v in details["per_class"]]))
            record["mean_with_background"] = float(details["mean_with_background"])
            record["per_image_mean"] = float(details["per_image_mean"])
        self.history.append(record)
        # NaN never wins: the checkpoint saver only saves on a strictly better finite score.
        if not math.isnan(value) and (self.best is None or value > self.best[self.metric_name]):
            self.best = record
        logger.info(
            "validation at iteration %s: %s %.4f (best %.4f at iteration %s)",
            record["iteration"],
            self.metric_name,
            value,
            self.best[self.metric_name] if self.best else float("nan"),
            self.best["iteration"] if self.best else None,
        )
        if is_main_process():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a") as stream:
                stream.write(json.dumps(record) + "\n")


class FinalValidationHandler:
    """Validate once more when training stops between two validations.

    mmengine's iteration-based loop (UltraDINO, docs/recipe.md §1.5) validates every ``interval`` iterations
    *and* at the last one; MONAI's ``ValidationHandler`` covers the first part. At the
    trainer's ``COMPLETED`` this runs ``validator`` if the last iteration was not a multiple of
    ``interval`` (so the final weights can still become the best checkpoint).
    """

    def __init__(self, validator, interval: int) -> None:
        self.validator = validator
        self.interval = int(interval)
        if self.interval < 1:
            raise ValueError(f"interval must be >= 1, got {interval}")

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine) -> None:
        if engine.state.iteration % self.interval:
            self.validator.run(engine.state.epoch)


def finish_training(
    model_path: str | os.PathLike, spec: Mapping[str, Any], recorder: ValidationRecorder | None = None
) -> str:
    """After training: check the best checkpoint exists and record its validation score in ``model.json``."""
    model_path = Path(model_path)
    if is_main_process() and not model_path.is_file():
        raise RuntimeError(
            f"training finished without writing {model_path}: no validation produced a finite key metric "
            "(check the validation section and val_interval)"
        )
    document = dict(spec)
    if recorder is not None and recorder.best is not None:
        document["extra"] = {**dict(spec.get("extra", {})), "best_validation": recorder.best}
    write_model_spec(model_path, document)
    if is_main_process():
        logger.info("best model: %s (validation %s)", model_path, recorder.best if recorder else "n/a")
    return str(model_path)
