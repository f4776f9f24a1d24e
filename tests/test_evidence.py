"""The study's four claims as numbers: pure functions of hand-made run records.

(``layers_before_collapse``, which claim (d) counts with, is the library's: test_collapse.py.)
"""

import pytest
from phaseprune_study.claims import (
    claims,
    largest_changes,
    phase_effects,
    pileup,
    removal_effects,
    single_removals,
    transition_evidence,
)


def layer(margin, acc):
    return {"margin_mean": margin, "accuracy": acc}


SUMMARY = {
    "layers": [layer(-1, 0.2), layer(-1, 0.25), layer(-0.5, 0.3), layer(2.0, 0.8), layer(3, 0.9)],
    "transition_layer": 3,
    "transition_ci": [3, 3],
    "p_no_transition": 0.0,
}


def traj(strategy, removed, phases, accs, collapse_step=None, base=0.9, transition=3, path=None):
    steps = []
    path = path or [transition] * len(removed)  # the transition after each removal
    for i, (k, ph, a) in enumerate(zip(removed, phases, accs, strict=True)):
        steps.append({"step": i + 1, "removed_layer": k, "phase_of_removed": ph,
                      "eval_accuracy": a, "removed_so_far": removed[: i + 1],
                      "transition_layer": path[i]})  # fmt: skip
    return {
        "strategy": strategy,
        "step0": {"eval_accuracy": base, "transition_layer": transition,
                  "phases": {"layer_phases": ["silent", "silent", "decisive", "decisive"]}},
        "calib_step0": {"accuracy": 0.8},
        "calib_items": [{"id": i} for i in range(10)],
        "steps": steps,
        "collapse": {"step": collapse_step, "reason": "within chance" if collapse_step else None},
    }  # fmt: skip


def test_transition_evidence_measures_the_jump():
    ev = transition_evidence(SUMMARY)
    assert ev["margin_jump"] == pytest.approx(2.5) and ev["accuracy_jump"] == pytest.approx(0.5)
    assert ev["width"] == 0 and ev["sharp"]
    wide = transition_evidence({**SUMMARY, "transition_ci": [1, 4]})
    assert wide["width"] == 3 and wide["sharp"]  # 3 layers is the stated limit
    assert not transition_evidence({**SUMMARY, "transition_ci": [0, 4]})["sharp"]
    none = transition_evidence({**SUMMARY, "transition_layer": None, "transition_ci": None})
    assert none["sharp"] is False and none["margin_jump"] is None


def test_removal_effects_and_phase_grouping_stop_at_collapse():
    t = traj("last", [3, 2, 1, 0], ["decisive", "decisive", "silent", "silent"],
             [0.88, 0.86, 0.3, 0.25], collapse_step=3)  # fmt: skip
    rows = removal_effects(t)
    assert [round(r["delta"], 2) for r in rows] == [-0.02, -0.02, -0.56, -0.05]
    eff = phase_effects([t])
    assert eff["decisive"]["n"] == 2 and eff["decisive"]["mean_delta"] == pytest.approx(-0.02)
    assert eff["silent"]["n"] == 1  # the removal after the collapse is not counted
    assert eff["silent"]["share_collapse_drop"] == 1.0
    assert phase_effects([t], until_collapse=False)["silent"]["n"] == 2
    # once the transition is gone every layer is "silent" by default: those removals don't count
    lost = traj("bi", [1, 0, 2], ["silent"] * 3, [0.6, 0.5, 0.4], path=[None, None, None])
    assert [r["decided_before"] for r in removal_effects(lost)] == [True, False, False]
    assert phase_effects([lost])["silent"]["n"] == 1


def test_single_removals_group_by_phase():
    t = traj("iterative", [3], ["decisive"], [0.9])
    rows = [{"step": 1, "layer": k, "accuracy": a} for k, a in enumerate([0.25, 0.5, 0.8, 0.78])]
    rows.append({"step": 2, "layer": 0, "accuracy": 0.0})  # later steps are ignored
    s = single_removals(t, rows)
    assert s["silent"]["mean_delta"] == pytest.approx((-0.55 - 0.3) / 2)
    assert s["silent"]["share_collapse_drop"] == 1.0
    assert s["decisive"]["worst_delta"] == pytest.approx(-0.02)
    assert s["n_items"] == 10 and s["base_accuracy"] == 0.8
    # phases from elsewhere (an analyze run on more items) regroup the same deltas
    s = single_removals(t, rows, phases=["silent", "decisive", "decisive", "decisive"])
    assert s["silent"]["n"] == 1 and s["decisive"]["n"] == 3
    assert s["decisive"]["worst_delta"] == pytest.approx(-0.3)


def test_single_removals_paired_intervals_from_picks():
    t = traj("iterative", [3], ["decisive"], [0.9])
    gold = [i % 4 for i in range(40)]
    t |= {"calib_items": list(range(40)), "calib_gold": gold, "calib_picks": gold}  # all right
    lose_half = [g if i % 2 else (g + 1) % 4 for i, g in enumerate(gold)]
    lose_one = [g if i else (g + 1) % 4 for i, g in enumerate(gold)]
    rows = [
        {"step": 1, "layer": 0, "accuracy": 0.5, "picks": lose_half},
        {"step": 1, "layer": 1, "accuracy": 0.975, "picks": lose_one},
        {"step": 1, "layer": 2, "accuracy": 1.0, "picks": gold},
        {"step": 1, "layer": 3, "accuracy": 1.0},
    ]  # fmt: skip (layer 3: an older row)
    t["calib_step0"] = {"accuracy": 1.0}
    s = single_removals(t, rows)
    by = {r["layer"]: r for r in s["layers"]}
    lo, hi = by[0]["delta_ci"]
    assert lo < -0.5 < hi < 0 and by[0]["items_lost"] == 20 and by[0]["items_gained"] == 0
    lo, hi = by[1]["delta_ci"]  # one item of 40 lost: the interval reaches zero
    assert lo < 0 and hi == 0 and by[1]["items_lost"] == 1
    assert by[2]["delta_ci"] == [0.0, 0.0] and "delta_ci" not in by[3]
    assert s["silent"]["n_hurt_sure"] == 1 and s["decisive"]["n_hurt_sure"] == 0


def test_claims_verdicts():
    pa = traj("phase-aware", [3, 2, 1], ["decisive"] * 2 + ["silent"], [0.9, 0.88, 0.3], 3)
    bi = traj("block-influence", [1, 3], ["silent", "decisive"], [0.3, 0.25], 1)
    it = traj("iterative", [3], ["decisive"], [0.9])
    rows = [{"step": 1, "layer": k, "accuracy": a} for k, a in enumerate([0.25, 0.5, 0.8, 0.78])]
    c = claims(SUMMARY, [pa, bi, it], single_removals(it, rows))
    assert c["a"]["verdict"] and c["b"]["verdict"] and c["c"]["verdict"] and c["d"]["verdict"]
    assert c["d"]["evidence"]["phase-aware"]["removed"] == 2
    # a model that never decides: (a) false, (c) and (d) not testable
    flat = {**SUMMARY, "transition_layer": None, "transition_ci": None}
    never = [traj(s, [1], ["silent"], [0.25], None, base=0.25, transition=None)
             for s in ("phase-aware", "block-influence")]  # fmt: skip
    c = claims(flat, never)
    assert c["a"]["verdict"] is False and c["c"]["verdict"] is None and c["d"]["verdict"] is None
    assert c["b"]["verdict"] is None  # no Decisive-Phase layer was ever removed


def test_claim_b_on_the_threshold_counts_whole_items_not_floating_point():
    """ARC's case: the Decisive layers lose 6 of 120 items on average, exactly the 5-point
    line, which floating point puts below it; one item more is beyond it."""
    t = traj("iterative", [3], ["decisive"], [0.9])
    t["calib_step0"] = {"accuracy": 60 / 120}

    def judged(decisive_items):
        rows = [{"step": 1, "layer": 0, "accuracy": 0.25}, {"step": 1, "layer": 1, "accuracy": 0.3}]
        rows += [{"step": 1, "layer": 2 + i, "accuracy": n / 120}
                 for i, n in enumerate(decisive_items)]  # fmt: skip
        s = single_removals(t, rows)
        return s["decisive"], claims(SUMMARY, [t], s)["b"]["verdict"]

    decisive, verdict = judged([49, 59])  # -11 and -1 items: -6 on average
    assert decisive["mean_delta"] < -0.05  # -0.05000000000000002 in floats
    assert verdict is True
    decisive, verdict = judged([48, 59])  # -6.5 items on average
    assert verdict is False
    # a single removal of exactly 6 items counts as "barely" too
    assert judged([54, 54])[0]["share_barely"] == 1.0


def test_pileup_measures_letter_concentration_per_phase():
    freq = [{"A": 1.0, "B": 0.0}, {"A": 0.8, "B": 0.2}, {"A": 0.5, "B": 0.5}]
    summary = {
        "layers": [{"option_frequency": f, "pick_entropy": 0.0} for f in freq],
        "phases": {"silent": [0, 1], "decisive": [2, 2]},
        "gold_frequency": {"A": 0.5, "B": 0.5},
    }
    p = pileup(summary)
    assert p["silent"]["mean_top_share"] == pytest.approx(0.9)
    assert p["silent"]["top_letters"] == {"A": 2} and p["silent"]["layers_with_top_over_90"] == 1
    assert p["decisive"]["n_layers"] == 1 and p["gold_top_share"] == 0.5


def test_largest_changes():
    a = traj("a", [3, 2], ["decisive", "decisive"], [0.7, 0.95])
    b = traj("b", [1], ["silent"], [0.2])
    ch = largest_changes([a, b])
    assert (ch["rise"]["strategy"], ch["rise"]["step"]) == ("a", 2)
    assert ch["rise"]["delta"] == pytest.approx(0.25)
    assert (ch["drop"]["strategy"], ch["drop"]["layer"]) == ("b", 1)
    assert largest_changes([]) == {"rise": None, "drop": None}
