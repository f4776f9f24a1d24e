"""docs/findings.md's "What to do" and pre-registered predictions, from known trajectories.

The runs are built by hand (every item's pick at every depth), so each depth, interval and
verdict the advice states is known before it is computed.
"""

from __future__ import annotations

import pytest
from phaseprune_study.advice import advise, flags
from phaseprune_study.predictions import PREDICTIONS, judge

from phaseprune.core.headtohead import head_to_head

N = 100
GOLD = [i % 4 for i in range(N)]


def _run(strategy: str, rights: list[int], per_step: int = 1) -> dict:
    """A trajectory whose readout at depth ``i * per_step`` gets the first ``rights[i]`` items
    right (the rest wrong), with a made-up accuracy interval that names its depth."""

    def readout(r: int, depth: int) -> dict:
        picks = [g if j < r else (g + 1) % 4 for j, g in enumerate(GOLD)]
        return {"eval_accuracy": r / N, "eval_accuracy_ci": [depth / 100, r / N],
                "eval_picks": picks}  # fmt: skip

    steps = [readout(r, i * per_step) | {"step": i, "removed_so_far": list(range(i * per_step))}
             for i, r in enumerate(rights) if i]  # fmt: skip
    collapse = next((i for i, r in enumerate(rights) if r < rights[0] / 2), None)
    return {"strategy": strategy, "step0": readout(rights[0], 0), "steps": steps,
            "eval_gold": GOLD, "eval_items": [f"i{j}" for j in range(N)],
            "collapse": {"step": collapse}, "complete": True}  # fmt: skip


def _h2h(runs: dict, reference: str, depth: int) -> dict:
    return head_to_head(list(runs.values()), list(runs), reference, depth=depth, n_boot=200)


def test_the_advised_run_is_the_deepest_at_90_with_its_evidence_against_the_next():
    runs = {
        "pa": _run("phase-aware", [80, 79, 75, 60, 50]),  # 90% to 2 (72 is the line)
        "heal-angular": _run("angular", [80, 80, 78, 74, 30]),  # 90% to 3, then collapse
        "last": _run("last", [80, 70, 60, 50, 40]),  # 90% to 0
    }
    settings = {"pa": {"strategy": "phase-aware", "objective": "kl", "steps": 12},
                "heal-angular": {"strategy": "angular", "heal": "linear", "heal_when": "after"},
                "last": {"strategy": "last"}}  # fmt: skip
    ad = advise(_h2h(runs, "pa", 4), runs, settings, references=("pa", "absent"), seed=0)
    assert (ad["run"], ad["depth_90"], ad["collapse_depth"]) == ("heal-angular", 3, 4)
    assert ad["flags"] == "--strategy angular --heal linear --heal-when after"
    assert ad["accuracy_at_90"] == pytest.approx(0.74)
    assert ad["ci_at_90"] == [0.03, 0.74]  # the run's own interval at depth 3
    ru = ad["runner_up"]
    assert (ru["run"], ru["depth_90"]) == ("pa", 2)
    # at depth 3 angular gets 14 more items right and none fewer: a paired win
    assert ru["at_90"]["difference"] == pytest.approx(0.14) and ru["at_90"]["excludes_zero"]
    assert 3 in ru["wins"] and 4 in ru["losses"]  # 30 against 50 at depth 4
    assert ad["references"] == [{"run": "pa", "depth_90": 2, "depth_80": 2}]  # 60 is 75%


def test_a_depth_is_layers_removed_not_steps():
    """A run removing 2 layers a step is read at depth 2, 4, ...: its interval at depth 4 is
    its second step's."""
    runs = {"a": _run("angular", [80, 79, 78], per_step=2), "b": _run("last", [80, 60, 50, 40])}
    ad = advise(_h2h(runs, "a", 3), runs, {"a": {"strategy": "angular"}, "b": {}}, seed=0)
    assert ad["run"] == "a" and ad["depth_90"] == 4 and ad["ci_at_90"] == [0.04, 0.78]


def test_no_advice_before_a_run_reaches_the_depth():
    runs = {"a": _run("angular", [80, 79]), "b": _run("last", [80, 60])}
    assert advise(_h2h(runs, "a", 3), runs, {"a": {}, "b": {}}) == {}


def test_flags_leave_the_depth_to_the_user():
    assert flags({"strategy": "phase-aware", "after_decisive": "transition", "steps": 8}) == (
        "--strategy phase-aware --after-decisive transition"
    )


def test_predictions_are_judged_as_the_runs_fall_and_final_only_when_all_are_in():
    h2h = {"verdict": {"outcome": "tied", "depth_90": 2, "best_other_depth_90": 2,
                       "best_other": "taylor", "supported": False},
           "unfinished": [], "missing": []}  # fmt: skip
    healed = {"healed": {"verdict": {"supported": True, "depth_90": 7, "outcome": "deeper",
                                     "best_other_depth_90": 5, "best_other": "heal-angular"}},
              "unfinished": ["heal-last"], "missing": []}  # fmt: skip
    got = judge(tuple(PREDICTIONS), h2h, healed)
    assert [(p["held"], p["final"]) for p in got] == [(True, True), (False, False), (False, False)]
    assert got[0]["observed"] == (
        "2 against 2 for the deepest baseline (`taylor`): tied, claim (d) not supported"
    )
    assert got[1]["observed"].startswith("7 against 5 for the deepest baseline")
    # a prediction not supported for another reason than the one it gave says so
    healed["healed"]["verdict"]["supported"] = False
    not_supported = judge(("healed-not-supported",), None, healed)[0]
    assert not_supported["held"] and not_supported["observed"].endswith(
        "deeper, claim (d) not supported; deeper, not the tie or shallower outcome it expected"
    )
    healed["healed"]["verdict"]["supported"] = True
    got = judge(("unhealed-not-deeper", "healed-short-of-7"), None, None)
    assert [(p["held"], p["final"]) for p in got] == [(None, False), (None, False)]
    healed["healed"]["verdict"]["depth_90"] = 6
    assert judge(("healed-short-of-7",), None, healed)[0]["held"] is True
    with pytest.raises(KeyError, match="unknown prediction"):
        judge(("no-such",), h2h, healed)


def test_the_healed_ablation_ranks_phase_aware_variants_by_the_default_rule():
    from phaseprune_study import plans
    from phaseprune_study.ablation import ablation

    healed = {"heal": "linear", "heal_when": "after", "steps": 4}
    variants = {
        "heal-a": {"strategy": "phase-aware", "spare": 7, **healed},
        "heal-b": {"strategy": "phase-aware", "spare": 0, **healed},
        "heal-c": {"strategy": "angular", **healed},  # not a variant
        "heal-d": {"strategy": "phase-aware", "spare": 3, **healed},  # not run yet
    }
    runs = {"heal-a": _run("phase-aware", [80, 79, 78, 70, 60]),  # 90% to 2
            "heal-b": _run("phase-aware", [80, 79, 78, 77, 70]),  # 90% to 3
            "heal-c": _run("angular", [80, 80, 80, 80, 80])}  # fmt: skip
    ab = ablation(plans.Plan("toy", ""), runs, variants)
    assert (ab["depth"], ab["best"], ab["waiting"]) == (4, "heal-b", ["heal-d"])
    rows = {r["run"]: r for r in ab["rows"]}
    assert set(rows) == {"heal-a", "heal-b"} and rows["heal-a"]["settings"] == {"spare": 7}
    assert (rows["heal-a"]["depth_90"], rows["heal-b"]["depth_90"]) == (2, 3)
    assert rows["heal-a"]["against_best"]["difference"] == pytest.approx(-0.10)  # 60 vs 70
    assert rows["heal-b"]["against_best"] is None
