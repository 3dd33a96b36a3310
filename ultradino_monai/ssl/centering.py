"""Teacher-target normalisation shared by the DINO and iBOT losses (docs/recipe.md §2.2).

Two ways to turn teacher logits ``h`` ``[B, K]`` into target distributions:

* **Softmax centering** (DINOv2 default, used by UltraDINO)::

      t = softmax((h - c) / tau_t)
      c <- m * c + (1 - m) * mean_batch(h)          (m = 0.9)

  The batch mean is taken over all ranks and the EMA is applied lazily, at the
  *next* call to :meth:`CenteredTeacherLoss.softmax_center_teacher`, exactly like DINOv2's
  asynchronous update: the targets of step i use the center produced by steps < i.

* **Sinkhorn-Knopp** (3 iterations; the big LVD-142M configs use it, UltraDINO does not)::

      Q = exp(h / tau_t)^T                  [K, B], then Q /= sum(Q)
      repeat n: Q /= row sums; Q /= K       (each prototype gets mass 1/K)
                Q /= column sums; Q /= B    (each sample gets mass 1/B)
      return (B * Q)^T                      [B, K], each row sums to 1

  Row sums and the total are all-reduced, so B and the marginals are global.
"""

from __future__ import annotations

import logging

import torch
import torch.distributed as dist
from torch import nn

from ultradino_monai.utils.distributed import get_world_size, is_distributed

__all__ = ["CenteredTeacherLoss", "sinkhorn_knopp"]

logger = logging.getLogger(__name__)


@torch.no_grad()
def sinkhorn_knopp(
    teacher_logits: torch.Tensor,
    teacher_temp: float,
    n_iterations: int = 3,
    n_samples_global: int | torch.Tensor | None = None,
) -> torch.Tensor:
    """Sinkhorn-Knopp equipartition of teacher logits (formula in the module docstring).

    Args:
        teacher_logits: ``[B, K]`` teacher head outputs of this rank (any float dtype;
            computed in fp32).
        teacher_temp: teacher temperature ``tau_t`` (> 0).
        n_iterations: row/column normalisation rounds (3 in DINOv2).
        n_samples_global: number of samples B over all ranks. Default: this rank's
            ``B`` times the world size (right for CLS tokens, where every rank has the
            same batch). For iBOT pass the global count of masked patches.

    Returns:
        ``[B, K]`` float32 assignments; each row sums to 1 and, summed over all ranks,
        each prototype receives about ``B / K`` of the mass.
    """
    if teacher_logits.ndim != 2:
        raise ValueError(f"teacher_logits must be [B, K], got shape {tuple(teacher_logits.shape)}")
    if teacher_temp <= 0:
        raise ValueError(f"teacher_temp must be > 0, got {teacher_temp}")
    if n_iterations < 1:
        raise ValueError(f"n_iterations must be >= 1, got {n_iterations}")
    logits = teacher_logits.float()
    distributed = is_distributed()
    n_local, n_prototypes = logits.shape
    if n_samples_global is None:
        n_samples = float(n_local * get_world_size())
    elif isinstance(n_samples_global, torch.Tensor):
        n_samples = float(n_samples_global.item())
    else:
        n_samples = float(n_samples_global)
    if n_samples <= 0:
        raise ValueError("Sinkhorn-Knopp needs at least one sample over all ranks")

    # Subtracting the global max leaves Q unchanged after the first normalisation but
    # keeps exp() finite for small temperatures.
    global_max = logits.max() if n_local > 0 else logits.new_tensor(float("-inf"))
    if distributed:
        dist.all_reduce(global_max, op=dist.ReduceOp.MAX)
    q = torch.exp((logits - global_max) / teacher_temp).t()  # [K, B]

    total = q.sum()
    if distributed:
        dist.all_reduce(total)
    q /= total
    for _ in range(n_iterations):
        row_sums = q.sum(dim=1, keepdim=True)
        if distributed:
            dist.all_reduce(row_sums)
        # A prototype whose mass underflowed to 0 for every sample stays at 0 instead of NaN.
        q /= row_sums.clamp_(min=torch.finfo(q.dtype).tiny)
        q /= n_prototypes
        q /= q.sum(dim=0, keepdim=True)
        q /= n_samples
    q *= n_samples
    return q.t()


class CenteredTeacherLoss(nn.Module):
    """Base class: a ``center`` buffer ``[1, K]`` with DINOv2's lazy, all-reduced EMA.

    :meth:`update_center` takes the sum of the teacher logits and their count, packed in
    one ``[1, K + 1]`` tensor that is all-reduced (summed) across ranks; the EMA target is
    the global mean ``sum / count`` over every row of every rank. For CLS tokens, where all
    ranks have the same batch, this is exactly DINOv2's rule. For iBOT masked patches
    DINOv2 averages the per-rank means instead; the global mean used here weights each
    patch equally and stays defined when a rank has no masked patch (that rank still joins
    the collective with a zero count, so no rank waits forever).

    The ``center`` is a registered buffer: it moves with ``.to()``, is saved in
    ``state_dict()`` and restored by ``load_state_dict()``. A pending (not yet applied)
    update is *not* part of the state dict; call :meth:`apply_center_update` before
    checkpointing. Applying early gives the same value that the next
    :meth:`softmax_center_teacher` would have applied.

    Args:
        out_dim: number of prototypes K.
        student_temp: student temperature (0.1, hard-coded in DINOv2; docs/recipe.md §2.2).
        center_momentum: EMA momentum m of the center (0.9; docs/recipe.md §2.2).
    """

    center: torch.Tensor

    def __init__(self, out_dim: int, student_temp: float = 0.1, center_momentum: float = 0.9) -> None:
        super().__init__()
        if out_dim < 1:
            raise ValueError(f"out_dim must be >= 1, got {out_dim}")
        if student_temp <= 0:
            raise ValueError(f"student_temp must be > 0, got {student_temp}")
        if not 0.0 <= center_momentum <= 1.0:
            raise ValueError(f"center_momentum must be in [0, 1], got {center_momentum}")
        self.out_dim = out_dim
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(1, out_dim))
        self._pending_sum_and_count: torch.Tensor | None = None
        self._reduce_handle = None

    def _check_logits(self, logits: torch.Tensor, name: str) -> None:
        if logits.ndim != 2 or logits.shape[-1] != self.out_dim:
            raise ValueError(f"{name} must be [N, {self.out_dim}], got shape {tuple(logits.shape)}")

    @torch.no_grad()
    def softmax_center_teacher(self, teacher_logits: torch.Tensor, teacher_temp: float) -> torch.Tensor:
        """Targets ``softmax((h - c) / tau_t)`` over the last dim, float32 ``[N, K]``.

        First applies any pending center update, so the center used here includes every
        batch passed to :meth:`update_center` before this call.
        """
        self._check_logits(teacher_logits, "teacher_logits")
        if teacher_temp <= 0:
            raise ValueError(f"teacher_temp must be > 0, got {teacher_temp}")
        self.apply_center_update()
        return torch.softmax((teacher_logits.float() - self.center) / teacher_temp, dim=-1)

    @torch.no_grad()
    def update_center(self, teacher_logits: torch.Tensor) -> None:
        """Start a center update from this batch of raw teacher logits ``[N, K]``.

        When ``torch.distributed`` is initialised every rank must call this at the same
        step (it launches an asynchronous all-reduce); the EMA itself happens in
        :meth:`apply_center_update`. Rows summed over all ranks == 0 leave the center as is.
        """
        self._check_logits(teacher_logits, "teacher_logits")
        if self._pending_sum_and_count is not None:
            # Two updates without a softmax in between: fold the first in now rather than drop it.
            self.apply_center_update()
        logits = teacher_logits.float()
        count = logits.new_full((1, 1), float(logits.shape[0]))
        self._pending_sum_and_count = torch.cat([logits.sum(dim=0, keepdim=True), count], dim=1)
        if is_distributed():
            self._reduce_handle = dist.all_reduce(self._pending_sum_and_count, async_op=True)

    @torch.no_grad()
    def apply_center_update(self) -> None:
        """Apply the pending EMA ``c <- m c + (1 - m) batch_mean``; no-op if none is pending."""
        if self._pending_sum_and_count is None:
            return
        if self._reduce_handle is not None:
            self._reduce_handle.wait()
            self._reduce_handle = None
        sum_and_count, self._pending_sum_and_count = self._pending_sum_and_count, None
        sum_and_count = sum_and_count.to(self.center.device)
        count = sum_and_count[:, -1:]
        batch_mean = sum_and_count[:, :-1] / count.clamp(min=1.0)
        # Weight (1 - m) when any row was seen, 0 otherwise; tensor ops avoid a host sync.
        step = (count > 0).float() * (1.0 - self.center_momentum)
        self.center.mul_(1.0 - step).add_(batch_mean * step)

    @torch.no_grad()
    def sinkhorn_knopp_teacher(
        self,
        teacher_logits: torch.Tensor,
        teacher_temp: float,
        n_iterations: int = 3,
        n_samples_global: int | torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Sinkhorn-Knopp targets ``[N, K]``; see :func:`sinkhorn_knopp`. Ignores the center."""
        self._check_logits(teacher_logits, "teacher_logits")
        return sinkhorn_knopp(teacher_logits, teacher_temp, n_iterations, n_samples_global)

    def extra_repr(self) -> str:
        return f"out_dim={self.out_dim}, student_temp={self.student_temp}, center_momentum={self.center_momentum}"
