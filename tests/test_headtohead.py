"""The head-to-head statistics (phaseprune.core.headtohead) on trajectories built by hand."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from phaseprune.compare import OUTCOME_WORDS, verdict_sentence
from phaseprune.core.errors import UsageError
from phaseprune.core.headtohead import (
    curve,
    first_below,
    head_to_head,
    mcnemar,
    paired_difference,
    retained_area,
    retention_depth,
)

N = 100
GOLD = [i % 4 for i in range(N)]


def _picks(n_right: int, offset: int = 0) -> list[int]:
    """Picks right on items offset..offset+n_right-1 (cyclically), wrong elsewhere."""
    right = {(offset + i) % N for i in range(n_right)}
    return [g if i in right else (g + 1) % 4 for i, g in enumerate(GOLD)]


def traj(strategy: str, rights: list[int], offsets: list[int] | None = None, collapse=None):
    offsets = offsets or [0] * len(rights)
    readouts = [{"eval_accuracy": r / N, "eval_picks": _picks(r, o)}
                for r, o in zip(rights, offsets, strict=True)]  # fmt: skip
    steps = [dict(r, step=i + 1, removed_so_far=list(range(i + 1)))
             for i, r in enumerate(readouts[1:])]  # fmt: skip
    return {"strategy": strategy, "step0": readouts[0], "steps": steps, "eval_gold": GOLD,
            "eval_items": [f"s/{i}" for i in range(N)], "complete": True,
            "collapse": {"step": collapse}}  # fmt: skip


def test_retention_depth_holds_a_run_to_its_first_dip():
    c = curve(traj("x", [80, 80, 70, 75, 50]))
    assert list(c.retained()) == pytest.approx([1, 1, 0.875, 0.9375, 0.625])
    assert retention_depth(c, 0.9) == 1  # 0.875 at depth 2, though depth 3 recovers
    assert retention_depth(c, 0.8) == 3
    assert first_below(c, 0.9) == 2
    assert first_below(c, 0.5) is None
    # trapezoid over 0..4 of the retained curve, over 4
    want = (1 / 2 + 1 + 0.875 + 0.9375 + 0.625 / 2) / 4
    assert retained_area(c, 4) == pytest.approx(want)
    assert retained_area(c, 5) is None  # the run did not get there


def test_paired_difference_matches_a_hand_bootstrap():
    a = curve(traj("a", [80, 70]))
    b = curve(traj("b", [80, 55], offsets=[0, 30]))  # right on other items too
    got = paired_difference(a, b, 1, n_boot=4000, seed=1)
    x, y = a.correct[1].astype(float), b.correct[1].astype(float)
    assert got["difference"] == pytest.approx(0.15)
    rng = np.random.default_rng(0)
    idx = rng.integers(0, N, size=(4000, N))
    hand = np.percentile(x[idx].mean(1) - y[idx].mean(1), [2.5, 97.5])
    assert got["ci"] == pytest.approx(list(hand), abs=0.02)
    # resampling the runs independently would give a wider interval than the paired one
    unpaired = stats.bootstrap((x, y), lambda u, v, axis=-1: u.mean(axis) - v.mean(axis),
                               n_resamples=4000, method="percentile",
                               random_state=np.random.default_rng(2))  # fmt: skip
    ci = unpaired.confidence_interval
    assert got["ci"][1] - got["ci"][0] <= (ci.high - ci.low) + 0.02
    same = paired_difference(a, a, 1)
    assert same == {"depth": 1, "difference": 0.0, "ci": [0.0, 0.0], "excludes_zero": False}


def test_mcnemar_counts_discordant_items():
    a = curve(traj("a", [80, 60]))
    b = curve(traj("b", [80, 52], offsets=[0, 0]))
    got = mcnemar(a, b, 1)
    assert (got["a_only"], got["b_only"]) == (8, 0)
    assert got["p"] == pytest.approx(stats.binomtest(8, 8, 0.5).pvalue)
    assert got["p"] == pytest.approx(2 * 0.5**8)


def test_verdict_supported_only_deeper_and_paired_win():
    ref = traj("phase-aware", [80, 80, 79, 78, 77])
    worse = traj("angular", [80, 78, 60, 50, 40], collapse=4)
    h = head_to_head([ref, worse], ["phase-aware", "angular"], "phase-aware", depth=4, seed=0)
    v = h["verdict"]
    assert v["supported"] and v["best_other"] == "angular"
    assert v["depth_90"] == 4 and v["best_other_depth_90"] == 1
    assert 2 in v["paired_wins_at"] and 4 not in v["paired_wins_at"]  # not at its collapse
    assert h["pairs"][0]["mcnemar_depth"] == 2  # where angular first falls below 90%
    rows = {r["run"]: r for r in h["rows"]}
    assert rows["angular"]["collapse_depth"] == 4

    shallow = traj("phase-aware", [80, 70, 60, 50, 40])
    deep = traj("iterative", [80, 80, 80, 79, 75])
    h = head_to_head([shallow, deep], ["pa", "it"], "pa", depth=4, baselines=["it"])
    assert h["verdict"]["supported"] is False
    assert h["verdict"]["shortfall"] == 4 - 0  # it keeps 90% to depth 4, pa to 0
    # by default iterative (and phase-aware's variants) are compared, but not judged against
    h = head_to_head([shallow, deep, worse], ["pa", "it", "angular"], "pa", depth=4)
    assert h["baselines"] == ["angular"] and [p["against"] for p in h["pairs"]] == ["it", "angular"]
    assert h["verdict"]["best_other"] == "angular"


def test_best_baseline_is_judged_on_the_depth_every_baseline_reached():
    ref = traj("phase-aware", [80, 80, 79, 78, 77])
    full = traj("angular", [80, 70, 69, 68, 60])  # area to 4 below unfinished's area to 2
    unfinished = traj("ppl", [80, 70, 66])  # two steps so far, worse than angular at both
    unfinished["complete"] = False
    h = head_to_head([ref, full, unfinished], ["pa", "angular", "ppl"], "pa", depth=4, seed=0)
    assert retained_area(curve(full), 4) < retained_area(curve(unfinished), 2)
    assert h["verdict"]["best_other"] == "angular"  # both at 90% depth 0; area to depth 2


def test_a_run_still_keeping_90_percent_is_pending_not_the_best_baseline():
    """Two steps in and still at 90%: its 90% depth is only known to be at least 2, so the best
    baseline is the finished one (the paired wins are judged against it), and it is named."""
    ref = traj("phase-aware", [80, 80, 79, 78, 77])
    full = traj("angular", [80, 78, 60, 50, 40], collapse=4)
    going = traj("logit-js", [80, 80, 79])
    going["complete"] = False
    h = head_to_head([ref, full, going], ["pa", "angular", "js"], "pa", depth=4, seed=0)
    v = h["verdict"]
    assert v["best_other"] == "angular" and v["pending"] == ["js"]
    assert v["supported"] and 2 in v["paired_wins_at"]
    # one that has kept 90% deeper than the reference already beats it, finished or not
    deeper = traj("logit-js", [80, 80, 80, 80])
    deeper["complete"] = False
    shallow = traj("phase-aware", [80, 80, 60, 50, 40])
    h = head_to_head([shallow, full, deeper], ["pa", "angular", "js"], "pa", depth=4, seed=0)
    assert h["verdict"]["supported"] is False and h["verdict"]["shortfall"] == 2


def test_a_baseline_tied_on_90_percent_depth_is_judged_too():
    """Two baselines keep 90% to depth 1; the area puts `angular` first, but support needs a
    paired win before its collapse against `sleb` as well: the area orders the baselines, it
    does not pick the one the reference must beat."""
    ref = traj("phase-aware", [80, 80, 80, 79, 78])
    best = traj("angular", [80, 78, 60, 50, 40], collapse=4)
    tied = traj("sleb", [80, 79, 40, 36, 36], collapse=2)  # one item behind ref at depth 1
    h = head_to_head([ref, best, tied], ["pa", "angular", "sleb"], "pa", depth=4, seed=0)
    v = h["verdict"]
    assert v["outcome"] == "deeper" and v["best_other"] == "angular" and 2 in v["paired_wins_at"]
    assert [t["run"] for t in v["at_best_depth"]] == ["angular", "sleb"]
    # against sleb only depth 1 comes before its collapse, and one item cannot exclude zero
    sleb = v["at_best_depth"][1]
    assert sleb["paired_wins_at"] == [] and sleb["collapse_depth"] == 2
    assert v["supported"] is False
    # a tied run the reference also beats before its collapse: supported
    beaten = traj("sleb", [80, 73, 40, 36, 36], collapse=2)
    h = head_to_head([ref, best, beaten], ["pa", "angular", "sleb"], "pa", depth=4, seed=0)
    assert h["verdict"]["at_best_depth"][1]["paired_wins_at"] == [1]
    assert h["verdict"]["supported"] is True


def test_a_tie_at_90_percent_is_a_tie_whatever_the_area_and_paired_wins():
    """ARC's case: the reference keeps 90% exactly as deep as the best baseline, with a larger
    area and a paired win past the 90% line; that is "tied", never "supported"."""
    ref = traj("phase-aware", [80, 80, 76, 70, 66])
    other = traj("angular", [80, 78, 72, 50, 40], collapse=4)
    h = head_to_head([ref, other], ["pa", "angular"], "pa", depth=4, seed=0)
    v = h["verdict"]
    assert v["depth_90"] == v["best_other_depth_90"] == 2
    assert v["outcome"] == "tied" and v["lead"] == 0 and v["supported"] is False
    assert 3 in v["paired_wins_at"]  # the evidence is kept, it does not change the outcome
    said = verdict_sentence(h)
    assert "**as deep as** the deepest baseline (angular" in said
    assert "Claim (d): **not supported (a tie)**" in said
    # shallower: the paired losses are the evidence
    shallow = traj("phase-aware", [80, 78, 60, 50, 40])
    deep = traj("angular", [80, 80, 78, 76, 60])
    h = head_to_head([shallow, deep], ["pa", "angular"], "pa", depth=4, seed=0)
    v = h["verdict"]
    assert v["outcome"] == "shallower" and v["lead"] == -2 and v["shortfall"] == 2
    assert v["paired_losses_at"] == [2, 3, 4] and v["paired_wins_at"] == []
    said = verdict_sentence(h)
    assert "Claim (d): **not supported**" in said and "short by 2" in said


def test_ninety_percent_on_whole_items_is_kept_despite_floating_point():
    """72 of 100 items against 80 is exactly 90%; in floats 0.72 / 0.8 < 0.9."""
    assert 0.72 / 0.8 < 0.9
    c = curve(traj("x", [80, 72, 71]))
    assert retention_depth(c, 0.9) == 1 and first_below(c, 0.9) == 2


def test_runs_on_other_items_are_refused():
    a, b = traj("a", [80, 70]), traj("b", [80, 70])
    b["eval_items"] = b["eval_items"][::-1]
    with pytest.raises(UsageError, match="other items"):
        head_to_head([a, b], ["a", "b"], "a")
    with pytest.raises(UsageError, match="--reference"):
        head_to_head([a, a], ["a", "b"], "c")


def test_old_runs_without_items_give_depths_but_no_paired_numbers():
    a, b = traj("a", [80, 70]), traj("b", [80, 60])
    for t in (a, b):
        del t["eval_gold"]
    h = head_to_head([a, b], ["a", "b"], "a", depth=1)
    assert not h["paired"]
    assert h["pairs"][0]["differences"] == [] and h["pairs"][0]["mcnemar"] is None
    assert [r["depth_90"] for r in h["rows"]] == [0, 0]


def test_compare_writes_the_head_to_head_of_real_runs(decider, tmp_path, capsys):
    import json

    from phaseprune.cli import main

    def run(name, *extra):
        argv = ["prune", "--model", str(decider.path), "--task",
                f"jsonl:{decider.path / 'eval.jsonl'}", "--steps", "3", "--calib", "20",
                "--eval", "40", "--n-boot", "50", "--quiet", "--no-plots",
                "--out", str(tmp_path / name), *extra]  # fmt: skip
        assert main(argv) == 0
        return json.loads((tmp_path / name / "trajectory.json").read_text())

    pa = run("pa", "--strategy", "phase-aware", "--after-decisive", "objective")
    last = run("last", "--strategy", "last")
    out = tmp_path / "cmp"
    argv = ["compare", str(tmp_path / "last"), str(tmp_path / "pa"), "--out", str(out),
            "--reference", "phase-aware", "--depth", "3", "--n-boot", "500"]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    h = json.loads((out / "headtohead.json").read_text())
    assert h["reference"] == "phase-aware (pa)" and h["paired"]
    want = head_to_head([pa, last], ["phase-aware (pa)", "last (last)"], "phase-aware (pa)",
                        depth=3, n_boot=500)  # fmt: skip
    assert h["pairs"][0]["differences"] == json.loads(json.dumps(want["pairs"][0]["differences"]))
    assert [d["depth"] for d in h["pairs"][0]["differences"]] == [1, 2, 3]
    assert "Head-to-head against phase-aware (pa)" in printed and "Verdict:" in printed
    assert f"**{OUTCOME_WORDS[h['verdict']['outcome']]}** the deepest baseline" in printed
    # runs on other items are refused by compare itself, before any head-to-head
    run("other", "--strategy", "last", "--eval", "39")
    assert main(["compare", str(tmp_path / "pa"), str(tmp_path / "other"),
                 "--out", str(tmp_path / "cmp2")]) == 2  # fmt: skip
    assert "evaluated on other items" in capsys.readouterr().err
