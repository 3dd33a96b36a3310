"""iBOT masked-patch loss (docs/recipe.md §2.2).

Only masked patches of the student's global crops are scored; the target for patch p of
crop i is the teacher's output for the same crop and position on the *unmasked* input::

    L_ibot = -(1 / n_crops) sum_i (1 / |M_i|) sum_{p in M_i} sum_k t_{ip,k} log softmax(s_{ip} / tau_s)_k

``n_crops`` is the number of global crops in the batch (2B). A crop with no masked
patches contributes 0 but still counts in ``n_crops``. The per-patch weight
``1 / |M_i|`` is the ``masks_weight`` produced by the collate
(:class:`ultradino_monai.ssl.masking.MultiCropMaskCollate`).
"""

from __future__ import annotations

import logging

import torch
import torch.distributed as dist

from ultradino_monai.utils.distributed import is_distributed

from .centering import CenteredTeacherLoss, sinkhorn_knopp
from .dino_clstoken_loss import soft_cross_entropy

__all__ = ["iBOTPatchLoss", "masks_weight_from_masks"]

logger = logging.getLogger(__name__)


def masks_weight_from_masks(masks: torch.Tensor) -> torch.Tensor:
    """Per-masked-patch weight ``1 / |M_i|`` in ``masks[masks]`` order; ``[n_crops, N] bool -> [M]``."""
    if masks.ndim != 2 or masks.dtype != torch.bool:
        raise ValueError(f"masks must be a [n_crops, N] bool tensor, got {masks.dtype} {tuple(masks.shape)}")
    per_crop = 1.0 / masks.sum(dim=-1).clamp(min=1).float()
    return per_crop.unsqueeze(-1).expand_as(masks)[masks]


class iBOTPatchLoss(CenteredTeacherLoss):  # noqa: N801 (name kept from iBOT / DINOv2)
    """iBOT patch-token loss with teacher centering / Sinkhorn over masked patches.

    Args:
        patch_out_dim: number of prototypes K (the shared DINO head's 65,536 in the recipe).
        student_temp: student temperature (0.1).
        center_momentum: EMA momentum of the center (0.9).

    The center is updated from the mean teacher logits over all masked patches of all
    ranks (see :class:`~ultradino_monai.ssl.centering.CenteredTeacherLoss` for how this
    differs from DINOv2 when ranks hold different numbers of masked patches).
    """

    def __init__(self, patch_out_dim: int, student_temp: float = 0.1, center_momentum: float = 0.9) -> None:
        super().__init__(patch_out_dim, student_temp=student_temp, center_momentum=center_momentum)

    @torch.no_grad()
    def sinkhorn_knopp_teacher(  # type: ignore[override]
        self,
        teacher_logits: torch.Tensor,
        teacher_temp: float,
        n_iterations: int = 3,
        n_masked_patches: int | torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Sinkhorn-Knopp targets for the masked patches ``[M, K]`` of this rank.

        B in the algorithm is the number of masked patches over all ranks: this rank's
        ``n_masked_patches`` (default ``M``) summed with ``all_reduce`` when distributed.
        """
        self._check_logits(teacher_logits, "teacher_logits")
        local = teacher_logits.shape[0] if n_masked_patches is None else int(torch.as_tensor(n_masked_patches).item())
        if local != teacher_logits.shape[0]:
            raise ValueError(
                f"n_masked_patches={local} but teacher_logits has {teacher_logits.shape[0]} rows; "
                "slice off the padding before calling"
            )
        n_global = torch.tensor(float(local), device=teacher_logits.device)
        if is_distributed():
            dist.all_reduce(n_global)
        return sinkhorn_knopp(teacher_logits, teacher_temp, n_iterations, n_samples_global=n_global)

    def forward_masked(
        self,
        student_patch_logits_masked: torch.Tensor,
        teacher_probs_masked: torch.Tensor,
        student_masks_flat: torch.Tensor,
        n_masked_patches: int | torch.Tensor | None = None,
        masks_weight: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Scalar iBOT loss over masked patches (formula in the module docstring).

        Args:
            student_patch_logits_masked: ``[M', K]`` student head outputs of the masked
                patches, in ``student_masks_flat[student_masks_flat]`` order (crop-major).
                ``M' >= M`` is allowed (a buffer padded to the collate's ``upperbound``);
                only the first ``n_masked_patches`` rows are used.
            teacher_probs_masked: ``[M, K]`` (or ``[M', K]``) teacher targets, same order.
            student_masks_flat: ``[n_crops, N]`` bool masks of the global crops.
            n_masked_patches: M; default ``student_masks_flat.sum()``.
            masks_weight: ``[M]`` per-patch weights; default ``1 / |M_i|`` from the masks.
        """
        if student_masks_flat.ndim != 2 or student_masks_flat.dtype != torch.bool:
            raise ValueError(
                "student_masks_flat must be a [n_crops, N] bool tensor, got "
                f"{student_masks_flat.dtype} {tuple(student_masks_flat.shape)}"
            )
        n_crops = student_masks_flat.shape[0]
        if n_crops == 0:
            raise ValueError("student_masks_flat has no crops")
        n_true = int(student_masks_flat.sum().item())
        n_used = n_true if n_masked_patches is None else int(torch.as_tensor(n_masked_patches).item())
        if n_used != n_true:
            raise ValueError(f"n_masked_patches={n_used} but student_masks_flat has {n_true} masked patches")
        named_inputs = {
            "student_patch_logits_masked": student_patch_logits_masked,
            "teacher_probs_masked": teacher_probs_masked,
        }
        for name, tensor in named_inputs.items():
            if tensor.ndim != 2 or tensor.shape[-1] != self.out_dim or tensor.shape[0] < n_used:
                raise ValueError(f"{name} must be [M >= {n_used}, {self.out_dim}], got shape {tuple(tensor.shape)}")
        if masks_weight is None:
            masks_weight = masks_weight_from_masks(student_masks_flat)
        if masks_weight.shape != (n_used,):
            raise ValueError(f"masks_weight must have shape ({n_used},), got {tuple(masks_weight.shape)}")

        ce = soft_cross_entropy(teacher_probs_masked[:n_used], student_patch_logits_masked[:n_used], self.student_temp)
        return (ce * masks_weight.to(ce)).sum() / n_crops
