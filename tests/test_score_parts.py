"""A candidate scan over grouped items (the subjects of few-shot calibration items) kept group by
group: the same values as one whole scan, and an interrupted step resumes from the groups it
finished instead of starting again."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
from tiny_models import OPTION_IDS, VOCAB, build_tiny

from phaseprune.cli import main
from phaseprune.engine.candidates import option_reduce, score_removals
from phaseprune.runs.score_store import ScoreStore
from phaseprune.strategies.context import item_subset, stored_removals

GROUPS = [[0, 3, 6], [1, 4], [2, 5, 7]]  # interleaved, as subjects come in a sample


def _items():
    """Eight prompts in three groups, each group with its own shared prefix."""
    g = torch.Generator().manual_seed(3)
    prefixes = [torch.randint(3, VOCAB, (n,), generator=g).tolist() for n in (7, 5, 9)]
    ids = [None] * 8
    for prefix, group in zip(prefixes, GROUPS, strict=True):
        for i in group:
            ids[i] = prefix + torch.randint(3, VOCAB, (2 + i % 3,), generator=g).tolist()
    return ids


def _scan(model, removed, ids, groups, calls):
    def score(todo, keep, items):
        calls.append((tuple(todo), None if items is None else tuple(items)))
        sub_ids, sub_groups = item_subset(ids, groups, items)
        return score_removals(
            model, removed, todo, sub_ids, option_reduce(OPTION_IDS.tolist()), max_tokens=16,
            groups=sub_groups, on_scored=keep,
        )  # fmt: skip

    return score


def _files(root, pattern):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob(pattern) if p.is_file())


@pytest.mark.parametrize("removed", [(), (1,)])
def test_a_scan_in_parts_equals_the_whole_scan(tmp_path, removed):
    model, ids = build_tiny("llama", n_layers=4), _items()
    candidates = [k for k in range(4) if k not in removed]
    reduce = option_reduce(OPTION_IDS.tolist())
    whole = score_removals(model, removed, candidates, ids, reduce, max_tokens=16, groups=GROUPS)
    store = ScoreStore(tmp_path, "key")
    ctx, calls = SimpleNamespace(store=store), []
    parted = stored_removals(
        ctx, "candidates", removed, candidates, _scan(model, removed, ids, GROUPS, calls), GROUPS
    )
    assert [items for _, items in calls] == [tuple(g) for g in GROUPS]  # one scan per group
    for k in candidates:
        torch.testing.assert_close(parted[k], whole[k], atol=0, rtol=0)
        kept = store.lookup("candidates", removed, k)
        torch.testing.assert_close(kept, whole[k], atol=0, rtol=0)
    assert _files(store.root, "*.npy") == sorted(
        f"candidates/{'-'.join(map(str, removed)) or 'none'}+{k}.npy" for k in candidates
    )  # the parts are dropped once every candidate has its whole entry
    calls.clear()
    again = stored_removals(
        ctx, "candidates", removed, candidates, _scan(model, removed, ids, GROUPS, calls), GROUPS
    )
    assert calls == [] and all(torch.equal(again[k], whole[k]) for k in candidates)


def test_item_subset_renumbers_the_groups():
    ids = [[i] for i in range(8)]
    assert item_subset(ids, GROUPS, None) == (ids, GROUPS)
    assert item_subset(ids, GROUPS, [1, 4]) == ([[1], [4]], [[0, 1]])
    assert item_subset(ids, None, [5, 2]) == ([[5], [2]], None)


def test_an_interrupted_scan_resumes_from_the_groups_it_finished(tmp_path, monkeypatch):
    model, ids = build_tiny("llama", n_layers=4), _items()
    whole = score_removals(
        model, (), [0, 1, 2, 3], ids, option_reduce(OPTION_IDS.tolist()), max_tokens=16,
        groups=GROUPS,
    )  # fmt: skip
    put, kept = ScoreStore.put, []

    def interrupted(self, kind, removed, array, candidate=None):
        if len(kept) == 6:  # group 2's third candidate: Ctrl-C
            raise KeyboardInterrupt
        put(self, kind, removed, array, candidate)
        kept.append((kind, candidate))

    monkeypatch.setattr(ScoreStore, "put", interrupted)
    store, calls = ScoreStore(tmp_path, "key"), []
    ctx = SimpleNamespace(store=store)
    with pytest.raises(KeyboardInterrupt):
        stored_removals(ctx, "js", (), [0, 1, 2, 3], _scan(model, (), ids, GROUPS, calls), GROUPS)
    assert kept == [*[("js.parts/0", k) for k in range(4)], ("js.parts/1", 0), ("js.parts/1", 1)]
    monkeypatch.setattr(ScoreStore, "put", put)
    calls.clear()
    resumed = stored_removals(
        ctx, "js", (), [0, 1, 2, 3], _scan(model, (), ids, GROUPS, calls), GROUPS
    )
    # group 0 is read back, group 1 scores only its two missing candidates, group 2 all four
    assert calls == [((2, 3), tuple(GROUPS[1])), ((0, 1, 2, 3), tuple(GROUPS[2]))]
    for k in range(4):
        torch.testing.assert_close(resumed[k], whole[k], atol=0, rtol=0)
    assert not _files(store.root, "js.parts/*/*")


def _grouped_task(decider, path):
    """The decider's items in three subjects, so that the calibration scan runs in parts."""
    rows = [json.loads(line) for line in (decider.path / "eval.jsonl").read_text().splitlines()]
    lines = [json.dumps({**row, "subject": f"s{i % 3}"}) for i, row in enumerate(rows)]
    path.write_text("\n".join(lines) + "\n")
    return path


def _run(decider, task, out, *extra):
    argv = ["prune", "--model", str(decider.path), "--task", f"jsonl:{task}", "--steps", "2",
            "--calib", "12", "--eval", "24", "--n-boot", "50", "--quiet", "--no-plots",
            "--out", str(out), *map(str, extra)]  # fmt: skip
    return main(argv)


@pytest.mark.parametrize(("strategy", "kind"), [("iterative", "candidates"), ("logit-js", "js")])
def test_an_interrupted_run_over_subjects_loses_only_the_group_under_way(
    decider, tmp_path, monkeypatch, strategy, kind
):
    task = _grouped_task(decider, tmp_path / "items.jsonl")
    assert _run(decider, task, tmp_path / "plain", "--strategy", strategy) == 0
    plain = json.loads((tmp_path / "plain" / "trajectory.json").read_text())
    put, kept = ScoreStore.put, []

    def interrupted(self, what, removed, array, candidate=None):
        if what.startswith(f"{kind}.parts/") and len(kept) == 9:  # in step 1's second group
            raise KeyboardInterrupt
        put(self, what, removed, array, candidate)
        kept.extend([(what, candidate)] if what.startswith(f"{kind}.parts/") else [])

    monkeypatch.setattr(ScoreStore, "put", interrupted)
    assert _run(decider, task, tmp_path / "r", "--strategy", strategy) != 0
    fresh = []

    def counted(self, what, removed, array, candidate=None):
        put(self, what, removed, array, candidate)
        fresh.extend(
            [(what, candidate)] if what.startswith(f"{kind}.parts/") and not removed else []
        )

    monkeypatch.setattr(ScoreStore, "put", counted)
    assert _run(decider, task, tmp_path / "r", "--strategy", strategy, "--resume") == 0
    resumed = json.loads((tmp_path / "r" / "trajectory.json").read_text())
    drop = ("timing", "created", "settings")
    assert {k: v for k, v in resumed.items() if k not in drop} == {
        k: v for k, v in plain.items() if k not in drop
    }
    assert pd.read_parquet(tmp_path / "r" / "candidates.parquet").equals(
        pd.read_parquet(tmp_path / "plain" / "candidates.parquet")
    )
    # step 1 (nothing removed) scored again only what the interrupted scan had not kept
    rows = pd.read_parquet(tmp_path / "plain" / "candidates.parquet")
    n_layers = len(rows.loc[rows["step"] == 1])
    assert len(kept) == 9 and not set(kept) & set(fresh)
    assert len(set(kept) | set(fresh)) == 3 * n_layers  # three subjects, every candidate
