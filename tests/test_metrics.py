"""Metrics against hand-worked examples and references."""

import numpy as np
import pytest
from scipy import stats

from phaseprune.core.metrics import (
    entropy_bits,
    item_metrics,
    layer_stats,
    mean_ci,
    option_frequency,
    wilson_interval,
)


def test_item_metrics_hand_worked():
    # 2 items, 2 readout layers, 3 options
    logits = np.array(
        [
            [[1.0, 3.0, 2.0], [0.0, 0.0, 0.0]],  # gold B: margin 3-2=1; tie -> pick A
            [[5.0, 1.0, 4.0], [2.0, 1.0, 3.0]],  # gold C: margin 4-5=-1; 3-2=1
        ]
    )
    gold = np.array([1, 2])
    m = item_metrics(logits, gold)
    np.testing.assert_allclose(m.margin, [[1.0, 0.0], [-1.0, 1.0]])
    np.testing.assert_array_equal(m.pred, [[1, 0], [0, 2]])
    np.testing.assert_array_equal(m.correct, [[True, False], [False, True]])
    p = np.exp([1.0, 3.0, 2.0]) / np.exp([1.0, 3.0, 2.0]).sum()
    assert m.prob_margin[0, 0] == pytest.approx(p[1] - p[2])
    assert m.prob_margin[0, 1] == pytest.approx(0.0)


def test_margin_equals_logprob_difference_under_any_softmax():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(5, 3, 4))
    gold = rng.integers(0, 4, size=5)
    m = item_metrics(logits, gold)
    # add an arbitrary per-item, per-layer normaliser (as a full-vocab log-softmax would)
    logprobs = logits - rng.normal(size=(5, 3, 1)) * 10
    m2 = item_metrics(logprobs, gold)
    np.testing.assert_allclose(m.margin, m2.margin)


def test_gold_out_of_range():
    with pytest.raises(ValueError, match="gold"):
        item_metrics(np.zeros((2, 1, 4)), np.array([0, 4]))


def test_wilson_matches_scipy():
    for k, n in [(0, 10), (3, 10), (60, 200), (200, 200)]:
        lo, hi = wilson_interval(np.array(k), n)
        ref = stats.binomtest(k, n).proportion_ci(method="wilson")
        assert float(lo) == pytest.approx(ref.low, abs=1e-9)
        assert float(hi) == pytest.approx(ref.high, abs=1e-9)


def test_mean_ci_covers_mean_and_shrinks():
    rng = np.random.default_rng(1)
    small = rng.normal(1.0, 1.0, size=(30, 1))
    big = rng.normal(1.0, 1.0, size=(3000, 1))
    lo_s, hi_s = mean_ci(small)
    lo_b, hi_b = mean_ci(big)
    assert lo_s[0] < small.mean() < hi_s[0]
    assert (hi_b - lo_b)[0] < (hi_s - lo_s)[0]


def test_option_frequency_and_entropy():
    picks = np.array([[0, 1], [0, 2], [0, 3], [0, 0]])  # layer 0 all A; layer 1 uniform
    freq = option_frequency(picks, 4)
    np.testing.assert_allclose(freq, [[1, 0, 0, 0], [0.25, 0.25, 0.25, 0.25]])
    np.testing.assert_allclose(entropy_bits(freq), [0.0, 2.0])


def test_layer_stats_records():
    logits = np.zeros((4, 2, 4))
    logits[:, 1, :] = np.eye(4)  # layer 1 picks A,B,C,D
    gold = np.array([0, 1, 2, 3])
    s = layer_stats(item_metrics(logits, gold), 4, n_boot=200)
    assert [r.layer for r in s] == [0, 1]
    assert s[0].accuracy == 0.25 and s[0].option_frequency == {"A": 1.0, "B": 0, "C": 0, "D": 0}
    assert s[1].accuracy == 1.0 and s[1].margin_mean == 1.0
    assert s[1].accuracy_ci[0] < 1.0 <= s[1].accuracy_ci[1]
