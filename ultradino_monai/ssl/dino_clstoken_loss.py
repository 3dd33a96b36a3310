"""DINO CLS-token loss (docs/recipe.md §2.2).

With ``CE(t, s) = -mean_batch sum_k t_k log softmax(s / tau_s)_k`` and ``tau_s = 0.1``::

    L_dino = [ sum_{l in local} sum_{g in global} CE(t_g, s_l)
             + sum_{g != g'} CE(t_g', s_g) ] / n_terms
    n_terms = n_global * (n_global - 1) + n_local * n_global

i.e. a global crop is never matched to the teacher output of its own view. For the
recipe's 2 global + 8 local crops: ``[16 local terms + CE(t2, g1) + CE(t1, g2)] / 18``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .centering import CenteredTeacherLoss

__all__ = ["DINOLoss", "soft_cross_entropy"]

logger = logging.getLogger(__name__)


def soft_cross_entropy(teacher_probs: torch.Tensor, student_logits: torch.Tensor, student_temp: float) -> torch.Tensor:
    """Per-row ``-sum_k t_k log softmax(s / tau_s)_k`` in float32; ``[N, K], [N, K] -> [N]``."""
    log_probs = F.log_softmax(student_logits.float() / student_temp, dim=-1)
    return -(teacher_probs.float() * log_probs).sum(dim=-1)


class DINOLoss(CenteredTeacherLoss):
    """DINO self-distillation loss on CLS tokens, with teacher centering / Sinkhorn.

    Args:
        out_dim: number of prototypes K (65,536 in the recipe).
        student_temp: student temperature (0.1).
        center_momentum: EMA momentum of the teacher center (0.9).

    Typical step (softmax centering)::

        t = loss.softmax_center_teacher(teacher_logits_2B, teacher_temp)   # [2B, K]
        loss.update_center(teacher_logits_2B)          # EMA applied at the next step
        value = loss([s_g1, s_g2, s_l1, ..., s_l8], list(t.chunk(2)))

    The center is updated from the mean over all teacher CLS logits of the step (both
    global views, all ranks).
    """

    def loss_terms(
        self, student_logits_list: Sequence[torch.Tensor], teacher_probs_list: Sequence[torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """The two parts of the loss, each already divided by ``n_terms``.

        Args:
            student_logits_list: student head outputs, one ``[B, K]`` tensor per view.
                The first ``len(teacher_probs_list)`` entries are the global crops in the
                same order as the teacher views; the remaining entries are local crops.
            teacher_probs_list: teacher targets, one ``[B, K]`` tensor per global view
                (rows sum to 1, e.g. from :meth:`softmax_center_teacher`).

        Returns:
            ``{"dino_global_crops_loss": ..., "dino_local_crops_loss": ...}``; their sum is
            the loss returned by :meth:`forward`.
        """
        n_global = len(teacher_probs_list)
        if n_global == 0:
            raise ValueError("teacher_probs_list is empty: the teacher must see at least one global crop")
        if len(student_logits_list) < n_global:
            raise ValueError(
                f"student_logits_list has {len(student_logits_list)} views but the teacher has {n_global} global "
                "views; the first entries of student_logits_list must be the same global crops"
            )
        n_local = len(student_logits_list) - n_global
        n_terms = n_global * (n_global - 1) + n_local * n_global
        if n_terms == 0:
            raise ValueError("no cross-view terms: with one global crop the student needs at least one local crop")
        reference_shape = teacher_probs_list[0].shape
        for i, tensor in enumerate(list(teacher_probs_list) + list(student_logits_list)):
            if tensor.ndim != 2 or tensor.shape != reference_shape or tensor.shape[-1] != self.out_dim:
                raise ValueError(
                    f"all views must be [B, {self.out_dim}] with the same B; view {i} has shape {tuple(tensor.shape)}, "
                    f"expected {tuple(reference_shape)}"
                )

        global_loss = teacher_probs_list[0].new_zeros((), dtype=torch.float32)
        local_loss = global_loss.clone()
        for s_idx, student_logits in enumerate(student_logits_list):
            # One log-softmax per student view, shared by its teacher pairings ([B, K] each, K up to 65k).
            log_probs = F.log_softmax(student_logits.float() / self.student_temp, dim=-1)
            for t_idx, teacher_probs in enumerate(teacher_probs_list):
                if s_idx == t_idx:
                    continue  # a global crop is never matched to its own teacher view
                ce = -(teacher_probs.float() * log_probs).sum(dim=-1).mean()
                if s_idx < n_global:
                    global_loss = global_loss + ce
                else:
                    local_loss = local_loss + ce
        return {"dino_global_crops_loss": global_loss / n_terms, "dino_local_crops_loss": local_loss / n_terms}

    def forward(
        self, student_logits_list: Sequence[torch.Tensor], teacher_probs_list: Sequence[torch.Tensor]
    ) -> torch.Tensor:
        """Scalar DINO loss; argument convention as in :meth:`loss_terms`."""
        terms = self.loss_terms(student_logits_list, teacher_probs_list)
        return terms["dino_global_crops_loss"] + terms["dino_local_crops_loss"]
