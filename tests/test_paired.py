"""Paired comparisons (``ultradino_monai.evaluation.paired``) against intervals computed by hand."""

from __future__ import annotations

import math

import pytest
from scipy import stats

from ultradino_monai.evaluation.paired import (
    AHEAD,
    BEHIND,
    WITHIN_NOISE,
    paired_by_key,
    paired_difference,
    t_half_width,
    verdict_of,
)

# two-sided 95 % Student t quantiles t_{0.975, df}, from printed tables
T975 = {1: 12.706205, 2: 4.302653, 3: 3.182446}


def test_table_quantiles_are_scipys():
    for df, value in T975.items():
        assert stats.t.ppf(0.975, df) == pytest.approx(value, abs=1e-6)


def test_error_bar_half_width_is_t_times_sem():
    # the figures' error bar of a mean: SEM 0.5 over 2 runs -> 12.706 * 0.5; over 4 runs -> 3.182 * 0.5
    assert t_half_width(0.5, 2) == pytest.approx(6.353103)
    assert t_half_width(0.5, 4) == pytest.approx(1.591223)
    assert t_half_width(0.5, 1) == math.inf


def test_ahead_four_pairs_by_hand():
    # differences 0.05, 0.04, 0.03, 0.03: mean 0.0375; squared deviations sum to 2.75e-4, sd = sqrt(2.75e-4 / 3)
    result = paired_difference([0.70, 0.74, 0.69, 0.72], [0.65, 0.70, 0.66, 0.69])
    sd = math.sqrt(2.75e-4 / 3)
    half = T975[3] * sd / 2.0
    assert result.n == 4
    assert result.mean_difference == pytest.approx(0.0375)
    assert result.sd == pytest.approx(sd)
    assert (result.low, result.high) == (pytest.approx(0.0375 - half), pytest.approx(0.0375 + half))
    assert result.low == pytest.approx(0.022265, abs=1e-6) and result.high == pytest.approx(0.052735, abs=1e-6)
    assert result.verdict == AHEAD


def test_within_noise_two_draws_that_disagree():
    # as the demo's JNU p = 4 cells: one draw +0.10, the other -0.05; t with 1 df makes the interval +-0.95
    result = paired_difference([0.80, 0.60], [0.70, 0.65])
    sd = 0.15 / math.sqrt(2)
    half = T975[1] * sd / math.sqrt(2)  # = 12.706205 * 0.075
    assert result.mean_difference == pytest.approx(0.025)
    assert result.low == pytest.approx(0.025 - half) and result.high == pytest.approx(0.025 + half)
    assert result.low == pytest.approx(-0.927965, abs=1e-6)
    assert result.verdict == WITHIN_NOISE


def test_behind_three_pairs_by_hand():
    # differences -0.10, -0.09, -0.11: mean -0.10, sd 0.01
    result = paired_difference([0.50, 0.52, 0.49], [0.60, 0.61, 0.60])
    half = T975[2] * 0.01 / math.sqrt(3)
    assert result.mean_difference == pytest.approx(-0.10)
    assert result.high == pytest.approx(-0.10 + half) and result.high == pytest.approx(-0.075158, abs=1e-6)
    assert result.verdict == BEHIND


def test_pairing_matters_unpaired_means_would_say_noise():
    # the arms' spreads overlap widely, but every pair moves together: the paired interval excludes 0
    treatment = [0.30, 0.55, 0.80, 0.45]
    baseline = [0.28, 0.52, 0.78, 0.42]
    assert paired_difference(treatment, baseline).verdict == AHEAD
    assert paired_difference(treatment, baseline[::-1]).verdict == WITHIN_NOISE


def test_one_pair_cannot_decide():
    result = paired_difference([0.9], [0.1])
    assert result.n == 1 and result.mean_difference == pytest.approx(0.8)
    assert result.low == -math.inf and result.high == math.inf and result.verdict == WITHIN_NOISE


def test_verdict_edges_and_confidence():
    assert verdict_of(0.0, 0.2) == WITHIN_NOISE and verdict_of(-0.2, 0.0) == WITHIN_NOISE
    assert verdict_of(1e-9, 0.2) == AHEAD and verdict_of(-0.2, -1e-9) == BEHIND
    # a 50 % interval is narrower than the 95 % one around the same mean
    wide = paired_difference([0.80, 0.60], [0.70, 0.65])
    narrow = paired_difference([0.80, 0.60], [0.70, 0.65], confidence=0.5)
    assert narrow.high - narrow.low == pytest.approx(2 * stats.t.ppf(0.75, 1) * 0.075)
    assert narrow.high - narrow.low < wide.high - wide.low


def test_keyed_pairs_use_common_keys_only():
    treatment = {("s0", 0): 0.6, ("s1", 1): 0.7, ("s2", 2): 0.9}
    baseline = {("s1", 1): 0.5, ("s0", 0): 0.55}
    result, keys = paired_by_key(treatment, baseline)
    assert keys == [("s0", 0), ("s1", 1)]
    assert result.differences == pytest.approx((0.05, 0.2))
    with pytest.raises(ValueError, match="share no"):
        paired_by_key({("a", 0): 0.1}, {("b", 0): 0.2})


@pytest.mark.parametrize(
    "treatment, baseline, message",
    [([0.1, 0.2], [0.1], "one length"), ([], [], "no pairs"), ([float("nan")], [0.1], "finite")],
)
def test_bad_inputs_are_refused(treatment, baseline, message):
    with pytest.raises(ValueError, match=message):
        paired_difference(treatment, baseline)
