"""Healing (``--heal linear``): the fold per family, the fit against an explicit least-squares
reference, where each map goes, the engines' resumes over healed layers, and whole runs
(resume, export, the caller's model restored)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
import transformers as tf
from decider_runs import export_accuracy
from tiny_models import VOCAB, build_tiny

from phaseprune.core.errors import UsageError
from phaseprune.engine.candidates import final_readout, option_reduce, score_removals
from phaseprune.engine.healing import (
    HELD_EVERY,
    RIDGES,
    HealData,
    HealSite,
    LinearHealer,
    heal_site,
)
from phaseprune.engine.incremental import IncrementalReadout
from phaseprune.engine.readout import read_options
from phaseprune.model.arch import decoder_parts, layer_output
from phaseprune.model.healing import check_model, heal_tags, healed, out_projections
from phaseprune.model.surgery import without_layers

FOLDABLE = ["llama", "qwen2", "gemma", "phi3", "olmo", "gpt2", "gpt_neox", "falcon-new", "opt"]
OPTIONS = [5, 17, 123, 299]


def _rows(n: int, seed: int, prefix: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    shared = torch.randint(3, VOCAB, (prefix,), generator=g).tolist()
    return [
        shared
        + torch.randint(
            3, VOCAB, (int(torch.randint(3, 10, (1,), generator=g)),), generator=g
        ).tolist()  # fmt: skip
        for _ in range(n)
    ]


def _map(d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.eye(d, dtype=torch.float64) + 0.1 * torch.randn(d, d, generator=g).double()


@pytest.mark.parametrize("case", FOLDABLE)
def test_fold_is_the_output_times_the_map(case):
    """The folded projection computes the original output times T; exit restores every bit."""
    model = build_tiny(case)
    parts = decoder_parts(model)
    modules = check_model(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    d = parts.embed.weight.shape[1] if case != "opt" else model.config.hidden_size
    t = _map(d, 0)
    ids = torch.tensor([_rows(1, 1)[0]])
    seen = {}
    hook = modules[1].register_forward_hook(lambda m, a, out: seen.update(out=out.double()))
    with torch.no_grad():
        model(ids)
        plain = seen["out"]
        with healed(modules, {1: t}):
            assert heal_tags(model)[1] != 0 and heal_tags(model)[0] == 0
            model(ids)
    hook.remove()
    reference = plain @ t
    assert torch.allclose(seen["out"], reference, rtol=1e-4, atol=1e-5)
    assert heal_tags(model) == [0] * len(parts.layers)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("case", ["gemma2", "olmo2", "opt-post-ln"])
def test_refuses_a_norm_after_the_mlp(case):
    with pytest.raises(UsageError, match="normalise the MLP output"):
        check_model(build_tiny(case))


def test_where_each_map_goes():
    # a middle removal: the kept layer before it, matching the output of the removed run
    assert heal_site(6, [], 3) == HealSite(2, 3, ())
    # merging runs: 3 then 4 removed, later 2: layer 1 takes the run 2..4
    assert heal_site(6, [3, 4], 2) == HealSite(1, 4, (3, 4))
    # the last layer: the boundary is the unpruned model's last output
    assert heal_site(6, [], 5) == HealSite(4, 5, ())
    # layer 0: no layer before it; the first kept layer takes the map, read without 0
    assert heal_site(6, [], 0) == HealSite(1, 1, (0,))
    assert heal_site(6, [3], 0) == HealSite(1, 1, (3, 0))
    assert heal_site(6, [2], 0) == HealSite(1, 2, (2, 0))
    # a block of layers at once (angular)
    assert heal_site(6, [], (2, 3)) == HealSite(1, 3, ())


def _explicit(model, rows, site: HealSite):
    """X (the layer's MLP output) and E (unpruned boundary minus its output), token by token."""
    parts = decoder_parts(model)
    proj = out_projections(model)[site.layer]
    xs, es, held = [], [], []
    store: dict = {}  # filled by the hooks, one row at a time
    for i, row in enumerate(rows):
        ids = torch.tensor([row])
        # the unpruned output of layer b (the boundary)
        h = parts.layers[site.boundary].register_forward_hook(
            lambda m, a, o: store.update(t=layer_output(o))
        )
        with torch.no_grad():
            model(ids)
        h.remove()
        target = store["t"][0].double()
        with without_layers(model, site.view) as view:
            block = next(m for m in view.layers if proj in m.modules())
            h1 = proj.register_forward_hook(lambda m, a, o: store.update(m=o))
            h2 = block.register_forward_hook(lambda m, a, o: store.update(h=layer_output(o)))
            with torch.no_grad():
                model(ids)
            h1.remove()
            h2.remove()
        xs.append(store["m"].reshape(len(row), -1).double())
        es.append(target - store["h"][0].double())
        held += [i % HELD_EVERY == HELD_EVERY - 1] * len(row)
    return torch.cat(xs), torch.cat(es), torch.tensor(held)


@pytest.mark.parametrize("case", ["llama", "gpt2"])
@pytest.mark.parametrize("k", [0, 2])
def test_fit_is_the_least_squares_map(case, k):
    """The streamed fit equals ridge least squares on explicitly gathered activations, with
    the ridge that minimises the held-out error."""
    model = build_tiny(case, n_layers=4)
    rows = _rows(12, 3)
    healer = LinearHealer(model, HealData(rows, None), max_tokens=16)
    fit = healer.fit([], [k])[k]
    x, e, held = _explicit(model, rows, fit.site)
    xf, ef, xh, eh = x[~held], e[~held], x[held], e[held]
    d = x.shape[1]
    a = xf.T @ xf
    mean = float(a.diagonal().sum()) / d
    errors = {None: float((eh**2).sum())}
    for rel in RIDGES:
        delta = torch.linalg.solve(a + rel * mean * torch.eye(d, dtype=torch.float64), xf.T @ ef)
        errors[rel] = float(((eh - xh @ delta) ** 2).sum())
    best = min(errors, key=lambda r: errors[r])
    assert fit.record["ridge"] == best
    assert fit.record["tokens"] == x.shape[0]
    assert fit.record["held_out_tokens"] == int(held.sum())
    assert fit.record["held_out_mse"] == pytest.approx(errors[best] / int(held.sum()) / d, rel=1e-5)
    if best is not None:
        lam = best * float((x.T @ x).diagonal().sum()) / d
        delta = torch.linalg.solve(x.T @ x + lam * torch.eye(d, dtype=torch.float64), x.T @ e)
        # the model ran batched and padded there, one row at a time here: float32 rounding apart
        assert torch.allclose(fit.map, torch.eye(d, dtype=torch.float64) + delta, atol=1e-5)
        assert fit.record["held_out_mse"] < fit.record["held_out_mse_unhealed"]
    healer.close()


@pytest.mark.parametrize("prefix", [0, 5])
def test_source_passes_resume_at_the_first_changed_layer(prefix, monkeypatch):
    """A fit in a pruned and healed model (layer 3 removed, its map on layer 2) reads its sources
    from a pass resumed at the first changed layer and cut after the last healed one; the
    sums are those of whole passes of the current model, for several sites at once (search
    mode), with and without a shared prefix."""
    model = build_tiny("llama", n_layers=6)
    rows = _rows(12, 5, prefix=prefix)
    groups = [list(range(6)), list(range(6, 12))] if prefix else None

    def fits(healer):
        first = healer.fit([], [3])[3]  # site: layer 2
        healer.apply([3], first)
        early = healer.fit([3], [1])[1]  # site 0: before every change, one layer is run
        later = healer.fit([3], [4, 5, 0])  # sites 2, 4 (after the map on 2) and 1 (first kept)
        healer.close()
        return [first, early, *later.values()]

    spans = []
    quick = LinearHealer(model, HealData(rows, groups), max_tokens=16)
    real_span = LinearHealer._span
    monkeypatch.setattr(
        LinearHealer, "_span", lambda self, v, k: spans.append(real_span(self, v, k)) or spans[-1]
    )
    got = fits(quick)
    # the whole current model from its first layer: what the fit computed before
    monkeypatch.setattr(LinearHealer, "_span", lambda self, view, layers: (0, list(view)))
    want = fits(LinearHealer(model, HealData(rows, groups), max_tokens=16))
    assert [f.site for f in got] == [f.site for f in want]
    for a, b in zip(got, want, strict=True):
        assert a.record["ridge"] == b.record["ridge"] and a.record["tokens"] == b.record["tokens"]
        assert a.record["held_out_mse"] == pytest.approx(b.record["held_out_mse"], rel=1e-4)
        assert (a.map is None) == (b.map is None)
        if a.map is not None:
            assert torch.allclose(a.map, b.map, atol=1e-5)
    # what ran: layer 2 alone, then layer 0 alone (the rest dropped); the three sites from
    # layer 2 (the map's) to layer 4, and without layer 0 from its start
    assert (2, [3, 4, 5]) in spans and (0, [1, 2, 3, 4, 5]) in spans
    assert (2, [3, 5]) in spans and (0, [0, 2, 3, 4, 5]) in spans


def test_shared_prefixes_give_the_same_fit():
    """Running a group's few-shot prefix once is only a speed-up: the sums are the same."""
    model = build_tiny("llama", n_layers=4)
    rows = _rows(12, 4, prefix=6)
    one = LinearHealer(model, HealData(rows, None), max_tokens=16).fit([1], [2])[2]
    shared = LinearHealer(model, HealData(rows, [list(range(12))]), max_tokens=16)
    two = shared.fit([1], [2])[2]
    # the prefix counts once when shared, once per row when not
    assert two.record["tokens"] < one.record["tokens"]
    assert two.site == one.site
    shared.close()


def test_kept_targets_give_the_same_fit():
    """The unpruned states kept between fits (within the budget) change nothing."""
    model = build_tiny("llama", n_layers=4)
    rows = _rows(16, 7, prefix=5)
    groups = [list(range(8)), list(range(8, 16))]
    kept = LinearHealer(model, HealData(rows, groups), max_tokens=16)
    none = LinearHealer(model, HealData(rows, groups), max_tokens=16, target_budget=0)
    for removed, k in (([], 2), ([2], 1)):
        a, b = kept.fit(removed, [k])[k], none.fit(removed, [k])[k]
        assert a.record == b.record
        assert (a.map is None and b.map is None) or torch.equal(a.map, b.map)
    assert kept._targets and not none._targets
    kept.close()
    none.close()


def test_a_refit_replaces_the_map_it_does_not_compound():
    """A layer refitted while it holds a map gets the new map folded into its own weights,
    whether applied or tried (the judge and search mode try maps on the healed model)."""
    from phaseprune.engine.healing import HealFit
    from phaseprune.model.healing import folded

    model = build_tiny("llama", n_layers=4)
    healer = LinearHealer(model, HealData(_rows(8, 8), None), max_tokens=32)
    module = healer.modules[1]
    own = module.weight.detach().clone()
    site = HealSite(1, 2, ())
    first, second = HealFit(site, _map(64, 1), {}), HealFit(site, _map(64, 2), {})
    expected = folded(module, second.map)[0]  # the module holds its own weights here
    healer.apply([2], first)
    with healer.trying(second):
        assert torch.equal(module.weight, expected)
    healer.apply([2], second)
    assert torch.equal(module.weight, expected)
    healer.close()
    assert torch.equal(module.weight, own)


def test_too_few_prompts_refused():
    with pytest.raises(UsageError, match="at least 4 heal prompts"):
        HealData(_rows(3, 0))


def test_readouts_follow_the_maps():
    """The incremental readout and candidate scoring resume over a healed layer and equal a
    full pass of the healed model, bit for bit."""
    model = build_tiny("llama", n_layers=5)
    rows = _rows(60, 5)
    items = _rows(6, 6, prefix=4)
    groups = [list(range(6))]
    healer = LinearHealer(model, HealData(rows, None), max_tokens=32)
    reader = IncrementalReadout(model, items, OPTIONS, groups=groups, max_tokens=32)
    reader([])
    fit = healer.fit([], [3])[3]
    assert fit.map is not None
    healer.apply([3], fit)
    got = reader([3])
    with without_layers(model, [3]) as parts:
        full = read_options(parts, items, OPTIONS, max_tokens=32, progress=False, groups=groups)
    assert torch.equal(got, full)
    # candidates scored healed equal each healed model's own pass
    fits = healer.fit([3], [1, 4])
    heal = {k: (min(k, f.site.layer), healer.trying(f)) for k, f in fits.items()}
    scored = score_removals(model, [3], [1, 4], items, option_reduce(OPTIONS), groups=groups,
                            heal=lambda k: heal[k])  # fmt: skip
    for k, f in fits.items():
        with healer.trying(f):
            plain = final_readout(model, [3, k], items, option_reduce(OPTIONS), groups=groups)
        assert torch.equal(scored[k], plain)
    healer.close()
    assert heal_tags(model) == [0] * 5


# -- whole runs on the tiny decider ----------------------------------------------------------


def _prune(decider, out, *extra):
    from phaseprune.cli import main

    args = ["prune", "--model", str(decider.path), "--task", f"jsonl:{decider.path / 'eval.jsonl'}",
            "--quiet", "--no-plots", "--n-boot", "50", "--calib", "24", "--eval", "40",
            "--heal", "linear", "--heal-items", "12", "--out", str(out), *extra]  # fmt: skip
    assert main(args) == 0
    return json.loads((out / "trajectory.json").read_text())


def _steps(traj):
    return [{k: v for k, v in s.items() if k != "timing"} for s in traj["steps"]]


def test_healed_run_resumes_to_the_same_trajectory(decider, tmp_path):
    whole = _prune(decider, tmp_path / "whole", "--steps", "3", "--strategy", "iterative")
    _prune(decider, tmp_path / "part", "--steps", "2", "--strategy", "iterative")
    (tmp_path / "part" / "heal" / "step_002.npy").unlink(missing_ok=True)  # refitted on resume
    resumed = _prune(decider, tmp_path / "part", "--steps", "3", "--strategy", "iterative",
                     "--resume")  # fmt: skip
    assert _steps(resumed) == _steps(whole)
    assert whole["heal_data"]["prompts"] == 36 and whole["heal_data"]["extra_items"] == 12
    for step in whole["steps"]:
        assert step["heal"]["held_out_mse"] <= step["heal"]["held_out_mse_unhealed"]
        assert set(step["unhealed"]) >= {"eval_accuracy", "transition_layer", "eval_picks"}
    # the same calibration and evaluation items as the unhealed run of these settings
    plain = tmp_path / "plain"
    from phaseprune.cli import main

    main(["prune", "--model", str(decider.path), "--task", f"jsonl:{decider.path / 'eval.jsonl'}",
          "--quiet", "--no-plots", "--n-boot", "50", "--calib", "24", "--eval", "40",
          "--steps", "1", "--out", str(plain)])  # fmt: skip
    unhealed = json.loads((plain / "trajectory.json").read_text())
    assert unhealed["eval_items"] == whole["eval_items"]
    assert unhealed["calib_items"] == whole["calib_items"]
    assert "heal_data" not in unhealed and "heal" not in unhealed["steps"][0]
    assert not set(whole["heal_data"]["extra_item_ids"]) & set(whole["eval_items"])
    # compare and the report's accuracy figure show the same removals without the maps
    from phaseprune.compare import run_compare
    from phaseprune.presentation.figures.data import accuracy_runs

    table = run_compare([str(tmp_path / "whole"), str(plain)], str(tmp_path / "cmp"), depth=1)
    row = table.iloc[0]
    assert row["heal"] == "linear" and row["maps_kept"] == sum(
        bool(s["heal"].get("map_sha256")) for s in whole["steps"]
    )
    assert row["accuracy_last_unhealed"] == whole["steps"][-1]["unhealed"]["eval_accuracy"]
    assert table.iloc[1]["heal"] == "none" and pd.isna(table.iloc[1]["accuracy_last_unhealed"])
    runs = accuracy_runs([whole, unhealed], ["healed", "plain"])
    assert [r.label for r in runs] == ["healed", "healed, same removals unhealed", "plain"]
    assert list(runs[1].accuracy[1:]) == [s["unhealed"]["eval_accuracy"] for s in whole["steps"]]


def test_search_mode_and_export(decider, tmp_path):
    """Candidates scored healed; the export holds the healed weights and reloads exactly."""
    from phaseprune.cli import main

    traj = _prune(decider, tmp_path / "run", "--steps", "2", "--strategy", "iterative",
                  "--heal-when", "search")  # fmt: skip
    assert traj["settings"]["heal_when"] == "search"
    out = tmp_path / "export"
    assert main(["export", str(tmp_path / "run"), "--step", "2", "--out", str(out)]) == 0
    record = json.loads((out / "phaseprune_export.json").read_text())
    assert record["max_abs_logit_diff"] == 0.0
    kept = [s["heal"]["layer"] for s in traj["steps"] if s["heal"].get("map_sha256")]
    assert record["healed_layers"] == sorted(set(kept) - set(record["removed_layers"]))
    card = (out / "README.md").read_text()
    assert "least-squares linear map" in card or "none kept" in card
    # the export answers the evaluation items as the run's step 2 said
    assert export_accuracy(decider, out, traj["eval_items"]) == traj["steps"][-1]["eval_accuracy"]


def test_a_healed_run_reads_the_unhealed_builder_scan_from_a_shared_store(decider, tmp_path):
    """Phase-aware's decision-builder scan is unhealed with --heal-when after: a healed run
    takes it from an unhealed run's --score-cache entries (and spares the same layers); in
    search mode the scan heals each candidate, so it is the healed run's own."""
    from phaseprune.cli import main

    cache = str(tmp_path / "cache")
    pa = ["--strategy", "phase-aware", "--spare", "2", "--steps", "1", "--score-cache", cache]
    main(["prune", "--model", str(decider.path), "--task", f"jsonl:{decider.path / 'eval.jsonl'}",
          "--quiet", "--no-plots", "--n-boot", "50", "--calib", "24", "--eval", "40",
          "--out", str(tmp_path / "plain"), *pa])  # fmt: skip
    plain = json.loads((tmp_path / "plain" / "trajectory.json").read_text())
    after = _prune(decider, tmp_path / "after", *pa)
    used = after["timing"]["score_cache"]["unhealed"]
    assert used["key"] == plain["timing"]["score_cache"]["key"]
    assert used["hits"] > 0 and used["misses"] == 0  # every candidate read, none scored
    assert (
        after["steps"][0]["calib_phases"]["builders"]
        == plain["steps"][0]["calib_phases"]["builders"]
    )
    search = _prune(decider, tmp_path / "search", *pa, "--heal-when", "search")
    assert search["timing"]["score_cache"]["unhealed"]["hits"] == 0


def test_the_unhealed_readout_is_an_unhealed_runs_entry(decider, tmp_path):
    """A healed one-shot run removes what the unhealed run removed: its readout of the same
    removals without maps comes from that run's stored evaluation readouts, and equals them."""
    from phaseprune.cli import main

    cache = str(tmp_path / "cache")
    same = ["--strategy", "angular", "--steps", "3", "--score-cache", cache]
    main(["prune", "--model", str(decider.path), "--task", f"jsonl:{decider.path / 'eval.jsonl'}",
          "--quiet", "--no-plots", "--n-boot", "50", "--calib", "24", "--eval", "40",
          "--out", str(tmp_path / "plain"), *same])  # fmt: skip
    plain = json.loads((tmp_path / "plain" / "trajectory.json").read_text())
    healed = _prune(decider, tmp_path / "healed", *same)
    assert healed["timing"]["score_cache"]["unhealed"]["hits"] >= 3
    for a, b in zip(healed["steps"], plain["steps"], strict=True):
        assert a["removed_so_far"] == b["removed_so_far"]
        assert a["unhealed"]["eval_picks"] == b["eval_picks"]
        assert a["unhealed"]["eval_accuracy"] == b["eval_accuracy"]


def test_a_shared_store_never_changes_a_healed_runs_numbers(decider, tmp_path):
    """Two healed runs removing the same layers in the same order hold other models when their
    objectives judge the maps differently (seen on OpenBookQA: taylor's step 1 read the kl
    run's healed model). Their stores differ, and a run sharing a store reads what it reads
    alone."""
    cache = ["--score-cache", str(tmp_path / "cache")]
    order = ["--strategy", "order", "--order", "4,2", "--steps", "2"]
    kl = _prune(decider, tmp_path / "kl", *order, *cache, "--objective", "kl")
    acc = _prune(decider, tmp_path / "acc", *order, *cache, "--objective", "accuracy")
    alone = _prune(decider, tmp_path / "alone", *order, "--objective", "accuracy")
    key = {t["timing"]["score_cache"]["key"] for t in (kl, acc)}
    assert len(key) == 2  # the judge's objective is part of the healed store's key
    assert [s["eval_picks"] for s in acc["steps"]] == [s["eval_picks"] for s in alone["steps"]]
    assert [s["heal"]["judged"]["kept"] for s in acc["steps"]] == [
        s["heal"]["judged"]["kept"] for s in alone["steps"]
    ]
    # one map per removed block: a block of two layers is another model than two steps
    block = _prune(decider, tmp_path / "block", "--strategy", "angular", "--block-size", "2",
                   "--steps", "1", *cache, "--objective", "accuracy")  # fmt: skip
    assert block["timing"]["score_cache"]["key"] not in key


def test_api_gives_the_model_back(decider):
    """A healed run in memory leaves the caller's model with its own weights, bit for bit."""
    import phaseprune
    from phaseprune.tasks import load_task

    model = tf.AutoModelForCausalLM.from_pretrained(decider.path).eval()
    tokenizer = tf.AutoTokenizer.from_pretrained(decider.path)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    task = load_task(f"jsonl:{decider.path / 'eval.jsonl'}")
    settings = dict(strategy="last", steps=2, calib=16, eval=24, quiet=True, n_boot=50)
    result = phaseprune.prune(model, tokenizer, task, heal="linear", heal_items=8, **settings)
    assert "heal" in result.trajectory["steps"][0]
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert np.isfinite(result.trajectory["steps"][1]["heal"]["held_out_mse"])


def test_heal_data_text_or_task(decider, tmp_path, capsys):
    """--heal-data: plain text, or a task's prompts without the run's evaluation items."""
    from phaseprune.cli import main

    items = [json.loads(line) for line in (decider.path / "eval.jsonl").read_text().splitlines()]
    text = tmp_path / "heal.txt"
    text.write_text("\n".join(it["question"] + " " + " ".join(it["choices"]) for it in items[:12]))
    traj = _prune(decider, tmp_path / "text", "--steps", "1", "--strategy", "last",
                  "--heal-data", f"text:{text}")  # fmt: skip
    assert traj["heal_data"]["kind"] == "text" and traj["heal_data"]["documents"] == 12
    own = f"jsonl:{decider.path / 'eval.jsonl'}"
    traj = _prune(decider, tmp_path / "task", "--steps", "1", "--strategy", "last",
                  "--heal-data", own)  # fmt: skip
    assert traj["heal_data"]["evaluation_items_left_out"] == 40
    assert traj["heal_data"]["items"] == len(items) - 40
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"txt": "no text field"}\n' * 5)
    capsys.readouterr()
    args = ["prune", "--model", str(decider.path), "--task", own, "--quiet", "--calib", "24",
            "--eval", "40", "--heal", "linear", "--heal-data", f"text:{bad}",
            "--out", str(tmp_path / "bad")]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'text' field" in err[0]


def test_the_judge_scores_the_calibration_items_as_analyze_reads_them(decider, tmp_path):
    """The judge's two scores (the calibration layer cache, the healed one a probe) are the
    mean final margins `analyze` reads on the calibration items: of the model without the
    layer, and of the healed export of the step."""
    import dataclasses

    import phaseprune
    from phaseprune.cli import main
    from phaseprune.tasks import load_task

    traj = _prune(decider, tmp_path / "run", "--steps", "2", "--strategy", "angular",
                  "--objective", "margin")  # fmt: skip
    assert all(s["heal"]["judged"]["kept"] for s in traj["steps"])  # both sides are read
    task = load_task(f"jsonl:{decider.path / 'eval.jsonl'}")
    by_id = {it.item_id: it for it in task.items}
    calib = dataclasses.replace(task, items=[by_id[i] for i in traj["calib_items"]])

    def margin(model, tokenizer) -> float:
        summary = phaseprune.analyze(model, tokenizer, calib, quiet=True, n_boot=20).summary
        return summary["layers"][-1]["margin_mean"]

    tokenizer = tf.AutoTokenizer.from_pretrained(decider.path)
    for step in traj["steps"]:
        judged, n = step["heal"]["judged"], step["step"]
        out = tmp_path / f"export{n}"
        assert main(["export", str(tmp_path / "run"), "--step", str(n), "--out", str(out)]) == 0
        healed = margin(tf.AutoModelForCausalLM.from_pretrained(out).eval(), tokenizer)
        assert healed == pytest.approx(judged["healed" if judged["kept"] else "unhealed"], abs=1e-5)
    # step 1's unhealed side: the decider without the layer, no map anywhere
    model = tf.AutoModelForCausalLM.from_pretrained(decider.path).eval()
    with without_layers(model, traj["steps"][0]["removed_so_far"]):
        plain = margin(model, tokenizer)
    assert plain == pytest.approx(traj["steps"][0]["heal"]["judged"]["unhealed"], abs=1e-5)


def test_search_mode_fits_each_candidate_once_a_step():
    """A scan in parts asks for the same candidates' maps once per part: each is fitted once
    for the model it is read in, and a fit for another model (other maps held) is not reused."""
    from types import SimpleNamespace

    from phaseprune.engine.healing import HealFit
    from phaseprune.strategies.context import StrategyCache, heal_hook

    asked = []

    class Healer:
        active: tuple = ()

        def fit(self, removed, candidates):
            asked.append(list(candidates))
            return {k: HealFit(HealSite(k - 1, k, tuple(removed)), None, {}) for k in candidates}

        def reweighted(self):
            return self.active

        def trying(self, fit):
            return fit

    ctx = SimpleNamespace(heal=Healer(), heal_when="search", cache=StrategyCache())
    for _ in range(3):  # three subjects, the same candidates
        heal = heal_hook(ctx, [5], [1, 2, 3])
        assert heal(3)[0] == 2  # scored from the healed layer
    assert asked == [[1, 2, 3]]
    heal_hook(ctx, [5], [2, 4])
    assert asked == [[1, 2, 3], [4]]
    ctx.heal.active = (4,)  # a map held elsewhere: the sources differ
    heal_hook(ctx, [5], [2])
    assert asked[-1] == [2]
