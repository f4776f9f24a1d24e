"""The rounding check of bfloat16 runs: the pure computation on hand-made logits, and a run.

``core.rounding`` turns a measured rounding error into each step's verdict; a tiny model
pruned in bfloat16 records it at every step, and in float32 records None.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from phaseprune.core.objectives import best_candidate, candidate_metrics, objective_key
from phaseprune.core.rounding import difference_error, key_interval, rounding_check, rounding_error

GOLD = np.array([0, 1])
REF = np.array([[2.0, 0.0, 0.0], [0.0, 2.0, 0.0]])


def test_rounding_error_is_the_largest_difference_error_after_the_embeddings():
    exact = np.zeros((2, 3, 3))
    approx = exact.copy()
    approx[0, 0] = [5.0, 0.0, 0.0]  # the embeddings' readout: not a candidate, ignored
    approx[1, 1] = [0.3, 0.0, -0.1]  # differences move by up to 0.4
    approx[0, 2] = [0.2, 0.2, 0.2]  # a common shift moves no difference
    assert difference_error(approx[1, 1], exact[1, 1]) == pytest.approx(0.4)
    assert rounding_error(approx, exact) == pytest.approx(0.4)


def test_margin_gap_against_twice_the_error():
    # mean margins 1.5 and 1.2: a lead of 0.3, against 2 x 0.2 = 0.4 (within) or 2 x 0.1
    chosen = np.array([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    runner = np.array([[1.2, 0.0, 0.0], [0.0, 1.2, 0.0]])
    near = rounding_check("margin", chosen, runner, GOLD, REF, 0.2)
    assert near == {"score": "margin", "gap": 0.3, "bound": 0.4, "within_rounding": True}
    far = rounding_check("margin", chosen, runner, GOLD, REF, 0.1)
    assert far == {"score": "margin", "gap": 0.3, "bound": 0.2, "within_rounding": False}


def test_prob_margin_bound_is_twice_expm1_of_the_error():
    chosen = np.array([[3.0, 0.0, 0.0], [0.0, 3.0, 0.0]])
    runner = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    got = rounding_check("prob-margin", chosen, runner, GOLD, REF, 0.05)
    assert got["score"] == "prob_margin"
    assert got["bound"] == pytest.approx(2 * np.expm1(0.05), abs=1e-6)
    pm = [candidate_metrics(x, GOLD, REF)["prob_margin"] for x in (chosen, runner)]
    assert got["gap"] == pytest.approx(pm[0] - pm[1], abs=1e-6)
    assert got["within_rounding"] is False  # a lead of ~0.42 against ~0.10


def test_kl_gap_is_on_minus_the_mean_kl():
    chosen = REF + 0.01  # a common shift: the same distribution, KL 0
    runner = np.array([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    got = rounding_check("kl", chosen, runner, GOLD, REF, 0.3)
    kl_runner = candidate_metrics(runner, GOLD, REF)["kl"]
    assert got["score"] == "kl" and got["gap"] == pytest.approx(kl_runner, abs=1e-6)
    assert got["bound"] == pytest.approx(0.6) and got["within_rounding"] is (kl_runner <= 0.6)


def test_accuracy_counts_the_items_that_may_flip():
    # chosen: both right, item 1 by 0.1 only; runner-up: item 0 wrong by 0.05
    chosen = np.array([[2.0, 0.0, 0.0], [0.0, 1.0, 0.9]])
    runner = np.array([[1.0, 1.05, 0.0], [0.0, 2.0, 0.0]])
    tight = rounding_check("accuracy", chosen, runner, GOLD, REF, 0.01)
    assert tight == {"score": "accuracy", "gap": 0.5, "bound": 0.0, "within_rounding": False}
    # at 0.2 the chosen's item 1 and the runner-up's item 0 may both flip: a share of 1.0
    loose = rounding_check("accuracy", chosen, runner, GOLD, REF, 0.2)
    assert loose == {"score": "accuracy", "gap": 0.5, "bound": 1.0, "within_rounding": True}


def test_an_accuracy_tie_no_rounding_can_break_goes_to_the_margin():
    chosen = np.array([[3.0, 0.0, 0.0], [0.0, 3.0, 0.0]])
    runner = np.array([[2.0, 0.0, 0.0], [0.0, 2.5, 0.0]])
    got = rounding_check("accuracy", chosen, runner, GOLD, REF, 0.3)
    assert got == {"score": "margin", "gap": 0.75, "bound": 0.6, "within_rounding": False}


@pytest.mark.parametrize("objective", ["accuracy", "margin", "prob-margin", "kl"])
def test_the_interval_holds_the_key_of_every_rounding_within_the_error(objective):
    """Any logits whose differences are within ``error`` have their key inside the interval."""
    rng = np.random.default_rng(0)
    gold = rng.integers(0, 4, 16)
    ref = rng.normal(size=(16, 4))
    for _ in range(50):
        exact = rng.normal(size=(16, 4))
        approx = exact + rng.uniform(-0.1, 0.1, size=exact.shape)  # difference error <= 0.2
        lo, hi = key_interval(objective, approx, gold, ref, 0.2)
        key = objective_key(objective, candidate_metrics(exact, gold, ref))
        assert lo[0] - 1e-9 <= key[0] <= hi[0] + 1e-9


def test_a_check_that_says_outside_rounding_is_never_reversed_by_that_rounding():
    """Outside rounding, no perturbation within the error makes the runner-up the best."""
    rng = np.random.default_rng(1)
    gold = rng.integers(0, 4, 12)
    ref = rng.normal(size=(12, 4))
    checked = 0
    for _ in range(200):
        base = rng.normal(size=(12, 4))
        cands = {0: base + rng.normal(scale=0.3, size=base.shape), 1: base}
        keys = {
            k: objective_key("margin", candidate_metrics(v, gold, ref)) for k, v in cands.items()
        }
        best = best_candidate(keys)
        verdict = rounding_check("margin", cands[best], cands[1 - best], gold, ref, 0.05)
        if verdict["within_rounding"]:
            continue
        checked += 1
        for _ in range(5):
            moved = {k: v + rng.uniform(-0.025, 0.025, v.shape) for k, v in cands.items()}
            again = {
                k: objective_key("margin", candidate_metrics(v, gold, ref))
                for k, v in moved.items()
            }
            assert best_candidate(again) == best
    assert checked > 50


@pytest.fixture(scope="module")
def model_and_items(tmp_path_factory):
    """A seeded random 4-layer Llama, saved, and a 20-item MMLU-style subject."""
    from conftest import spread_llama, write_mmlu_csv
    from tiny_tokenizers import byte_bpe

    path = tmp_path_factory.mktemp("rounding-llama")
    tok = byte_bpe()
    spread_llama(tok, 4, 0.2).save_pretrained(path)
    tok.save_pretrained(path)
    rows = [[f"Item {i}: which fits?", "red", "green", "blue", "black", "ABCD"[i % 4]]
            for i in range(20)]  # fmt: skip
    return path, write_mmlu_csv(tmp_path_factory.mktemp("rounding-items"), {"toy": rows})


def _prune(model_and_items, out, *extra):
    from phaseprune.cli import main
    from phaseprune.runs.files import load_trajectory

    model, data = model_and_items
    argv = ["prune", "--model", str(model), "--task", "mmlu", "--data-dir", str(data),
            "--calib", "8", "--eval", "8", "--steps", "2", "--n-boot", "20", "--quiet",
            "--no-plots", "--strategy", "iterative", "--out", str(out), *extra]  # fmt: skip
    assert main(argv) == 0
    return load_trajectory(out)


def test_bfloat16_run_checks_every_step_and_float32_records_none(model_and_items, tmp_path):
    f32 = _prune(model_and_items, tmp_path / "f32")
    assert [s["precision"] for s in f32["steps"]] == [None, None]
    bf16 = _prune(model_and_items, tmp_path / "bf16", "--dtype", "bfloat16")
    assert bf16["model"]["dtype"] == "bfloat16" and len(bf16["steps"]) == 2
    for step in bf16["steps"]:
        check = step["precision"]
        assert check["dtype"] == "bfloat16" and check["error"] > 0
        assert check["score"] in ("accuracy", "margin")
        assert check["within_rounding"] == (abs(check["gap"]) <= check["bound"])
    # the error is measured once, on the unpruned model: the same at every step
    assert len({s["precision"]["error"] for s in bf16["steps"]}) == 1
    # the gap is the chosen candidate's lead over the best other by the objective's key
    rows = pd.read_parquet(tmp_path / "bf16" / "candidates.parquet")
    for step in bf16["steps"]:
        here = rows[rows.step == step["step"]]
        keys = {int(r.layer): (r.accuracy, r.margin) for r in here.itertuples()}
        chosen = step["removed_layer"]
        runner = best_candidate({k: v for k, v in keys.items() if k != chosen})
        part = ("accuracy", "margin").index(step["precision"]["score"])
        want = keys[chosen][part] - keys[runner][part]
        assert step["precision"]["gap"] == pytest.approx(want, abs=1e-5)


def test_in_float32_restores_every_tensor_bit_for_bit():
    from tiny_models import build_tiny

    from phaseprune.engine.rounding import in_float32

    model = build_tiny("llama").to(torch.bfloat16)
    model.model.rotary_emb.inv_freq = model.model.rotary_emb.inv_freq.float()  # a float32 buffer
    before = {n: t.clone() for n, t in [*model.named_parameters(), *model.named_buffers()]}
    with in_float32(model):
        assert all(p.dtype == torch.float32 for p in model.parameters())
    after = dict([*model.named_parameters(), *model.named_buffers()])
    for name, t in before.items():
        assert after[name].dtype == t.dtype, name
        assert torch.equal(after[name], t), name


def test_a_run_made_with_precision_fast_is_refused_where_its_model_runs_again(
    model_and_items, tmp_path, capsys
):
    """``prune --resume`` and ``export`` refuse it in one line; its numbers still load."""
    import json

    from phaseprune.cli import main
    from phaseprune.runs.files import load_run

    out = tmp_path / "old"
    _prune(model_and_items, out)
    record = json.loads((out / "trajectory.json").read_text())
    record["precision"] = {"mode": "fast", "bound": 0.3}
    record["settings"]["model"]["precision"] = "fast"
    (out / "trajectory.json").write_text(json.dumps(record))
    capsys.readouterr()
    model, data = model_and_items
    resume = ["prune", "--model", str(model), "--task", "mmlu", "--data-dir", str(data),
              "--calib", "8", "--eval", "8", "--steps", "3", "--n-boot", "20", "--quiet",
              "--no-plots", "--strategy", "iterative", "--out", str(out), "--resume"]  # fmt: skip
    for argv in (resume, ["export", str(out), "--step", "1", "--out", str(tmp_path / "x")]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1
        assert "was made with --precision fast, which phaseprune no longer has" in err
        assert "start a new run (--overwrite or another --out)" in err
    assert load_run(out).record["precision"]["mode"] == "fast"  # compare and report read it


def test_the_step_line_says_when_the_decision_was_within_rounding():
    from phaseprune.cli.lines import step_line

    record = {"step": 1, "removed_layer": 2, "phase_of_removed": "silent",
              "eval_accuracy": 0.5, "transition_layer": None}  # fmt: skip
    check = {"dtype": "bfloat16", "error": 0.2, "score": "margin", "gap": 0.1, "bound": 0.4}
    near = step_line({**record, "precision": {**check, "within_rounding": True}})
    assert "decision within bfloat16 rounding of the runner-up" in near
    far = step_line({**record, "precision": {**check, "within_rounding": False}})
    assert "rounding" not in far and "rounding" not in step_line({**record, "precision": None})
