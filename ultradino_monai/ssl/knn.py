"""Weighted k-nearest-neighbour classifier on frozen features (DINO / DINOv2 kNN eval).

For a test feature x and the k most cosine-similar training features ``f_1..f_k``
(similarities ``s_j``) with labels ``y_j``::

    score_c(x) = sum_j w_j [y_j == c],   w_j = exp(s_j / T) / sum_i exp(s_i / T)
    prediction = argmax_c score_c(x)

The normalisation of w (DINOv2 uses a softmax, DINO v1 raw ``exp(s / T)``) does not change
the argmax. Defaults k=20, T=0.07 as in DINO. Ties go to the lower class index.

:func:`knn_leave_one_group_out` scores a single labelled set against itself: each sample is
classified by its neighbours from *other* groups only (a group is a patient), so no image is
its own neighbour and no patient's second image leaks its label. On a small monitoring set
this uses every labelled image as a query instead of one held-out section.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

__all__ = ["knn_classify", "knn_accuracy", "knn_leave_one_group_out"]

logger = logging.getLogger(__name__)


def _check_inputs(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor) -> None:
    if train_features.ndim != 2 or test_features.ndim != 2:
        raise ValueError(
            f"features must be [N, D]; got train {tuple(train_features.shape)}, test {tuple(test_features.shape)}"
        )
    if train_features.shape[1] != test_features.shape[1]:
        raise ValueError(f"feature widths differ: train {train_features.shape[1]}, test {test_features.shape[1]}")
    if train_labels.shape != (train_features.shape[0],):
        raise ValueError(f"train_labels must be [{train_features.shape[0]}], got {tuple(train_labels.shape)}")
    if train_features.shape[0] == 0:
        raise ValueError("no training features")
    if train_labels.dtype.is_floating_point or (train_labels < 0).any():
        raise ValueError("train_labels must be non-negative integer class indices")


@torch.no_grad()
def knn_classify(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    k: int = 20,
    temperature: float = 0.07,
    num_classes: int | None = None,
    chunk_size: int = 1024,
) -> torch.Tensor:
    """Predicted class ``[N_test]`` (long) by temperature-weighted kNN votes.

    Args:
        train_features: ``[N_train, D]`` (L2-normalised here, any scale accepted).
        train_labels: ``[N_train]`` integer labels in ``[0, num_classes)``.
        test_features: ``[N_test, D]``.
        k: neighbours; clamped to ``N_train``.
        temperature: T of the vote weights (> 0).
        num_classes: number of classes; default ``max(train_labels) + 1``.
        chunk_size: test rows per similarity block (bounds memory at chunk x N_train).
    """
    _check_inputs(train_features, train_labels, test_features)
    labels = train_labels.long()
    n_classes = _check_vote_args(labels, k, temperature, num_classes)
    k = min(k, train_features.shape[0])
    train = F.normalize(train_features.float(), dim=1)
    predictions = []
    for start in range(0, test_features.shape[0], chunk_size):
        test = F.normalize(test_features[start : start + chunk_size].float().to(train.device), dim=1)
        predictions.append(_vote(test @ train.t(), labels, k, temperature, n_classes))
    if not predictions:
        return torch.empty(0, dtype=torch.long, device=train.device)
    return torch.cat(predictions)


def _check_vote_args(labels: torch.Tensor, k: int, temperature: float, num_classes: int | None) -> int:
    """Validate the vote parameters; returns the number of classes."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    n_classes = int(labels.max()) + 1 if num_classes is None else num_classes
    if int(labels.max()) >= n_classes:
        raise ValueError(f"labels have class {int(labels.max())} but num_classes={n_classes}")
    return n_classes


def _vote(similarities: torch.Tensor, labels: torch.Tensor, k: int, temperature: float, n_classes: int) -> torch.Tensor:
    """``[Q, N]`` similarities (``-inf`` = excluded) -> ``[Q]`` weighted-vote predictions."""
    sims, idx = similarities.topk(k, dim=1)
    weights = torch.softmax(sims / temperature, dim=1)  # excluded neighbours get weight exp(-inf) = 0
    votes = F.one_hot(labels[idx], n_classes).float()  # [Q, k, C]
    scores = (weights.unsqueeze(-1) * votes).sum(dim=1)
    return scores.argmax(dim=1)


@torch.no_grad()
def knn_leave_one_group_out(
    features: torch.Tensor,
    labels: torch.Tensor,
    groups: torch.Tensor,
    k: int = 20,
    temperature: float = 0.07,
    num_classes: int | None = None,
) -> torch.Tensor:
    """Predicted class ``[N]`` of every sample from the samples of the other groups.

    Args:
        features: ``[N, D]`` (L2-normalised here).
        labels: ``[N]`` integer labels in ``[0, num_classes)``.
        groups: ``[N]`` integer group ids (e.g. patients); a sample never votes for its own group.
        k, temperature, num_classes: as in :func:`knn_classify`; k is clamped to the size of the
            smallest pool of other-group samples.
    """
    _check_inputs(features, labels, features)
    if groups.shape != labels.shape:
        raise ValueError(f"groups must be [{labels.shape[0]}], got {tuple(groups.shape)}")
    labels, groups = labels.long(), groups.to(labels.device)
    n_classes = _check_vote_args(labels, k, temperature, num_classes)
    same_group = groups[:, None] == groups[None, :]
    pool = int((~same_group).sum(dim=1).min())
    if pool == 0:
        raise ValueError("leave-one-group-out kNN needs at least two groups")
    normalised = F.normalize(features.float(), dim=1)
    similarities = (normalised @ normalised.t()).masked_fill(same_group, float("-inf"))
    return _vote(similarities, labels, min(k, pool), temperature, n_classes)


@torch.no_grad()
def knn_accuracy(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    k: int = 20,
    temperature: float = 0.07,
    num_classes: int | None = None,
) -> float:
    """Top-1 accuracy in ``[0, 1]`` of :func:`knn_classify` against ``test_labels`` ``[N_test]``."""
    if test_labels.shape != (test_features.shape[0],):
        raise ValueError(f"test_labels must be [{test_features.shape[0]}], got {tuple(test_labels.shape)}")
    if test_labels.numel() == 0:
        raise ValueError("no test samples")
    predictions = knn_classify(train_features, train_labels, test_features, k, temperature, num_classes)
    return float((predictions == test_labels.to(predictions.device).long()).float().mean())
