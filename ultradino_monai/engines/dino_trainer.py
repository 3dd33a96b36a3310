"""DINOv2 self-distillation as a MONAI ``Trainer`` (docs/bundles.md §4, docs/recipe.md §2).

One iteration, with ``B`` images per process, 2 global and ``L`` local crops:

1. per-iteration schedules (lr, wd, last-layer lr, teacher momentum, teacher temperature)
   are read from precomputed arrays and written into the optimiser groups;
2. the teacher (eval mode, no grad) embeds the 2 *unmasked* global crops; its CLS logits
   and the logits of the patches that the student will see masked are turned into
   targets by softmax centering (or Sinkhorn-Knopp);
3. the student embeds the masked global crops and the local crops;
4. loss = w_dino · DINO(CLS, cross-view) + w_koleo · Σ_views KoLeo(student CLS)
   + w_ibot · iBOT(masked patches);
5. backward, per-submodule gradient clipping, optimiser step, EMA teacher update.

MONAI's iteration events fire in order, so ignite/MONAI handlers attach as usual.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from ignite.engine import Events
from monai.engines import Trainer
from monai.engines.utils import IterationEvents
from torch import nn

from ultradino_monai.data.sampling import mix_seed
from ultradino_monai.optim import apply_optim_scheduler
from ultradino_monai.ssl import DINOLoss, DinoSchedules, KoLeoLoss, iBOTPatchLoss, update_ema
from ultradino_monai.utils.distributed import get_world_size, is_distributed, unwrap_model

logger = logging.getLogger(__name__)

__all__ = ["DinoTrainer", "NonFiniteLossError"]


class NonFiniteLossError(RuntimeError):
    """A loss term became NaN or infinite; the message names the iteration and the term."""


def mean_over_ranks(values: list[torch.Tensor]) -> torch.Tensor:
    """The scalars ``values`` averaged over all ranks (one all-reduce), as DINOv2 logs its losses.

    Each rank's loss is a mean over its own batch, so with equal per-rank batches this is the
    loss of the global batch: what a single process would log for it.
    """
    stacked = torch.stack([value.float().reshape(()) for value in values])
    if is_distributed():
        torch.distributed.all_reduce(stacked)  # gloo has no AVG: sum, then divide
        stacked /= get_world_size()
    return stacked.cpu()


class DinoTrainer(Trainer):
    """Student/teacher DINOv2 trainer on ignite, with MONAI iteration events.

    Args:
        device: where the models run.
        max_epochs: number of pseudo-epochs.
        epoch_length: iterations per pseudo-epoch (DINOv2's ``OFFICIAL_EPOCH_LENGTH``).
        train_data_loader: yields batches from :class:`~ultradino_monai.ssl.MultiCropMaskCollate`:
            ``global_crops`` [2B,C,Hg,Wg] (view-major), ``local_crops`` [LB,C,Hl,Wl],
            ``masks`` [2B,N] bool, ``mask_indices`` [M], ``masks_weight`` [M], ``n_masked_patches``.
        student: a :class:`~ultradino_monai.networks.dino_model.DinoModel`, possibly DDP-wrapped
            (DDP must wrap the whole student so that its forward synchronises gradients).
        teacher: a ``DinoModel`` of the same architecture, never wrapped, updated only by EMA.
        optimizer: AdamW over the student's parameter groups (with ``lr_multiplier``,
            ``wd_multiplier`` and ``is_last_layer`` entries).
        schedules: per-iteration arrays (lr, wd, last_layer_lr, momentum, teacher_temp).
        dino_loss, ibot_loss, koleo_loss: the loss modules (their centers are buffers).
        n_local_crops: number of local crops per image.
        dino_loss_weight, ibot_loss_weight, koleo_loss_weight: the loss weights (1, 1, 0.1 in the recipe).
        centering: ``"centering"`` (softmax centering, UltraDINO) or ``"sinkhorn_knopp"``.
        clip_grad: gradient-norm clip applied to each student submodule separately (0 disables).
        amp: autocast the forward passes (bf16 by default; CUDA only in practice).
        amp_dtype: ``"bfloat16"`` or ``"float16"`` (float16 uses a grad scaler).
        train_handlers: ignite/MONAI handlers to attach.
        seed: when not None, the torch RNG (stochastic depth) is reseeded at every iteration
            from ``(seed, rank, iteration)``, so a resumed run draws exactly the noise of an
            uninterrupted one. Data randomness comes from the seeded sample stream.
    """

    def __init__(
        self,
        device: torch.device | str,
        max_epochs: int,
        epoch_length: int,
        train_data_loader: Any,
        student: nn.Module,
        teacher: nn.Module,
        optimizer: torch.optim.Optimizer,
        schedules: DinoSchedules,
        dino_loss: DINOLoss,
        ibot_loss: iBOTPatchLoss,
        koleo_loss: KoLeoLoss | None = None,
        n_local_crops: int = 8,
        dino_loss_weight: float = 1.0,
        ibot_loss_weight: float = 1.0,
        koleo_loss_weight: float = 0.1,
        centering: str = "centering",
        sinkhorn_iterations: int = 3,
        clip_grad: float = 3.0,
        amp: bool = False,
        amp_dtype: str = "bfloat16",
        train_handlers: Sequence | None = None,
        non_blocking: bool = False,
        seed: int | None = 0,
    ) -> None:
        if centering not in ("centering", "sinkhorn_knopp"):
            raise ValueError(f"centering must be 'centering' or 'sinkhorn_knopp', got {centering!r}")
        total_iterations = max_epochs * epoch_length
        if schedules.total_iters < total_iterations:
            raise ValueError(
                f"schedules cover {schedules.total_iters} iterations but the run needs {total_iterations}"
                f" ({max_epochs} epochs x {epoch_length} iterations)"
            )
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            data_loader=train_data_loader,
            epoch_length=epoch_length,
            non_blocking=non_blocking,
            handlers=None,
            amp=amp,
            decollate=False,
        )
        self.student = student
        self.teacher = teacher
        # handlers such as CheckpointSaver and StatsHandler look for `network`/`optimizer`
        self.network = student
        self.optimizer = optimizer
        self.schedules = schedules
        self.dino_loss = dino_loss
        self.ibot_loss = ibot_loss
        self.koleo_loss = koleo_loss
        self.n_local_crops = n_local_crops
        self.dino_loss_weight = dino_loss_weight
        self.ibot_loss_weight = ibot_loss_weight
        self.koleo_loss_weight = koleo_loss_weight
        self.centering = centering
        self.sinkhorn_iterations = sinkhorn_iterations
        self.clip_grad = clip_grad
        self.amp_dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16}[amp_dtype]
        self.seed = seed
        self.teacher.eval()
        for parameter in self.teacher.parameters():
            parameter.requires_grad_(False)
        if train_handlers is not None:
            self._register_handlers(train_handlers)
        self._stream_synced = False
        self.add_event_handler(Events.STARTED, self._mark_stream_unsynced)
        self.add_event_handler(Events.EPOCH_STARTED, self._sync_sample_stream)

    # ------------------------------------------------------------ resumability
    def _mark_stream_unsynced(self, engine: DinoTrainer) -> None:
        self._stream_synced = False

    def _sync_sample_stream(self, engine: DinoTrainer) -> None:
        """Continue a seeded sample stream where the (possibly restored) iteration left off.

        Runs at the first ``EPOCH_STARTED`` of a run: after every ``STARTED`` handler (such
        as a checkpoint loader) and before ignite creates the data-loader iterator.
        """
        if self._stream_synced:
            return
        self._stream_synced = True
        dataset = getattr(self.data_loader, "dataset", None)
        sampler = getattr(self.data_loader, "sampler", None)
        batch_size = getattr(self.data_loader, "batch_size", None)
        if hasattr(dataset, "set_start_iteration"):  # a shard stream (ultradino_monai.data.shards)
            dataset.set_start_iteration(self.state.iteration)
        elif hasattr(sampler, "set_start") and batch_size:
            sampler.set_start(self.state.iteration * batch_size)
        else:
            return
        if self.state.iteration:
            logger.info("continuing the sample stream at iteration %d", self.state.iteration)

    # ----------------------------------------------------------------- helpers
    def _autocast(self):
        device_type = self.state.device.type if isinstance(self.state.device, torch.device) else "cpu"
        return torch.autocast(device_type=device_type, dtype=self.amp_dtype, enabled=bool(self.amp))

    def _teacher_targets(self, global_crops, mask_indices, n_masked_patches, teacher_temp):
        """Teacher CLS probabilities per global view (in crop order) and masked-patch probabilities."""
        with torch.no_grad(), self._autocast():
            output = self.teacher(global_crops, mask_indices=mask_indices)
        cls_logits = output["global_logits"].float()
        patch_logits = output["patch_logits"].float()
        if self.centering == "centering":
            cls_probs = self.dino_loss.softmax_center_teacher(cls_logits, teacher_temp)
            self.dino_loss.update_center(cls_logits)
            patch_probs = self.ibot_loss.softmax_center_teacher(patch_logits, teacher_temp)
            self.ibot_loss.update_center(patch_logits)
        else:
            cls_probs = self.dino_loss.sinkhorn_knopp_teacher(cls_logits, teacher_temp, self.sinkhorn_iterations)
            patch_probs = self.ibot_loss.sinkhorn_knopp_teacher(
                patch_logits, teacher_temp, n_iterations=self.sinkhorn_iterations, n_masked_patches=n_masked_patches
            )
        return cls_probs.chunk(2), patch_probs

    def _check_finite(self, terms: dict[str, torch.Tensor]) -> None:
        for name, value in terms.items():
            if not torch.isfinite(value).all():
                raise NonFiniteLossError(
                    f"iteration {self.state.iteration}: loss term '{name}' is {value.item()}; "
                    "lower the learning rate, enable gradient clipping or disable amp, then resume from the "
                    "last checkpoint"
                )

    # --------------------------------------------------------------- iteration
    def _iteration(self, engine: DinoTrainer, batchdata: dict[str, Any]) -> dict[str, float]:
        step = engine.state.iteration - 1
        if engine.seed is not None:
            torch.manual_seed(mix_seed(engine.seed, engine.state.rank, step))
        values = engine.schedules.at(step)
        lr, wd, last_layer_lr = values["lr"], values["wd"], values["last_layer_lr"]
        momentum, teacher_temp = values["momentum"], values["teacher_temp"]
        apply_optim_scheduler(engine.optimizer, lr=lr, wd=wd, last_layer_lr=last_layer_lr)

        device, non_blocking = engine.state.device, engine.non_blocking
        global_crops = batchdata["global_crops"].to(device, non_blocking=non_blocking)
        local_crops = batchdata["local_crops"].to(device, non_blocking=non_blocking)
        masks = batchdata["masks"].to(device, non_blocking=non_blocking)
        mask_indices = batchdata["mask_indices"].to(device, non_blocking=non_blocking)
        masks_weight = batchdata["masks_weight"].to(device, non_blocking=non_blocking)
        n_masked_patches = batchdata["n_masked_patches"].to(device, non_blocking=non_blocking)
        engine.state.batch = batchdata

        teacher_cls_probs, teacher_patch_probs = engine._teacher_targets(
            global_crops, mask_indices, n_masked_patches, teacher_temp
        )
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)

        student = unwrap_model(engine.student)
        with engine._autocast():
            output = engine.student(global_crops, local_crops, masks=masks, mask_indices=mask_indices)
        global_cls = output["global_cls"]
        global_logits = output["global_logits"].float()
        local_logits = output["local_logits"].float()
        patch_logits = output["patch_logits"].float()

        # the loss skips pairing a global crop with its own teacher view (18 terms for 2 + 8 crops)
        student_views = list(global_logits.chunk(2))
        if engine.n_local_crops:
            student_views += list(local_logits.chunk(engine.n_local_crops))
        dino_term = engine.dino_loss(student_views, list(teacher_cls_probs))
        ibot_term = engine.ibot_loss.forward_masked(
            patch_logits,
            teacher_patch_probs,
            student_masks_flat=masks,
            n_masked_patches=int(n_masked_patches.item()) if n_masked_patches.numel() == 1 else None,
            masks_weight=masks_weight,
        )
        terms = {"dino_loss": dino_term, "ibot_loss": ibot_term}
        if engine.koleo_loss is not None and engine.koleo_loss_weight > 0:
            terms["koleo_loss"] = sum(engine.koleo_loss(view.float()) for view in global_cls.chunk(2))
        loss = (
            engine.dino_loss_weight * terms["dino_loss"]
            + engine.ibot_loss_weight * terms["ibot_loss"]
            + engine.koleo_loss_weight * terms.get("koleo_loss", torch.zeros((), device=global_logits.device))
        )
        terms["loss"] = loss
        engine._check_finite(terms)
        engine.fire_event(IterationEvents.LOSS_COMPLETED)

        engine.optimizer.zero_grad(set_to_none=True)
        if engine.amp and engine.amp_dtype == torch.float16 and engine.scaler is not None:
            engine.scaler.scale(loss).backward()
            engine.scaler.unscale_(engine.optimizer)
            engine._clip_gradients(student)
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
            engine.scaler.step(engine.optimizer)
            engine.scaler.update()
        else:
            loss.backward()
            engine._clip_gradients(student)
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
            engine.optimizer.step()

        update_ema(engine.teacher, student, momentum)
        if engine.centering == "centering":
            engine.dino_loss.apply_center_update()
            engine.ibot_loss.apply_center_update()
        engine.fire_event(IterationEvents.MODEL_COMPLETED)

        output = dict(zip(terms, mean_over_ranks([value.detach() for value in terms.values()]).tolist()))
        output.update(lr=float(lr), wd=float(wd), momentum=float(momentum), teacher_temp=float(teacher_temp))
        return output

    def _clip_gradients(self, student: nn.Module) -> None:
        if self.clip_grad <= 0:
            return
        for submodule in (student.backbone, student.dino_head):
            torch.nn.utils.clip_grad_norm_(submodule.parameters(), self.clip_grad)
