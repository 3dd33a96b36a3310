"""Ignite handlers for self-supervised pretraining: logging, monitoring, progress, export."""

from __future__ import annotations

import glob
import json
import logging
import math
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events
from monai.handlers import CheckpointSaver
from monai.utils import convert_to_tensor
from torch import nn

from ultradino_monai.ssl import knn_classify, knn_leave_one_group_out, rankme
from ultradino_monai.utils.distributed import get_rank, is_main_process
from ultradino_monai.utils.errors import MissingInputError

logger = logging.getLogger(__name__)

__all__ = [
    "CrashAwareCheckpointSaver",
    "JsonlLogger",
    "ProgressBarHandler",
    "SSLMonitor",
    "ResumeFromLatest",
    "StopAtIteration",
    "extract_features",
    "latest_checkpoint",
]


class JsonlLogger:
    """Append one JSON record per logged iteration to ``path`` (rank 0 only).

    Each record holds ``iteration``, ``epoch`` and every scalar in ``engine.state.output``
    (loss terms, lr, wd, momentum, teacher temperature). :class:`SSLMonitor` writes its
    evaluation records to the same file through :meth:`write`.
    """

    def __init__(self, path: str | os.PathLike, interval: int = 10) -> None:
        self.path = Path(path)
        self.interval = max(1, int(interval))

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED(every=self.interval), self._log_iteration)

    def write(self, record: dict[str, Any]) -> None:
        if not is_main_process():
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as stream:
            stream.write(json.dumps(record, sort_keys=True) + "\n")

    def _log_iteration(self, engine: Engine) -> None:
        output = engine.state.output
        if isinstance(output, dict):
            record = {"kind": "train", "iteration": engine.state.iteration, "epoch": engine.state.epoch}
            record.update({k: float(v) for k, v in output.items() if isinstance(v, (int, float))})
            self.write(record)


class ProgressBarHandler:
    """tqdm progress bar over the run, showing the loss terms (rank 0 only)."""

    def __init__(self, keys: Sequence[str] = ("loss", "dino_loss", "ibot_loss", "koleo_loss")) -> None:
        self.keys = tuple(keys)

    def attach(self, engine: Engine) -> None:
        if not is_main_process():
            return
        from ignite.handlers import ProgressBar

        keys = self.keys

        def transform(output):
            return {k: output[k] for k in keys if isinstance(output, dict) and k in output}

        ProgressBar(persist=True).attach(engine, output_transform=transform)


class SampleLedger:
    """Write the shard keys of every batch this rank trained on to ``folder/rank<R>.txt``.

    One line per iteration: ``<iteration> <key> <key> ...``. It answers "which frames did this
    model see, and when", and lets a test check that ranks read disjoint frames. Shard mode only
    (batches carry ``keys``); the file is appended to, so a resumed run continues it.
    """

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._record)

    def _record(self, engine: Engine) -> None:
        keys = (engine.state.batch or {}).get("keys")
        if keys is None:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / f"rank{get_rank()}.txt", "a") as stream:
            stream.write(" ".join([str(engine.state.iteration), *keys]) + "\n")


class StopAtIteration:
    """End the run cleanly after ``iteration`` (e.g. to fit a cluster time limit).

    The schedules still span the whole configured run; the final checkpoint is written as on
    a normal finish, so ``--resume true`` continues exactly where this run stopped.
    """

    def __init__(self, iteration: int) -> None:
        self.iteration = int(iteration)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        if engine.state.iteration >= self.iteration:
            logger.info("stopping at iteration %d as requested (stop_at_iteration)", engine.state.iteration)
            engine.terminate()


_CHECKPOINT_PATTERN = re.compile(r"^checkpoint\D*?(\d+)\.pt$")
_CRASH_PATTERN = re.compile(r"^crashed\D*?(\d+)\.pt$")


class CrashAwareCheckpointSaver(CheckpointSaver):
    """MONAI's :class:`~monai.handlers.CheckpointSaver`, but a run that raises does not write the final file.

    With ``save_final=True`` MONAI's saver writes ``final_filename`` on ``COMPLETED`` *and* on
    ``EXCEPTION_RAISED``, so a crashed run leaves a ``model_final.pt`` that looks like a finished model. This
    saver writes the final file on ``COMPLETED`` only; on an exception it writes ``crash_filename`` instead
    (``{iteration}`` / ``{epoch}`` are filled in; ``None``: nothing) and re-raises.

    Args:
        crash_filename: the file for the state at the exception, in ``save_dir`` (e.g. ``model_crashed.pt``).
        *args, **kwargs: :class:`~monai.handlers.CheckpointSaver`'s.
    """

    def __init__(self, *args: Any, crash_filename: str | None = "model_crashed.pt", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.crash_filename = crash_filename

    def exception_raised(self, engine: Engine, e: Exception) -> None:
        if self.crash_filename:
            from ignite.handlers import Checkpoint, DiskSaver

            name = self.crash_filename.format(iteration=engine.state.iteration, epoch=engine.state.epoch)
            stem, _ = os.path.splitext(name)
            # ignite formats filename_pattern; double the braces so the name is taken literally
            pattern = stem.replace("{", "{{").replace("}", "}}") + ".{ext}"
            saver = DiskSaver(self.save_dir, require_empty=False, create_dir=True)
            Checkpoint(self.save_dict, saver, filename_pattern=pattern)(engine)
            logger.warning("run failed at iteration %d; its state is in %s", engine.state.iteration, name)
        raise e


def latest_checkpoint(ckpt_dir: str | os.PathLike) -> str:
    """Path of the checkpoint with the highest iteration in ``ckpt_dir``; a clear error if none.

    Only ``checkpoint_*<iteration>.pt`` files count: the state a failed run left
    (``crashed_*<iteration>.pt``, :class:`CrashAwareCheckpointSaver`) is never resumed from silently; a newer
    one is named in a warning.
    """
    candidates, crashed = [], []
    for path in glob.glob(os.path.join(str(ckpt_dir), "*.pt")):
        match = _CHECKPOINT_PATTERN.search(os.path.basename(path))
        if match:
            candidates.append((int(match.group(1)), path))
        crash = _CRASH_PATTERN.search(os.path.basename(path))
        if crash:
            crashed.append((int(crash.group(1)), path))
    newest = max(candidates)[0] if candidates else -1
    for iteration, path in sorted(crashed):
        if iteration > newest:
            logger.warning(
                "%s holds the state of a failed run at iteration %d; resuming from the last regular checkpoint "
                "instead (rename it to checkpoint_iteration=%d.pt to resume from it)",
                path,
                iteration,
                iteration,
            )
    if not candidates:
        raise MissingInputError(
            f"--resume was given but {ckpt_dir} holds no checkpoint_*<iteration>.pt; start without --resume"
        )
    return max(candidates)[1]


class ResumeFromLatest:
    """Restore a run from the newest ``checkpoint_*<iteration>.pt`` in ``ckpt_dir`` at ``STARTED``.

    A thin wrapper over MONAI's :class:`~monai.handlers.CheckpointLoader` that finds the file
    when the handler is attached, so configs can always list it and switch it with ``enabled``
    (a missing checkpoint is a clear error only when resuming was asked for).
    """

    def __init__(
        self, ckpt_dir: str | os.PathLike, load_dict: dict, enabled: bool = True, map_location: Any = None
    ) -> None:
        self.ckpt_dir = ckpt_dir
        self.load_dict = load_dict
        self.enabled = enabled
        self.map_location = map_location

    def attach(self, engine: Engine) -> None:
        if not self.enabled:
            return
        from monai.handlers import CheckpointLoader

        path = latest_checkpoint(self.ckpt_dir)
        logger.info("resuming from %s", path)
        CheckpointLoader(path, self.load_dict, map_location=self.map_location).attach(engine)


@torch.no_grad()
def extract_features(
    backbone: nn.Module,
    loader,
    device: torch.device | str,
    image_key: str = "image",
    label_key: str = "label",
    amp: bool = False,
    group_key: str = "patient",
) -> dict[str, torch.Tensor]:
    """Embed every batch of ``loader`` with ``backbone`` in eval mode.

    Returns ``cls`` [N,D] (normed CLS token), ``avgpool`` [N,D] (mean of normed patch tokens,
    registers excluded), ``labels`` [N] and ``groups`` [N] (integer ids of ``group_key``, e.g.
    the patient, in order of first appearance; each sample is its own group when the key is absent).
    """
    was_training = backbone.training
    backbone.eval()
    device = torch.device(device)
    cls, pooled, labels, group_names = [], [], [], []
    for batch in loader:
        images = convert_to_tensor(batch[image_key], track_meta=False).to(device)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
            features = backbone.forward_features(images)
        cls.append(features["x_norm_clstoken"].float().cpu())
        pooled.append(features["x_norm_patchtokens"].float().mean(dim=1).cpu())
        labels.append(torch.as_tensor(batch[label_key]).reshape(-1).long().cpu())
        names = batch.get(group_key)
        group_names += list(names) if names is not None else [None] * images.shape[0]
    backbone.train(was_training)
    ids: dict[Any, int] = {}
    groups = [
        ids.setdefault(name, len(ids)) if name is not None else -1 - index for index, name in enumerate(group_names)
    ]
    return {
        "cls": torch.cat(cls),
        "avgpool": torch.cat(pooled),
        "labels": torch.cat(labels),
        "groups": torch.tensor(groups, dtype=torch.long),
    }


def knn_scores(
    bank: dict[str, torch.Tensor],
    queries: dict[str, torch.Tensor] | None,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
) -> dict[str, float]:
    """kNN top-1 accuracy (%) of the CLS and the average-pooled patch features.

    Without ``queries`` every bank sample is a query, classified leave-one-group-out (by patient).
    """
    scores = {}
    for kind in ("cls", "avgpool"):
        if queries is None:
            predictions = knn_leave_one_group_out(
                bank[kind], bank["labels"], bank["groups"], k=k, temperature=temperature, num_classes=num_classes
            )
            targets = bank["labels"]
        else:
            predictions = knn_classify(
                bank[kind],
                bank["labels"],
                queries[kind],
                k=min(k, len(bank["labels"])),
                temperature=temperature,
                num_classes=num_classes,
            )
            targets = queries["labels"]
        scores[kind] = 100.0 * float((predictions == targets).float().mean())
    return scores


class SSLMonitor:
    """Every ``interval`` iterations: teacher kNN accuracy, RankMe and collapse diagnostics.

    kNN follows DINO (k=20, cosine similarity, votes weighted by exp(sim/T), T=0.07) with the
    labelled ``bank_loader`` as memory and ``query_loader`` as queries; with ``query_loader=None``
    every bank image is a query, classified from the other patients' images (leave one patient
    out), which on a small monitoring set cuts the sampling error of the accuracy. RankMe is
    computed on the query CLS embeddings. ``feature_std`` is the mean per-dimension std of the
    L2-normalised teacher CLS: near 0 means the embedding collapsed to a constant.
    Results go to TensorBoard (if ``summary_writer`` is given), to ``jsonl`` and to the log.

    ``reference`` is an optional random-init backbone of the same architecture, scored once
    at the start so the run log always shows the "beats random init" comparison.
    """

    def __init__(
        self,
        backbone_getter: Callable[[], nn.Module],
        bank_loader,
        query_loader,
        num_classes: int,
        interval: int,
        device: torch.device | str,
        jsonl: JsonlLogger | None = None,
        summary_writer=None,
        reference: nn.Module | None = None,
        k: int = 20,
        temperature: float = 0.07,
        amp: bool = False,
    ) -> None:
        self.backbone_getter = backbone_getter
        self.bank_loader = bank_loader
        self.query_loader = query_loader
        self.num_classes = int(num_classes)
        self.interval = max(1, int(interval))
        self.device = device
        self.jsonl = jsonl
        self.summary_writer = summary_writer
        self.reference = reference
        self.k = k
        self.temperature = temperature
        self.amp = amp
        self.history: list[dict[str, Any]] = []
        self.reference_scores: dict[str, float] | None = None

    def attach(self, engine: Engine) -> None:
        if not is_main_process():
            return
        engine.add_event_handler(Events.STARTED, self._score_reference)
        engine.add_event_handler(Events.ITERATION_COMPLETED(every=self.interval), self)
        engine.add_event_handler(Events.COMPLETED, self._final)

    def evaluate(self, backbone: nn.Module) -> dict[str, float]:
        backbone_device = next(backbone.parameters()).device
        bank = extract_features(backbone, self.bank_loader, backbone_device, amp=self.amp)
        queries = None
        if self.query_loader is not None:
            queries = extract_features(backbone, self.query_loader, backbone_device, amp=self.amp)
        scores = knn_scores(bank, queries, self.num_classes, self.k, self.temperature)
        embedded = queries if queries is not None else bank
        normalised = torch.nn.functional.normalize(embedded["cls"], dim=-1)
        return {
            "knn_cls": scores["cls"],
            "knn_avgpool": scores["avgpool"],
            "rankme_cls": float(rankme(embedded["cls"])),
            "rankme_avgpool": float(rankme(embedded["avgpool"])),
            "feature_std": float(normalised.std(dim=0).mean()),
        }

    def _score_reference(self, engine: Engine) -> None:
        if self.reference is None or self.reference_scores is not None:
            return
        self.reference_scores = self.evaluate(self.reference)
        logger.info(
            "random-init reference: kNN CLS %.1f%%, kNN avgpool %.1f%%",
            self.reference_scores["knn_cls"],
            self.reference_scores["knn_avgpool"],
        )
        if self.jsonl is not None:
            self.jsonl.write({"kind": "reference", "iteration": engine.state.iteration, **self.reference_scores})

    def __call__(self, engine: Engine) -> None:
        scores = self.evaluate(self.backbone_getter())
        output = engine.state.output if isinstance(engine.state.output, dict) else {}
        if "koleo_loss" in output or "dino_loss" in output:
            scores["dino_loss"] = float(output.get("dino_loss", math.nan))
        record = {"kind": "eval", "iteration": engine.state.iteration, "epoch": engine.state.epoch, **scores}
        self.history.append(record)
        logger.info(
            "iteration %d: teacher kNN CLS %.1f%%, avgpool %.1f%%, RankMe %.1f, feature std %.4f",
            engine.state.iteration,
            scores["knn_cls"],
            scores["knn_avgpool"],
            scores["rankme_cls"],
            scores["feature_std"],
        )
        if self.jsonl is not None:
            self.jsonl.write(record)
        if self.summary_writer is not None:
            for name, value in scores.items():
                self.summary_writer.add_scalar(f"eval/{name}", value, engine.state.iteration)
            self.summary_writer.flush()

    def _final(self, engine: Engine) -> None:
        if not self.history or self.history[-1]["iteration"] != engine.state.iteration:
            self(engine)
        final = self.history[-1]
        if self.reference_scores is not None:
            best_reference = max(self.reference_scores["knn_cls"], self.reference_scores["knn_avgpool"])
            logger.info(
                "kNN plane accuracy: pretrained teacher CLS %.1f%% vs random init %.1f%% "
                "(best of CLS %.1f%% / avgpool %.1f%%): %+.1f points",
                final["knn_cls"],
                best_reference,
                self.reference_scores["knn_cls"],
                self.reference_scores["knn_avgpool"],
                final["knn_cls"] - best_reference,
            )
