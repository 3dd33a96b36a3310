"""RankMe: effective rank of an embedding matrix (Garrido et al. 2023; UltraDINO logs it, docs/recipe.md §1.2)::

    sigma = singular values of Z [N, D]
    p_k   = sigma_k / (sum_j sigma_j + eps)
    RankMe = exp(-sum_k p_k log(p_k + eps)),    eps = 1e-7

RankMe is in ``[1, min(N, D)]`` up to eps effects: about ``min(N, D)`` for a full-rank
matrix with equal singular values, 1 for a rank-1 matrix (complete collapse). ``eps``
matches UltraDINO's ``dinov2/eval/rankme.py`` and keeps ``log`` finite for zero
singular values.
"""

from __future__ import annotations

import logging

import torch

__all__ = ["rankme"]

logger = logging.getLogger(__name__)


@torch.no_grad()
def rankme(embeddings: torch.Tensor, eps: float = 1e-7) -> float:
    """RankMe of ``embeddings`` ``[N, D]`` (computed in float32; see the module docstring)."""
    if embeddings.ndim != 2:
        raise ValueError(f"embeddings must be [N, D], got shape {tuple(embeddings.shape)}")
    if embeddings.numel() == 0:
        raise ValueError("embeddings is empty")
    z = embeddings.float()
    if not torch.isfinite(z).all():
        raise ValueError("embeddings contain NaN or Inf")
    singular_values = torch.linalg.svdvals(z)
    p = singular_values / (singular_values.sum() + eps)
    return float(torch.exp(-(p * torch.log(p + eps)).sum()))
