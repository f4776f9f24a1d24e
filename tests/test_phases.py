"""The phase rule on synthetic curves."""

import numpy as np
import pytest

from phaseprune.core.phases import detect_phases, find_transition


def synthetic(acc_by_layer, margin_by_layer, n_items=400, seed=0):
    """Per-item correctness and margins whose layer means follow the given curves."""
    rng = np.random.default_rng(seed)
    acc = np.asarray(acc_by_layer)
    correct = rng.random((n_items, acc.size)) < acc
    margin = np.asarray(margin_by_layer) + rng.normal(0, 0.05, size=(n_items, acc.size))
    return correct, margin


def test_sharp_step():
    acc = [0.25] * 10 + [0.9] * 6
    margin = [-1.0] * 10 + [2.0] * 6
    res = detect_phases(*synthetic(acc, margin), 4, n_boot=300)
    assert res.transition_layer == 10
    assert res.transition_ci == (10, 10)
    assert res.silent == (0, 9) and res.decisive == (10, 15)
    assert res.layer_phase(8) == "silent" and res.layer_phase(9) == "decisive"
    assert res.p_no_transition == 0.0


def test_gradual_rise_has_wider_interval():
    layers = 16
    acc = np.linspace(0.2, 0.55, layers)  # margin is positive early; accuracy decides
    margin = np.linspace(0.1, 1.0, layers)
    res = detect_phases(*synthetic(acc, margin, n_items=150), 4, n_boot=500)
    assert res.transition_layer is not None and 3 < res.transition_layer < layers
    lo, hi = res.transition_ci
    assert hi - lo >= 1


def test_no_rise_is_null_with_statement():
    correct, margin = synthetic([0.25] * 12, [-0.5] * 12)
    res = detect_phases(correct, margin, 4, n_boot=200)
    assert res.transition_layer is None and res.decisive is None
    assert res.silent == (0, 11)
    assert "does not decide" in res.statement()
    assert res.p_no_transition > 0.9


def test_late_dip_moves_transition_after_dip():
    acc = [0.25] * 4 + [0.9] * 4 + [0.3] + [0.9] * 3
    margin = [-1.0] * 4 + [2.0] * 4 + [-0.5] + [2.0] * 3
    res = detect_phases(*synthetic(acc, margin), 4, n_boot=200)
    assert res.transition_layer == 9


def test_final_dip_means_no_transition():
    acc = [0.25] * 4 + [0.9] * 6 + [0.25]
    margin = [-1.0] * 4 + [2.0] * 6 + [-1.0]
    res = detect_phases(*synthetic(acc, margin), 4, n_boot=200)
    assert res.transition_layer is None


def test_accuracy_above_chance_required():
    # margin positive everywhere but accuracy at chance: no decision
    assert find_transition(np.full(5, 0.2), np.ones(5), 0.25) == -1
    # vectorised over a batch of curves
    got = find_transition(np.array([[0.1, 0.5, 0.5], [0.5, 0.5, 0.5]]), np.ones((2, 3)), 0.25)
    np.testing.assert_array_equal(got, [1, 0])


@pytest.mark.parametrize("seed", [0, 1])
def test_deterministic_given_seed(seed):
    data = synthetic(np.linspace(0.25, 0.8, 8), np.linspace(-1, 1, 8), n_items=100, seed=3)
    a = detect_phases(*data, 4, n_boot=100, seed=seed)
    b = detect_phases(*data, 4, n_boot=100, seed=seed)
    assert a == b
