"""Phase-aware's variants (--spare, --after-decisive), the score store, and per-item outcomes,
on the trained tiny decider (6 layers, a real decision transition)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from phaseprune.cli import main


def _run(decider, out, *extra, steps=4):
    argv = ["prune", "--model", str(decider.path), "--task",
            f"jsonl:{decider.path / 'eval.jsonl'}", "--steps", str(steps), "--calib", "20",
            "--eval", "40", "--n-boot", "50", "--quiet", "--no-plots", "--out", str(out),
            *map(str, extra)]  # fmt: skip
    assert main(argv) == 0
    return json.loads((out / "trajectory.json").read_text())


def _without_timing(traj):
    return {k: v for k, v in traj.items() if k not in ("timing", "created", "settings")}


def test_every_readout_keeps_each_items_pick_and_margin(decider, tmp_path):
    traj = _run(decider, tmp_path / "r", "--strategy", "last", steps=2)
    gold = np.array(traj["eval_gold"])
    assert len(gold) == len(traj["eval_items"]) == 40
    for record in [traj["step0"], *traj["steps"]]:
        picks = np.array(record["eval_picks"])
        assert (picks == gold).mean() == pytest.approx(record["eval_accuracy"])
        margins = np.array(record["eval_margins"])
        # a correct pick has a positive margin, a wrong one a negative (or zero) margin
        assert np.all((margins > 0) == (picks == gold))
        assert np.mean(margins) == pytest.approx(record["layers"][-1]["margin_mean"], abs=1e-3)


def test_spare_keeps_the_worst_single_removals(decider, tmp_path):
    spared = _run(decider, tmp_path / "pa", "--strategy", "phase-aware", "--spare", "2",
                  "--after-decisive", "objective", "--objective", "accuracy",
                  steps=4)  # fmt: skip
    it = _run(decider, tmp_path / "it", "--strategy", "iterative", steps=1)
    scan = spared["steps"][0]["calib_phases"]["builder_scan"]
    # the scan is iterative step 1's candidate scores
    cands = pd.read_parquet(tmp_path / "it" / "candidates.parquet")
    for layer, score in scan.items():
        assert cands.set_index("layer").loc[int(layer), "score"] == pytest.approx(score)
    keys = cands.set_index("layer")
    worst = sorted(scan, key=lambda k: (scan[k], keys.loc[int(k), "margin"], -int(k)))[:2]
    builders = spared["steps"][0]["calib_phases"]["builders"]
    assert builders == sorted(int(k) for k in worst)
    removed = [k for s in spared["steps"] for k in s["removed_layers"]]
    assert not set(removed) & set(builders)
    assert it["steps"][0]["removed_layers"][0] not in builders  # the best is never a builder
    # every candidate keeps each calibration item's pick: its accuracy, item by item
    gold = np.array(it["calib_gold"])
    for _, row in cands.iterrows():
        assert (np.array(row["picks"]) == gold).mean() == pytest.approx(row["accuracy"])
    assert (np.array(it["calib_picks"]) == gold).mean() == pytest.approx(
        it["calib_step0"]["accuracy"]
    )


def test_after_decisive_objective_takes_the_best_candidate(decider, tmp_path):
    traj = _run(decider, tmp_path / "pa", "--strategy", "phase-aware", "--decisive", "objective",
                "--after-decisive", "objective", "--spare", "0", "--objective", "accuracy",
                steps=4)  # fmt: skip
    cands = pd.read_parquet(tmp_path / "pa" / "candidates.parquet")
    after = [s for s in traj["steps"] if s["note"] and s["note"].startswith("after the Decisive")]
    assert after, "the decider's Decisive Phase is exhausted within 4 steps"
    for s in after:
        rows = cands[cands.step == s["step"]]
        best = rows.sort_values(["score", "layer"], ascending=[False, True]).iloc[0]
        assert s["removed_layer"] == best.layer
        assert s["criterion"].startswith("calibration accuracy")


def test_phase_aware_scores_by_kl_unless_told(decider, tmp_path):
    # kl is phase-aware's default objective (the ablation's best on Qwen/MMLU), accuracy
    # iterative's; the step's criterion and the record say which was used
    traj = _run(decider, tmp_path / "pa", "--strategy", "phase-aware", "--decisive", "objective",
                "--after-decisive", "objective", "--spare", "0", steps=1)  # fmt: skip
    assert traj["objective"] == traj["settings"]["objective"] == "kl"
    assert "option KL" in traj["steps"][0]["criterion"]
    it = _run(decider, tmp_path / "it", "--strategy", "iterative", steps=1)
    assert it["objective"] == "accuracy"


def test_after_decisive_transition_checks_and_records(decider, tmp_path):
    traj = _run(decider, tmp_path / "pa", "--strategy", "phase-aware", "--decisive", "objective",
                "--after-decisive", "transition", "--spare", "0", steps=4)  # fmt: skip
    after = [s for s in traj["steps"] if s["note"] and s["note"].startswith("after the Decisive")]
    assert after
    for s in after:
        checks = s["calib_phases"]["transition_checks"]
        assert 1 <= len(checks) <= 4
        assert all(not c["kept"] for c in checks[:-1])  # stops at the first that keeps it
        if checks[-1]["kept"]:
            assert s["removed_layer"] == checks[-1]["layer"]
            assert "keeps the calibration transition" in s["note"]
        else:
            assert "none of the best" in s["note"]


@pytest.mark.parametrize(
    "strategy",
    [["iterative"], ["phase-aware", "--spare", "1", "--after-decisive", "transition"],
     ["sleb"], ["ppl"], ["logit-js"]],
)  # fmt: skip
def test_score_cache_changes_nothing_and_is_reused(decider, tmp_path, strategy):
    plain = _run(decider, tmp_path / "plain", "--strategy", *strategy, steps=3)
    store = tmp_path / "store"
    first = _run(decider, tmp_path / "a", "--strategy", *strategy, "--score-cache", store, steps=3)
    second = _run(decider, tmp_path / "b", "--strategy", *strategy, "--score-cache", store, steps=3)
    assert _without_timing(first) == _without_timing(plain)
    assert _without_timing(second) == _without_timing(plain)
    assert first["fingerprint"] == plain["fingerprint"]  # the cache is not a setting
    assert first["timing"]["score_cache"]["misses"] > 0
    assert second["timing"]["score_cache"]["misses"] == 0  # nothing ran the model again
    assert pd.read_parquet(tmp_path / "b" / "candidates.parquet").equals(
        pd.read_parquet(tmp_path / "plain" / "candidates.parquet")
    )


def test_score_cache_is_keyed_by_the_items(decider, tmp_path):
    store = tmp_path / "store"
    _run(decider, tmp_path / "a", "--strategy", "last", "--score-cache", store, steps=1)
    other = ["--strategy", "last", "--score-cache", store, "--seed", "1"]
    traj = _run(decider, tmp_path / "b", *other, steps=1)
    assert traj["timing"]["score_cache"]["hits"] > 0  # the seed does not change the logits
    argv_items = ["--strategy", "last", "--score-cache", store, "--calib", "21"]
    traj = _run(decider, tmp_path / "c", *argv_items, steps=1)
    assert traj["timing"]["score_cache"]["hits"] == 0  # other calibration items: a new key
    assert len(list(store.iterdir())) == 2


@pytest.mark.parametrize("own", [True, False], ids=["own-store", "score-cache"])
@pytest.mark.parametrize(
    ("strategy", "kind"), [("iterative", "candidates"), ("sleb", "nll"), ("logit-js", "js")]
)
def test_an_interrupted_scan_keeps_the_candidates_it_finished(
    decider, tmp_path, monkeypatch, strategy, kind, own
):
    """Killed part-way through a step's scan, the rerun scores only the candidates not kept:
    in the run's own store (OUT/score-cache, no flag) or in a --score-cache folder."""
    from phaseprune.runs.score_store import ScoreStore

    plain = _run(decider, tmp_path / "plain", "--strategy", strategy, steps=2)
    put, kept = ScoreStore.put, []

    def interrupted(self, what, removed, array, candidate=None):
        if what == kind and len(kept) == 3:  # the fourth candidate of step 1: Ctrl-C
            raise KeyboardInterrupt
        put(self, what, removed, array, candidate)
        kept.extend([candidate] if what == kind else [])

    monkeypatch.setattr(ScoreStore, "put", interrupted)
    argv = ["--strategy", strategy, *([] if own else ["--score-cache", tmp_path / "store"])]
    with pytest.raises(AssertionError):  # main returned 130 (interrupted), not 0
        _run(decider, tmp_path / "r", *argv, steps=2)
    assert len(kept) == 3
    fresh = []

    def counted(self, what, removed, array, candidate=None):
        put(self, what, removed, array, candidate)
        fresh.extend([(tuple(removed), candidate)] if what == kind else [])

    monkeypatch.setattr(ScoreStore, "put", counted)
    resumed = _run(decider, tmp_path / "r", *argv, "--resume", steps=2)
    assert _without_timing(resumed) == _without_timing(plain)
    # step 1 scored only the candidates the interrupted scan had not kept
    rows = pd.read_parquet(tmp_path / "plain" / "candidates.parquet")
    scanned = set(rows.loc[rows["step"] == 1, "layer"])
    step1 = [k for removed, k in fresh if removed == ()]
    assert set(kept) | set(step1) == scanned and not set(kept) & set(step1)
    assert (tmp_path / "r" / "score-cache").exists() == own
    if own and strategy == "iterative":  # --overwrite starts the run's own store again
        again = _run(decider, tmp_path / "r", *argv, "--overwrite", steps=1)
        assert again["timing"]["score_cache"]["hits"] == 0


def _tail_steps(traj):
    return [s for s in traj["steps"] if s["note"] and s["note"].startswith("Decisive tail")]


def _late_layers_hurt(decider, path, scale=16.0):
    """A copy of the decider whose last two layers add noise to the residual stream.

    The decision is read before them (as on Qwen2.5-Coder-1.5B, whose readout after layer 23
    is as accurate as the whole model and has three times its margin), so the best cut of
    the Decisive tail lies before the last layer.
    """
    import dataclasses
    import shutil

    import torch
    import transformers as tf

    shutil.copytree(decider.path, path)
    model = tf.AutoModelForCausalLM.from_pretrained(path)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for layer in model.model.layers[-2:]:
            w = layer.mlp.down_proj.weight
            w += scale * w.std() * torch.randn(w.shape, generator=gen)
    model.save_pretrained(path)
    return dataclasses.replace(decider, path=path)


@pytest.mark.parametrize("objective", ["accuracy", "margin"])
def test_decisive_tail_cut_equals_the_readout_at_the_cut(decider, tmp_path, objective):
    """Cutting the tail leaves exactly the unpruned readout at the cut, and it is the best cut."""
    decider = _late_layers_hurt(decider, tmp_path / "hurt")
    traj = _run(decider, tmp_path / "pa", "--strategy", "phase-aware", "--decisive", "tail",
                "--objective", objective, "--after-decisive", "objective", steps=4)  # fmt: skip
    n = decider.n_layers
    first = traj["steps"][0]["calib_phases"]
    tail = first["tail"]
    accuracy = {int(r): v for r, v in tail["accuracy"].items()}
    margin = {int(r): v for r, v in tail["margin"].items()}
    cut, t = tail["cut_at"], first["transition_layer"]
    assert sorted(accuracy) == sorted(margin) == list(range(t, n + 1))
    assert tail["unpruned_accuracy"] == pytest.approx(traj["calib_step0"]["accuracy"])
    assert accuracy[n] == pytest.approx(traj["calib_step0"]["accuracy"])
    # the largest margin among the cuts that keep the unpruned calibration accuracy
    keeping = [r for r in accuracy if accuracy[r] >= tail["unpruned_accuracy"]]
    assert cut in keeping and margin[cut] == max(margin[r] for r in keeping)
    assert cut <= n - 2  # the noisy last two layers are cut (the fixture's point)
    tail_steps = _tail_steps(traj)
    # the last layers go, last first, until the model ends at the cut (or the steps run out)
    removed = [s["removed_layer"] for s in tail_steps]
    assert removed == list(range(n - 1, n - 1 - len(tail_steps), -1))
    assert len(tail_steps) == min(n - cut, 4)
    _run(decider, tmp_path / "it", "--strategy", "iterative", "--objective", objective,
         steps=1)  # fmt: skip
    cands = pd.read_parquet(tmp_path / "it" / "candidates.parquet").set_index("layer")
    # the readout at n - 1 is the model without its last layer, as candidate scoring reads it
    assert accuracy[n - 1] == pytest.approx(cands.loc[n - 1, "accuracy"])
    assert margin[n - 1] == pytest.approx(cands.loc[n - 1, "margin"], abs=1e-5)
    for s in tail_steps:  # each step's evaluation readout is the unpruned one at its last index
        index = n - len(s["removed_so_far"])
        lens = traj["step0"]["layers"][index]
        assert s["eval_accuracy"] == pytest.approx(lens["accuracy"])
        assert s["layers"][-1]["margin_mean"] == pytest.approx(lens["margin_mean"], abs=1e-4)
    if len(tail_steps) == n - cut:  # then the other rules take over
        assert not traj["steps"][len(tail_steps)]["note"].startswith("Decisive tail")


def test_decisive_tail_stops_at_a_protected_layer(decider, tmp_path):
    n = decider.n_layers
    decider = _late_layers_hurt(decider, tmp_path / "hurt")
    traj = _run(decider, tmp_path / "pa", "--strategy", "phase-aware", "--decisive", "tail",
                "--protect", str(n - 2), steps=2)  # fmt: skip
    tail = traj["steps"][0]["calib_phases"]["tail"]
    assert min(map(int, tail["margin"])) == n - 1  # no cut before the protected layer's output
    assert tail["cut_at"] == n - 1  # unprotected, the cut is deeper (the test above)
    assert [s["removed_layer"] for s in _tail_steps(traj)] == [n - 1]
    assert traj["steps"][1]["removed_layer"] != n - 2


def test_step_one_reuses_the_builder_scan(decider, tmp_path, monkeypatch):
    """The decision builders' scan is step 1's candidate scan: each layer is scored once."""
    import phaseprune.strategies.search as search

    scored = []
    real = search.score_removals

    def counting(model, removed, candidates, *args, **kwargs):
        scored.extend((tuple(removed), k) for k in candidates)
        return real(model, removed, candidates, *args, **kwargs)

    monkeypatch.setattr(search, "score_removals", counting)
    traj = _run(decider, tmp_path / "pa", "--strategy", "phase-aware", "--decisive", "objective",
                "--spare", "1", steps=1)  # fmt: skip
    step = traj["steps"][0]
    assert len(step["calib_phases"]["builder_scan"]) == traj["n_layers"]
    assert len(scored) == len(set(scored)) == traj["n_layers"]  # step 1 scored nothing again
    cands = pd.read_parquet(tmp_path / "pa" / "candidates.parquet")
    for row in cands.itertuples():  # its candidates are the scan's scores
        assert step["calib_phases"]["builder_scan"][str(row.layer)] == pytest.approx(row.score)
