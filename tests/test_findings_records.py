"""The findings study's committed records: a stage kept, restored on a fresh machine and
resumed gives the uninterrupted run; head-to-head runs are extended to their collapse; the
document's numbers from runs and records."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
from phaseprune_study import document, plans, records, stages

from phaseprune.pruning import run_prune
from phaseprune.runs.config import ModelConfig, PruneConfig, TaskConfig
from phaseprune.runs.files import load_trajectory

ROOT = Path(__file__).resolve().parent.parent


def _cfg(decider, out, steps, **extra):
    task = TaskConfig(task=f"jsonl:{decider.path / 'eval.jsonl'}")
    return PruneConfig(out=str(out), model=ModelConfig(model=str(decider.path)), task=task,
                       strategy="last", steps=steps, calib=10, eval=30, n_boot=50, quiet=True,
                       plots=False, **extra)  # fmt: skip


def _pruned(cfg: PruneConfig) -> dict:
    """Run ``cfg`` and read back the trajectory it wrote (what the study's stages leave)."""
    run_prune(cfg)
    return load_trajectory(Path(cfg.out))


def _same(a: dict, b: dict) -> bool:
    drop = ("timing", "created", "settings", "fingerprint", "collapse")
    return {k: v for k, v in a.items() if k not in drop} == {
        k: v for k, v in b.items() if k not in drop
    }


def test_kept_records_resume_on_a_fresh_machine(decider, tmp_path, monkeypatch):
    monkeypatch.setattr(records, "RECORDS", tmp_path / "records")
    plan = plans.Plan("toy", "")
    machine1 = tmp_path / "machine1" / "h2h-last"
    run_prune(_cfg(decider, machine1, 2))
    records.keep(plan, "h2h-last", machine1)
    kept = tmp_path / "records" / "toy" / "h2h-last"
    assert sorted(p.name for p in kept.iterdir()) == ["candidates.parquet", "trajectory.json"]
    # a new machine: no run directory, the records from the repository
    machine2 = tmp_path / "machine2" / "h2h-last"
    records.restore(plan, "h2h-last", machine2)
    resumed = _pruned(dataclasses.replace(_cfg(decider, machine2, 3), resume=True))
    straight = _pruned(_cfg(decider, tmp_path / "straight", 3))
    assert _same(resumed, straight)
    assert resumed["collapse"] == straight["collapse"]
    # a run directory already there is never replaced by the records
    before = (machine2 / "trajectory.json").read_text()
    records.restore(plan, "h2h-last", machine2)
    assert (machine2 / "trajectory.json").read_text() == before


def test_head_to_head_runs_go_on_to_their_collapse(decider, tmp_path):
    plan = plans.Plan("toy", "", steps=2, extend_to=5)
    out = tmp_path / "r"
    cfg = _cfg(decider, out, 2)
    assert stages._extended(out, cfg, plan) is cfg  # nothing run yet
    traj = _pruned(cfg)
    if traj["collapse"]["step"] is None:
        extended = stages._extended(out, cfg, plan)
        assert (extended.steps, extended.stop_at_collapse) == (5, True)
    else:  # collapsed within the common depth: nothing more to run
        assert stages._extended(out, cfg, plan) is cfg
    # an ablation variant with its own depth stays there
    assert stages._extended(out, dataclasses.replace(cfg, steps=1), plan).steps == 1
    assert stages._extended(out, cfg, plan, "single-removals") is cfg  # not a pruning stage


def test_a_healed_run_still_keeping_90_at_its_last_step_goes_on_to_12(decider, tmp_path):
    """The pre-registration's rule: a healed run keeping 90% at 8 removals is resumed to 12."""
    plan = plans.Plan("toy", "", steps=2)
    out = tmp_path / "heal-last"
    cfg = _cfg(decider, out, 2)
    assert stages._extended(out, cfg, plan, "heal-last") is cfg  # nothing run yet
    traj = _pruned(cfg)
    base = traj["step0"]["eval_accuracy"]
    # the same record with its readouts replaced: one keeping 90% at every step, one not
    for share, goes_on in ((0.9, True), (0.85, False)):
        steps = [dict(s, eval_accuracy=base * share) for s in traj["steps"]]
        (out / "trajectory.json").write_text(json.dumps({**traj, "steps": steps}))
        ext = stages._extended(out, cfg, plan, "heal-last")
        assert ext.steps == (plans.HEALED_EXTEND_TO if goes_on else 2), share


def test_qwen_plan_runs_every_strategy_on_enough_items():
    from phaseprune.strategies.registry import NEEDS_ARGUMENT, STRATEGY_NAMES

    rules = set(STRATEGY_NAMES) - set(NEEDS_ARGUMENT)  # `order` replays a given order
    plan = plans.PLANS["qwen2.5-coder-1.5b"]
    assert plan.eval >= 200 and plan.calib >= 32 and len(plan.subjects) >= 5
    strategies = {s["strategy"] for s in plan.h2h.values()}
    assert strategies == rules
    # every strategy but the ablation's variants goes to the plan's common depth
    full = [label for label, s in plan.h2h.items() if s.get("steps", plan.steps) == plan.steps]
    assert {plan.h2h[label]["strategy"] for label in full} == rules
    # the reference is phase-aware's defaults (the objective given: kl) and runs the full depth
    ref = plan.h2h[plan.reference]
    assert plan.reference in full and ref["objective"] == "kl"
    # the second setting: every strategy again, on ARC-Challenge; of the ablation only the
    # accuracy objective's variant (phase-aware-tail), the reference's one difference
    arc = plans.PLANS["qwen2.5-coder-1.5b-arc"]
    assert arc.h2h_task == "arc_challenge" and arc.reference == plan.reference in arc.h2h
    assert {s["strategy"] for s in arc.h2h.values()} == rules
    assert set(arc.h2h) & set(plans.ABLATION) == set(plans.SECOND_SETTING) == {"phase-aware-tail"}
    assert set(plans.ABLATION) <= set(plan.h2h)
    # each healed run pairs with an unhealed head-to-head run of the same rule, to 8 removals
    for label, settings in plan.heal.items():
        base = next(b for b in plan.h2h if label in (b, f"{b}-after", f"{b}-search"))
        assert {k for k, v in settings.items() if plan.h2h[base].get(k) != v} <= {
            "heal",
            "heal_when",
            "steps",
        }
        assert settings["heal"] == "linear" and settings["steps"] == 8
    assert {s.get("heal_when", "after") for s in plan.heal.values()} == {"after", "search"}
    tail = plan.h2h["phase-aware-tail"]
    assert {k: v for k, v in tail.items() if tail[k] != ref.get(k)} == {"objective": "accuracy"}


def test_records_are_json_not_weights():
    folder = records.RECORDS
    assert folder == ROOT / "experiments" / "records"  # where the committed records are
    for path in folder.rglob("*") if folder.exists() else ():
        assert path.is_dir() or path.name in ("trajectory.json", "candidates.parquet",
                                              "summary.json", "items.parquet",
                                              "log.json")  # fmt: skip
        # an analyze run's per-item table holds model outputs, not the questions' text
        if path.name == "items.parquet":
            import pandas as pd

            assert "question" not in pd.read_parquet(path).columns
        assert path.is_dir() or path.stat().st_size < 2_000_000
    # the head-to-head's records hold the plan's items (and their gold answers)
    plan = plans.PLANS["qwen2.5-coder-1.5b"]
    for traj in records.committed(plan, "").glob("h2h-*/trajectory.json"):
        record = json.loads(traj.read_text())
        assert len(record["eval_items"]) == plan.eval and "eval_gold" in record
        assert len(record["calib_items"]) == plan.calib


def test_head_to_head_numbers_from_runs_and_records(decider, tmp_path, monkeypatch):
    monkeypatch.setattr(records, "RECORDS", tmp_path / "records")
    plan = plans.Plan("toy", "", steps=2, reference="pa",
                      h2h={"last": {"strategy": "last"}, "pa": {"strategy": "phase-aware"},
                           "pa-kl": {"strategy": "phase-aware", "objective": "kl"},
                           "iterative": {"strategy": "iterative"}})  # fmt: skip
    root = tmp_path / "runs"
    run_prune(_cfg(decider, root / "h2h-last", 2))
    run_prune(dataclasses.replace(_cfg(decider, root / "h2h-pa", 2), strategy="phase-aware"))
    run_prune(dataclasses.replace(_cfg(decider, root / "h2h-pa-kl", 2), strategy="phase-aware",
                                  objective="kl"))  # fmt: skip
    records.keep(plan, "h2h-pa", root / "h2h-pa")
    shutil.rmtree(root / "h2h-pa")  # made on another machine: only its records are here
    h = document.head_to_head_numbers(plan, root)
    assert h["reference"] == "pa" and h["missing"] == ["iterative"] and h["unfinished"] == []
    assert [r["run"] for r in h["rows"]] == ["last", "pa", "pa-kl"]
    assert h["pairs"][0]["against"] == "last" and h["n_eval"] == 30
    assert h["markdown"].startswith("| run | keeps 90% to depth")
    assert h["verdict"]["supported"] in (True, False)
    # the ablation: phase-aware's variants (here one) at the depth they are all run to
    ab = h["ablation"]
    assert (ab["depth"], ab["waiting"]) == (2, []) and ab["best"] in ("pa", "pa-kl")
    assert [r["run"] for r in ab["rows"]] == ["pa", "pa-kl"]
    for r in ab["rows"]:  # the best has no difference to itself; the other is paired with it
        assert (r["against_best"] is None) == (r["run"] == ab["best"])
        row = next(x for x in h["rows"] if x["run"] == r["run"])
        assert r["area"] == pytest.approx(row["area"])
    # one phase-aware variant (ARC's plan: the reference alone) has no ablation
    alone = dataclasses.replace(plan, h2h={k: v for k, v in plan.h2h.items() if k != "pa-kl"})
    assert document.head_to_head_numbers(alone, root)["ablation"] is None
    # the advice names the run that keeps 90% deepest (then the largest area)
    best = max(h["rows"], key=lambda r: (r["depth_90"], r["area"]))
    assert h["advice"]["run"] == best["run"] and h["advice"]["depth_90"] == best["depth_90"]


def test_a_plan_on_another_task_reads_its_own_readout(decider, tmp_path):
    """A head-to-head on another task (ARC's plan) takes its phases and figures from the
    decision readout on that task, and names the task in the setup."""
    from phaseprune.analysis import run_analyze
    from phaseprune.runs.config import AnalyzeConfig

    arc = plans.PLANS["qwen2.5-coder-1.5b-arc"]
    assert arc.analyze_stage == "analyze-arc_challenge" and arc.analyze_stage not in arc.skip
    assert plans.PLANS["qwen2.5-coder-1.5b"].analyze_stage == "analyze-mmlu"
    plan = plans.Plan("toy", "", steps=2, reference="last", h2h_task="toy",
                      h2h={"last": {"strategy": "last"}}, skip=("analyze-mmlu",))  # fmt: skip
    root = tmp_path / "runs"
    task = TaskConfig(task=f"jsonl:{decider.path / 'eval.jsonl'}", limit=40)
    run_analyze(AnalyzeConfig(out=str(root / "analyze-toy"), model=ModelConfig(
        model=str(decider.path)), task=task, n_boot=50, quiet=True))  # fmt: skip
    run_prune(_cfg(decider, root / "h2h-last", 2))
    numbers = document.collect(plan, root, tmp_path / "docs" / "findings")
    assert numbers["analyze"]["task"]["n_items"] == 40 and numbers["other"] is None
    assert set(numbers["figures"]) >= {"analyze-toy/margin", "analyze-toy/option_frequency"}
    doc = tmp_path / "findings.md"
    document.render({"toy": numbers}, doc)
    text = doc.read_text()
    assert "findings/toy/analyze-toy__margin.png" in text
    assert "none in this plan (`analyze-mmlu` skipped)" in text and "MMLU test" not in text


def test_the_tail_section_reads_the_analyze_items_and_the_reference_run(decider, tmp_path):
    """Phase-aware's first cut in the document: the tail rule on all the readout's items, on
    random calibration sets (sizes below the item count), and the reference run's own cut."""
    import pandas as pd
    from phaseprune_study.calibration_size import readout_arrays

    from phaseprune.analysis import run_analyze
    from phaseprune.core.phases import tail_cut_index
    from phaseprune.runs.config import AnalyzeConfig

    tail = {"strategy": "phase-aware", "decisive": "tail"}
    plan = plans.Plan("toy", "", steps=2, reference="pa", h2h_task="toy", calib=10,
                      h2h={"last": {"strategy": "last"}, "pa": tail},
                      skip=("analyze-mmlu",))  # fmt: skip
    root = tmp_path / "runs"
    task = TaskConfig(task=f"jsonl:{decider.path / 'eval.jsonl'}", limit=60)
    run_analyze(AnalyzeConfig(out=str(root / "analyze-toy"), model=ModelConfig(
        model=str(decider.path)), task=task, n_boot=50, quiet=True, plots=False))  # fmt: skip
    run_prune(_cfg(decider, root / "h2h-last", 2))
    run_prune(dataclasses.replace(_cfg(decider, root / "h2h-pa", 2), strategy="phase-aware",
                                  decisive="tail"))  # fmt: skip
    numbers = document.collect(plan, root, tmp_path / "docs" / "findings")
    tl = numbers["tail"]
    correct, margin, _ = readout_arrays(pd.read_parquet(root / "analyze-toy" / "items.parquet"))
    acc = correct.mean(0)
    t = numbers["analyze"]["transition_layer"]
    assert t is not None and tl["transition"] == t and tl["n_items"] == 60
    assert tl["full_cut"] == tail_cut_index(acc, margin.mean(0), acc[-1], t)
    assert [d["n_calib"] for d in tl["draws"]] == [10, 20, 40]  # 80 is not below 60 items
    assert all(d["draws"] == document.TAIL_DRAWS for d in tl["draws"])
    first = load_trajectory(root / "h2h-pa")["steps"][0]["calib_phases"]
    assert tl["run"]["cut"] == first["tail"]["cut_at"] and tl["run"]["n_calib"] == 10
    assert tl["run"]["share_of_draws"] == tl["draws"][0]["layers_cut"].get(
        tl["run"]["layers_cut"], 0.0
    )
    doc = tmp_path / "findings.md"
    document.render({"toy": numbers}, doc)
    text = doc.read_text()
    assert "### Phase-aware's first cut: the Decisive tail" in text
    assert f"| 10 | {100 * tl['draws'][0]['p_no_transition']:.1f}% |" in text
    assert "**Claim (d), setting by setting**" in text and "- **toy** (" in text
    assert "So far phase-aware wins" not in text  # one setting says nothing of a pattern
    # two settings: won where the tail was free, lost where it was not -> said, with its caveat
    import copy

    free, costly = copy.deepcopy(numbers), copy.deepcopy(numbers)
    free["tail"]["full_layers_cut"], free["h2h"]["verdict"]["supported"] = 3, True
    costly["tail"]["full_layers_cut"], costly["h2h"]["verdict"]["supported"] = 0, False
    document.render({"free": free, "costly": costly}, doc)
    text = doc.read_text()
    assert "So far phase-aware wins where the Decisive tail is free" in text
    assert "2 settings cannot establish that as a rule" in text
    # a setting read but not pruned yet: the pattern's prediction for it, stated beforehand
    read = copy.deepcopy(numbers)
    read["h2h"], read["tail"]["full_layers_cut"] = None, 0
    document.render({"free": free, "costly": costly, "read": read}, doc)
    text = doc.read_text()
    assert "Read but not yet pruned" in text and "- **read** (" in text
    assert (
        "is not free (no shorter Decisive readout keeps the whole model's accuracy), so if "
        "the pattern holds phase-aware keeps 90% no deeper than the best baseline" in text
    )
    read["tail"]["full_layers_cut"] = 2
    document.render({"free": free, "costly": costly, "read": read}, doc)
    assert "is free (2 layers cut at no accuracy cost), so if the pattern" in doc.read_text()
    document.render({"read": read}, doc)  # no pattern, no prediction; the readout still said
    text = doc.read_text()
    assert "- **read** (" in text and "is free (2 layers cut at no accuracy cost)." in text
    costly["h2h"]["verdict"]["supported"] = True  # won without a free tail: no such pattern
    document.render({"free": free, "costly": costly}, doc)
    assert "So far phase-aware wins" not in doc.read_text()
    assert "Read but not yet pruned" not in doc.read_text()
    # a reference that does not cut the tail has no such section
    plain = dataclasses.replace(
        plan, h2h={**plan.h2h, "pa": {"strategy": "phase-aware", "decisive": "objective"}}
    )
    assert document.collect(plain, root, tmp_path / "docs2" / "findings")["tail"] is None


def test_keep_all_copies_every_stage_with_records(decider, tmp_path, monkeypatch):
    """--keep-records: a long run's progress, finished stages or not, copied to be committed."""
    monkeypatch.setattr(records, "RECORDS", tmp_path / "records")
    root = tmp_path / "runs"
    run_prune(_cfg(decider, root / "h2h-last", 1))
    (root / "score-cache").mkdir()  # logits, not records: left behind
    plan = plans.Plan("toy", "")
    assert records.keep_all(plan, root) == ["h2h-last"]
    kept = tmp_path / "records" / "toy" / "h2h-last" / "trajectory.json"
    assert kept.read_text() == (root / "h2h-last" / "trajectory.json").read_text()


def test_status_reads_runs_then_records_and_loads_no_model(decider, tmp_path, monkeypatch):
    """``findings.py --status``: each stage's steps done of those it will run, from the run
    directory, else from the committed records (what a fresh machine resumes)."""
    monkeypatch.setattr(records, "RECORDS", tmp_path / "records")
    h2h = {"last": {"strategy": "last"}, "random": {"strategy": "random"}}
    plan = plans.Plan("toy", "no-such-model", steps=2, extend_to=5, h2h=h2h,
                      skip=("analyze-arc_challenge",))  # fmt: skip
    root = tmp_path / "runs"
    last = _pruned(_cfg(decider, root / "h2h-last", 2))
    elsewhere = tmp_path / "machine1" / "h2h-random"
    run_prune(dataclasses.replace(_cfg(decider, elsewhere, 1), strategy="random"))
    records.keep(plan, "h2h-random", elsewhere)
    status = dict(stages.stage_status(plan, root))
    if last["collapse"]["step"] is None:  # the head-to-head goes on to its collapse
        assert status["h2h-last"] == "to do: 2/5 steps"
    else:
        assert status["h2h-last"] == f"done: 2/2 steps, collapse at {last['collapse']['step']}"
    assert status["h2h-random"] == "to do: 1/2 steps"  # from the records
    assert status["analyze-mmlu"] == "not started"
    assert status["analyze-arc_challenge"] == "skipped by the plan"
    assert list(status)[:3] == ["h2h-last", "h2h-random", "analyze-mmlu"]  # the order they run


def test_committed_runs_made_on_a_gpu_agree_with_the_cpu(tmp_path):
    """Head-to-head runs of both devices stand in one comparison only if a run made on each
    removes the same layers and gives every evaluation item the same pick (the committed
    device-check records: the reference rerun on an H200, the CPU's interrupted runs)."""
    rows, full_depth = [], []
    for plan in plans.PLANS.values():
        if plan.h2h and records.committed(plan, "device-check").is_dir():
            checks = document.device_checks(plan, document.h2h_runs(plan, tmp_path / plan.name))
            rows += checks
            full_depth += [r["run"] for r in checks if r["steps"] == plan.steps]
    devices = {d.split()[0] for r in rows for d in r["devices"]}  # "cuda:0 float32"
    assert len(rows) >= 5 and devices == {"cpu", "cuda:0"}
    for r in rows:
        assert r["same_items"] and r["same_layers"], r["run"]
        assert r["picks_equal"] == r["readouts"] and r["max_margin_diff"] < 1e-2, r
    assert "phase-aware-kl" in full_depth  # the reference, to the plan's common depth


def test_log_names_the_gpu_a_stage_ran_on(tmp_path):
    """log.json entries carry the GPU's name when a stage ran on one; the document's wall time
    splits on it (``gpu_log``)."""
    stages._log(tmp_path, "h2h-last", 1.234)
    stages._log(tmp_path, "h2h-sleb", 2.0, "NVIDIA H200")
    log = json.loads((tmp_path / "log.json").read_text())
    assert [e["stage"] for e in log] == ["h2h-last", "h2h-sleb"]
    assert "accelerator" not in log[0] and log[1]["accelerator"] == "NVIDIA H200"
    assert log[0]["wall_s"] == 1.2
    assert stages._accelerator("cpu") is None


def test_healing_table_pairs_each_healed_run(decider, tmp_path):
    """A healed stage against itself unhealed and the head-to-head run of its rule."""
    from phaseprune_study import healing

    plan = dataclasses.replace(plans.PLANS["qwen2.5-coder-1.5b"], name="tiny",
                               h2h={"last": {"strategy": "last"}},
                               heal={"last": {"strategy": "last", "heal": "linear"}})  # fmt: skip
    runs = tmp_path / "runs"
    _pruned(_cfg(decider, runs / "tiny" / "heal-last", 2, heal="linear", heal_items=12))
    _pruned(_cfg(decider, runs / "tiny" / "h2h-last", 2))
    rows = healing.healing_rows(plan, "last", runs)
    healed = load_trajectory(runs / "tiny" / "heal-last")
    assert [r["removed"] for r in rows] == [sorted(s["removed_so_far"]) for s in healed["steps"]]
    for row, step in zip(rows, healed["steps"], strict=True):
        gap = 100 * (step["eval_accuracy"] - step["unhealed"]["eval_accuracy"])
        assert row["vs_unhealed"][0] == pytest.approx(round(gap, 1))
        assert row["vs_unhealed"][1] <= row["vs_unhealed"][0] <= row["vs_unhealed"][2]
        assert row["h2h"] == step["unhealed"]["eval_accuracy"]  # `last`: the same removals
    assert "### heal-last" in healing.markdown(plan, runs)


def test_the_heal_when_rule_picks_search_only_on_evidence(tmp_path):
    """docs/healing.md's rule on hand-made runs: deeper at 90%, or a paired win and no loss."""
    from phaseprune_study import healing

    n, gold = 100, [i % 4 for i in range(100)]

    def run(rights):
        readouts = [{"eval_accuracy": r / n,
                     "eval_picks": [g if i < r else (g + 1) % 4 for i, g in enumerate(gold)]}
                    for r in rights]  # fmt: skip
        steps = [dict(r, step=i + 1, removed_so_far=list(range(i + 1)))
                 for i, r in enumerate(readouts[1:])]  # fmt: skip
        return {"strategy": "phase-aware", "step0": readouts[0], "steps": steps,
                "eval_gold": gold, "collapse": {"step": None}, "complete": True}  # fmt: skip

    heal = {"pa-after": {"steps": 3}, "pa-search": {"steps": 3}}
    plan = dataclasses.replace(plans.PLANS["qwen2.5-coder-1.5b"], name="tiny", reference="pa",
                               heal=heal)  # fmt: skip

    def choose(after, search):
        for mode, rights in (("after", after), ("search", search)):
            folder = tmp_path / "tiny" / f"heal-pa-{mode}"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "trajectory.json").write_text(json.dumps(run(rights)))
        return healing.heal_when_choice(plan, tmp_path)

    c = choose([80, 80, 79, 60], [80, 80, 80, 75])  # search keeps 90% one step deeper
    assert c["choice"] == "search" and c["depth_90"] == {"after": 2, "search": 3}
    assert c["decided"]
    c = choose([80, 78, 78, 60], [80, 78, 78, 62])  # as deep; 2 items better at step 3 only
    assert c["choice"] == "after" and c["wins"] == []  # 2 of 100 items: no paired win
    c = choose([80, 78, 60, 50], [80, 78, 62, 70])  # as deep (1); a win at 3, no loss
    assert c["choice"] == "search" and c["wins"] == [3] and c["losses"] == []
    c = choose([80, 78, 70, 50], [80, 78, 60, 70])  # a win at 3 and a loss at 2: after stays
    assert c["choice"] == "after" and c["losses"] == [2] and c["wins"] == [3]
    c = choose([80, 78, 70, 50], [80, 78])  # search one step in: the choice so far
    assert not c["decided"] and c["steps"] == {"after": 3, "search": 1}


def _healed_setting(decider, tmp_path, monkeypatch):
    """Issue 32's healed head-to-head on runs with known readouts: a real record's shape with
    the readouts replaced, so every outcome is known. Returns the plan, its run folder and
    the runs by stage."""
    monkeypatch.setattr(records, "RECORDS", tmp_path / "records")
    real = tmp_path / "real"
    run_prune(_cfg(decider, real, 3, heal="linear", heal_items=12))
    shape = json.loads((real / "trajectory.json").read_text())
    n, gold = 100, [i % 4 for i in range(100)]

    def run(strategy, rights, transitions=None, unhealed=None):
        def readout(r, i):
            out = {
                "eval_accuracy": r / n,
                "transition_layer": (transitions or {}).get(i),
                "eval_picks": [g if j < r else (g + 1) % 4 for j, g in enumerate(gold)],
            }
            if unhealed is not None and i > 0:
                out["unhealed"] = dict(
                    shape["steps"][0]["unhealed"],
                    transition_layer=None,
                    eval_accuracy=unhealed[i] / n,
                )
            return out  # fmt: skip

        readouts = [readout(r, i) for i, r in enumerate(rights)]
        steps = [dict(shape["steps"][i], **r, step=i + 1, removed_so_far=list(range(i + 1)))
                 for i, r in enumerate(readouts[1:])]  # fmt: skip
        if unhealed is None:
            steps = [{k: v for k, v in s.items() if k not in ("unhealed", "heal")} for s in steps]
        collapse = next((i for i, r in enumerate(rights) if r < rights[0] / 2), None)
        return {**shape, "strategy": strategy, "step0": dict(shape["step0"], **readouts[0]),
                "steps": steps, "eval_gold": gold, "eval_items": [f"i{j}" for j in range(n)],
                "collapse": {**shape["collapse"], "step": collapse}}  # fmt: skip

    plan = dataclasses.replace(
        plans.PLANS["qwen2.5-coder-1.5b-obqa"], name="tiny", reference="pa",
        h2h={"angular": {"strategy": "angular"}, "pa": {"strategy": "phase-aware"}},
        heal={"pa": {"heal_when": plans.HEAL_WHEN, "steps": 3},
              "angular": {"heal_when": plans.HEAL_WHEN, "steps": 3}})  # fmt: skip
    root = tmp_path / "runs"
    made = {"h2h-angular": run("angular", [80, 60, 50, 30]),
            "h2h-pa": run("phase-aware", [80, 74, 60, 50]),
            # healed: pa keeps 90% to 2, angular to 1; pa's transition comes back at step 1
            "heal-angular": run("angular", [80, 79, 70, 45], unhealed=[80, 60, 50, 30]),
            "heal-pa": run("phase-aware", [80, 79, 78, 70], {0: 20, 1: 21},
                           unhealed=[80, 74, 60, 50])}  # fmt: skip
    for stage, traj in made.items():
        (root / stage).mkdir(parents=True)
        (root / stage / "trajectory.json").write_text(json.dumps(traj))
    return plan, root, made


def test_the_healed_head_to_head_judges_the_healed_reference_twice(decider, tmp_path, monkeypatch):
    """Issue 32: the healed reference against healed baselines alone, then against every run.

    The runs are a real record's with the readouts replaced, so every outcome is known.
    """
    from phaseprune_study import healing

    plan, root, made = _healed_setting(decider, tmp_path, monkeypatch)
    unhealed = {label: made[f"h2h-{label}"] for label in plan.h2h}
    hh = healing.healed_head_to_head(plan, root, unhealed)
    assert hh["reference"] == "heal-pa" and hh["depth"] == 3 and hh["missing"] == []
    v = hh["healed"]["verdict"]  # the primary test: healed baselines only
    assert hh["healed"]["baselines"] == ["heal-angular"]
    assert (v["outcome"], v["depth_90"], v["best_other_depth_90"]) == ("deeper", 2, 1)
    assert v["supported"] and v["paired_wins_at"] == [2, 3]
    every = hh["every"]  # every run: unhealed angular is a baseline, unhealed pa is not
    assert every["baselines"] == ["heal-angular", "angular"]
    assert {p["against"] for p in every["pairs"]} == {"heal-angular", "angular", "pa"}
    gains = {g["run"]: g for g in hh["gains"]}
    assert gains["heal-angular"]["rule"] == gains["heal-angular"]["row"] == "angular"
    assert gains["heal-angular"]["unhealed"]["depth_90"] == 0
    assert gains["heal-angular"]["healed"]["depth_90"] == 1
    assert gains["heal-pa"]["unhealed"]["depth_90"] == 1  # 74 of 80 is 92.5%, 60 is 75%
    assert gains["heal-pa"]["transitions"] == [(1, 21, None), (2, None, None), (3, None, None)]
    pa = gains["heal-pa"]
    assert (pa["none_unhealed"], pa["back"], pa["lost"]) == (3, 1, 0)
    assert "| heal-pa |" in hh["healed"]["markdown"]
    assert hh["n_eval"] == 100 and not hh["every_is_healed"]
    assert hh["best_healed"]["run"] == "heal-pa"
    # the run to use among every run: healed pa (90% to 2, then the largest area), its flags
    # those of its heal stage, the runner-up healed angular (90% to 1)
    ad = hh["advice"]
    assert (ad["run"], ad["depth_90"], ad["runner_up"]["run"]) == ("heal-pa", 2, "heal-angular")
    assert ad["flags"] == f"--heal-when {plans.HEAL_WHEN}"
    assert [r["run"] for r in ad["references"]] == ["heal-pa", "pa"]
    # without the healed reference there is nothing to judge
    (root / "heal-pa" / "trajectory.json").unlink()
    assert healing.healed_head_to_head(plan, root, unhealed) is None


def test_a_setting_with_healed_runs_only_is_judged_advised_and_its_predictions_read(
    decider, tmp_path, monkeypatch
):
    """OpenBookQA's state after its first healed runs: no unhealed run yet. The summary lists it
    with its healed verdict and its pre-registered predictions, "What to do" advises from the
    healed runs, and the healed head-to-head is not printed twice."""
    from phaseprune_study import healing
    from phaseprune_study.predictions import judge

    from phaseprune.analysis import run_analyze
    from phaseprune.runs.config import AnalyzeConfig

    plan, root, made = _healed_setting(decider, tmp_path, monkeypatch)
    hh = healing.healed_head_to_head(plan, root, {})
    assert hh["every_is_healed"] and hh["advice"]["run"] == "heal-pa"
    toy = plans.Plan("toy", "", steps=2, reference="pa", h2h_task="toy", calib=10,
                     h2h={"pa": {"strategy": "phase-aware"}}, skip=("analyze-mmlu",),
                     preregistered=("abc1234", "experiments/prereg.md"),
                     predictions=("unhealed-not-deeper", "healed-short-of-7"))  # fmt: skip
    task = TaskConfig(task=f"jsonl:{decider.path / 'eval.jsonl'}", limit=40)
    run_analyze(AnalyzeConfig(out=str(root / "analyze-toy"), model=ModelConfig(
        model=str(decider.path)), task=task, n_boot=50, quiet=True, plots=False))  # fmt: skip
    numbers = document.collect(toy, root, tmp_path / "docs" / "findings")
    assert numbers["h2h"] is None  # no unhealed run of its own
    numbers |= {"healed": hh, "predictions": judge(toy.predictions, None, hh)}
    doc = tmp_path / "findings.md"
    document.render({"toy": numbers}, doc)
    text = doc.read_text()
    assert "Read but not yet pruned" not in text
    assert "100 evaluation items): no unhealed run yet. With healing (2 healed runs)" in text
    assert "keeps 90% to 2, the deepest healed baseline (`heal-angular`) to 1: **deeper**" in text
    assert "1. Unhealed, `phase-aware-kl` is not deeper" in text and "not judged yet" in text
    held = "2. The healed reference keeps 90% to fewer than 7 removals: **held** (90% kept to 2 "
    assert held in text
    assert "| toy | 100 | 80.0% | not run yet | 2 (3): `heal-pa` | — → 2 |" in text
    assert "### What to do" in text and "**heal-pa** keeps at least 90%" in text
    assert "no unhealed run of this plan has a step yet" in text
    assert "Provisional: 0 healed and 1 unhealed runs are still to come." in text
    assert text.count("| heal-pa | 2 | 3 |") == 1  # the healed table once, not again for every run
