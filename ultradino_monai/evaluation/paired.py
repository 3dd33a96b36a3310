"""Paired comparisons of two arms: mean difference, its 95 % t interval and a verdict word.

Two arms (a pretrained backbone and a baseline) are *paired* when they ran on the same
training split with the same seed: the split draw is the largest source of variation in the
few-shot protocols (the README's JNU p = 4 Dice moves by 30 points between draws for both
arms alike), and pairing removes it from the comparison. The statistic is the per-pair
difference ``d_i = treatment_i - baseline_i``.

Interval: Student's t interval of the mean difference, ``mean(d) ± t_{1-α/2, n-1} · sd(d) / √n``
(sample sd, ddof = 1). It assumes the differences are roughly normal, which cannot be checked
at n ≤ 10, but it is exact under that assumption and widens honestly as n shrinks (t with 1
degree of freedom is 12.71 for 95 %). A percentile bootstrap over n ≤ 5 pairs has at most
``n^n`` resamples, and its interval is known to undercover badly at such n (it cannot be
wider than the range of the observed differences), so it would call noise a difference.
For n = 1 there is no variance estimate: the interval is (-inf, inf), hence ``within noise``.

Verdict words (:data:`VERDICTS`): ``ahead`` when the interval lies above 0, ``behind`` when it
lies below 0, ``within noise`` when it contains 0 (an endpoint exactly at 0 counts as
containing it).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import stats

__all__ = [
    "AHEAD",
    "BEHIND",
    "WITHIN_NOISE",
    "VERDICTS",
    "PairedComparison",
    "verdict_of",
    "t_half_width",
    "paired_difference",
    "paired_by_key",
]

AHEAD = "ahead"
BEHIND = "behind"
WITHIN_NOISE = "within noise"
VERDICTS = (AHEAD, BEHIND, WITHIN_NOISE)


@dataclass(frozen=True)
class PairedComparison:
    """Result of :func:`paired_difference`, in the units of the inputs (fractions stay fractions).

    ``low`` / ``high`` are ``-inf`` / ``inf`` for n = 1; ``sd`` is the sample sd of the
    differences (0.0 for n = 1); ``differences`` are the per-pair values in input order.
    """

    n: int
    mean_difference: float
    sd: float
    low: float
    high: float
    confidence: float
    verdict: str
    differences: tuple[float, ...]

    def as_dict(self) -> dict[str, Any]:
        document = asdict(self)
        document["differences"] = list(self.differences)
        return document


def verdict_of(low: float, high: float) -> str:
    """``ahead`` if ``low > 0``, ``behind`` if ``high < 0``, else ``within noise``."""
    if low > 0:
        return AHEAD
    if high < 0:
        return BEHIND
    return WITHIN_NOISE


def t_half_width(sem: float, n: int, confidence: float = 0.95) -> float:
    """Half-width ``t_{1-α/2, n-1} · SEM`` of the two-sided t interval of a mean over n values.

    ``inf`` for n < 2 (no variance estimate). The figures draw it as the error bar of a mean, and
    :func:`paired_difference` uses it for the mean difference.
    """
    if n < 2:
        return math.inf
    return float(stats.t.ppf(0.5 + confidence / 2.0, df=n - 1)) * float(sem)


def paired_difference(
    treatment: Sequence[float], baseline: Sequence[float], confidence: float = 0.95
) -> PairedComparison:
    """Mean of ``treatment - baseline`` over pairs, its t interval and the verdict (module docstring).

    Args:
        treatment, baseline: per-pair scores, same length n ≥ 1, pair i = the same split and seed.
        confidence: two-sided coverage of the interval, in (0, 1).

    Raises:
        ValueError: different lengths, no pairs, a non-finite score, or a confidence outside (0, 1).
    """
    a = np.asarray(treatment, dtype=np.float64)
    b = np.asarray(baseline, dtype=np.float64)
    if a.ndim != 1 or a.shape != b.shape:
        raise ValueError(f"paired scores need two 1-D sequences of one length, got {a.shape} and {b.shape}")
    if a.size == 0:
        raise ValueError("paired_difference of no pairs")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("paired scores must be finite numbers")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    differences = a - b
    n = int(differences.size)
    mean = float(differences.mean())
    if n == 1:
        return PairedComparison(1, mean, 0.0, -math.inf, math.inf, confidence, WITHIN_NOISE, (mean,))
    sd = float(differences.std(ddof=1))
    half = t_half_width(sd / math.sqrt(n), n, confidence)
    low, high = mean - half, mean + half
    return PairedComparison(n, mean, sd, low, high, confidence, verdict_of(low, high), tuple(differences.tolist()))


def _sort_key(key: Hashable) -> tuple[str, ...]:
    return tuple(map(str, key)) if isinstance(key, tuple) else (str(key),)


def paired_by_key(
    treatment: Mapping[Hashable, float], baseline: Mapping[Hashable, float], confidence: float = 0.95
) -> tuple[PairedComparison, list[Hashable]]:
    """:func:`paired_difference` over the keys both mappings have (e.g. ``(split_file, seed)``), in sorted order.

    Returns the comparison and the keys used; keys present in only one mapping are not used
    (the caller decides whether that is an error).

    Raises:
        ValueError: no common key.
    """
    keys = sorted(set(treatment) & set(baseline), key=_sort_key)
    if not keys:
        raise ValueError("the two arms share no (split, seed) pair")
    comparison = paired_difference([treatment[k] for k in keys], [baseline[k] for k in keys], confidence)
    return comparison, keys
