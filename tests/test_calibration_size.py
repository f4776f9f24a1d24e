"""The tail rule as a pure function (the library's), and resampling it over calibration sets of
one size (the study's ``calibration_size``)."""

import numpy as np
import pandas as pd
import pytest
from phaseprune_study.calibration_size import draw_indices, readout_arrays, tail_cut_draws

from phaseprune.core.metrics import wilson_interval
from phaseprune.core.phases import detect_phases, find_transition, tail_cut_index
from phaseprune.runs.records import items_table


def test_tail_cut_index_takes_the_largest_margin_that_keeps_the_bar():
    accuracy = [0.2, 0.3, 0.7, 0.8, 0.7, 0.75]
    margin = [-1.0, -0.5, 3.0, 2.0, 5.0, 1.0]
    # index 4 has the largest margin but loses accuracy; of 3 and 5 (keeping 0.75), 3's is larger
    assert tail_cut_index(accuracy, margin, 0.75, 2) == 3
    # the lowest allowed index bounds it: from 4 on only 5 keeps the bar
    assert tail_cut_index(accuracy, margin, 0.75, 4) == 5
    # a bar nothing reaches leaves the model whole
    assert tail_cut_index(accuracy, margin, 0.9, 2) == 5
    # equal margins: the lower index (the deeper cut)
    assert tail_cut_index([0.5, 0.8, 0.8, 0.8], [0.0, 2.0, 2.0, 1.0], 0.8, 1) == 1
    # a first index past the end still considers the last
    assert tail_cut_index(accuracy, margin, 0.75, 9) == 5


def _decider(n_items=200, n_layers=12, t=8, seed=0):
    """Silent before ``t`` (chance, negative margins), decisive after, best at ``t + 1``."""
    rng = np.random.default_rng(seed)
    acc = np.array([0.25] * t + [0.75, 0.85] + [0.8] * (n_layers + 1 - t - 2))
    mean_margin = np.array([-1.0] * t + [1.0, 3.0] + [1.5] * (n_layers + 1 - t - 2))
    correct = rng.random((n_items, n_layers + 1)) < acc
    margin = mean_margin + rng.normal(0, 0.3, size=correct.shape)
    return correct, margin


def test_draws_apply_the_rules_to_each_calibration_set_and_score_the_rest():
    correct, margin = _decider()
    draws = tail_cut_draws(correct, margin, 4, 40, draws=25, seed=3)
    perm = draw_indices(200, 40, 25, 3)
    n = correct.shape[1] - 1
    for d in range(25):  # every draw recomputed by hand from its items
        calib, rest = perm[d, :40], perm[d, 40:]
        assert sorted(np.concatenate([calib, rest])) == list(range(200))  # a permutation
        low, _ = wilson_interval(correct[calib].sum(0), 40, 0.95)
        t = int(find_transition(low, margin[calib].mean(0), 0.25))
        assert draws.transition[d] == t
        acc = correct[calib].mean(0)
        cut = n if t < 0 else tail_cut_index(acc, margin[calib].mean(0), acc[n], t)
        assert draws.cut[d] == cut
        assert draws.held_out[d] == pytest.approx(correct[rest, cut].mean())
        assert draws.held_out_unpruned[d] == pytest.approx(correct[rest, n].mean())
    s = draws.summary()
    assert s["draws"] == 25 and s["n_calib"] == 40 and s["n_items"] == 200
    assert sum(s["layers_cut"].values()) == pytest.approx(1.0)
    removed = n - draws.cut
    assert s["mean_layers_cut"] == pytest.approx(removed.mean())
    assert s["layers_cut"].get(int(removed[0])) == pytest.approx((removed == removed[0]).mean())
    assert s["retention"] == pytest.approx((draws.held_out / draws.held_out_unpruned).mean())


def test_draws_agree_with_the_full_set_when_the_signal_is_strong():
    # 2,000 items: a draw of 1,000 finds the transition and the best cut of the whole set
    correct, margin = _decider(n_items=2000)
    whole = detect_phases(correct, margin, 4, n_boot=50).transition_layer
    assert whole == 8
    acc = correct.mean(0)
    full_cut = tail_cut_index(acc, margin.mean(0), acc[-1], whole)
    assert full_cut == 9
    s = tail_cut_draws(correct, margin, 4, 1000, draws=20).summary()
    assert s["p_no_transition"] == 0.0 and s["transition_range"] == (8, 8)
    assert s["layers_cut"] == {12 - full_cut: 1.0}


def test_readout_arrays_are_items_by_readout_index_in_the_tables_item_order():
    from phaseprune.core.metrics import item_metrics

    rng = np.random.default_rng(1)
    n_items, n_readout, n_options = 5, 4, 3
    logits = rng.normal(size=(n_items, n_readout, n_options))
    gold = rng.integers(0, n_options, n_items)
    metrics = item_metrics(logits, gold)
    ids = [f"q/{i}" for i in (3, 10, 1, 7, 2)]  # not sorted: the run's own order
    table = items_table(ids, ["q"] * n_items, gold, logits, metrics)
    correct, margin, k = readout_arrays(table)
    assert k == n_options
    np.testing.assert_array_equal(correct, metrics.correct)
    np.testing.assert_allclose(margin, metrics.margin, rtol=1e-6)
    # rows in any order: items in the order they first appear, each with its own layers
    shuffled = table.sample(frac=1.0, random_state=0)
    order = [ids.index(i) for i in pd.unique(shuffled["item_id"])]
    correct, margin, _ = readout_arrays(shuffled)
    np.testing.assert_array_equal(correct, metrics.correct[order])
    np.testing.assert_allclose(margin, metrics.margin[order], rtol=1e-6)


def test_a_calibration_set_must_leave_items_out():
    correct, margin = _decider(n_items=50)
    with pytest.raises(ValueError, match="n_calib=50: must be between 1 and 49"):
        tail_cut_draws(correct, margin, 4, 50)


def test_the_tail_statement_says_what_the_cut_would_cost():
    from phaseprune.core.phases import tail_statement

    acc = [0.25, 0.3, 0.66, 0.65, 0.655]
    margin = [-1.0, -0.5, 3.08, 2.0, 1.09]
    assert tail_statement(acc, margin, 2) == (
        "Decisive tail: readout 2 keeps the whole model's accuracy (66.0% against 65.5%) with "
        "the largest margin (3.08 against 1.09): on these items the last 2 layers can go at no "
        "accuracy cost."
    )
    arc = [0.225, 0.61, 0.57, 0.635, 0.665]
    assert tail_statement(arc, [-2.0, 1.67, 1.07, 1.26, 0.78], 1) == (
        "Decisive tail: no shorter Decisive readout keeps the whole model's 66.5% (the best, "
        "readout 3, has 63.5%): the last layers add accuracy on these items, so cutting them "
        "is not free."
    )
    assert tail_statement(arc, [0.0] * 5, 4).endswith("no layer can be cut from the tail.")
    assert tail_statement(arc, [0.0] * 5, None) is None
