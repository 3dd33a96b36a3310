"""KoLeo (Kozachenko-Leonenko) differential-entropy regulariser (docs/recipe.md §2.2).

For a batch ``x_1..x_n`` (student backbone CLS tokens of *one* global view)::

    z_i    = x_i / ||x_i||
    nn(i)  = argmax_{j != i} <z_i, z_j>          (nearest neighbour on the sphere)
    L      = -(1/n) sum_i log(||z_i - z_nn(i)|| + eps),   eps = 1e-8

Computed in float32 with autocast disabled. The recipe's weight 0.1 and the sum over
the two global views (never across views of the same image) are applied by the caller::

    koleo_total = 0.1 * sum(KoLeoLoss()(cls) for cls in student_global_cls.chunk(2))
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["KoLeoLoss"]

logger = logging.getLogger(__name__)


class KoLeoLoss(nn.Module):
    """KoLeo loss of a batch of vectors ``[n, D] -> scalar`` (n >= 2).

    Args:
        eps: added inside the log (and used by the L2 normalisation), 1e-8 as DINOv2.

    Note: DINOv2 measures ``||z_i - z_nn + eps||`` with ``nn.PairwiseDistance(eps=1e-8)``;
    here the distance is exact and eps enters only in the log, the documented form. The
    two differ by at most ~1e-8 in the distance.
    """

    def __init__(self, eps: float = 1e-8) -> None:
        super().__init__()
        self.eps = eps

    @staticmethod
    def nearest_neighbours(z: torch.Tensor) -> torch.Tensor:
        """Index of each row's nearest other row by maximum inner product; ``[n, D] -> [n]``."""
        dots = z @ z.t()
        # Rows are unit norm, so inner products are >= -1; -2 on the diagonal excludes self.
        dots.fill_diagonal_(-2.0)
        return dots.argmax(dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 2:
            raise ValueError(f"KoLeoLoss expects [n, D] vectors, got shape {tuple(x.shape)}")
        if x.shape[0] < 2:
            raise ValueError(f"KoLeoLoss needs at least 2 vectors to find neighbours, got {x.shape[0]}")
        with torch.autocast(device_type=x.device.type, enabled=False):
            z = F.normalize(x.float(), p=2, dim=-1, eps=self.eps)
            with torch.no_grad():
                neighbour = self.nearest_neighbours(z)
            distances = torch.linalg.vector_norm(z - z[neighbour], ord=2, dim=-1)
            return -torch.log(distances + self.eps).mean()
