"""docs/findings.md's head-to-head numbers, recomputed from the committed records by other code.

Issue 32 is checked by recomputing every number of the head-to-heads from
``experiments/records/`` with code of one's own; this test does that first, with integer item
counts instead of :mod:`phaseprune.core.headtohead`: each run's accuracy at each depth from its
per-item picks, its 90% and 80% depths (at least 9 (8) items right for every 10 the unpruned
model gets, at every depth up to it), its collapse (fewer than half) and McNemar's discordant
counts against the reference. It fails when the committed document and the committed records
disagree (a document rendered from runs whose records were not kept, or the reverse).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
RECORDS = ROOT / "experiments" / "records"
NUMBERS = sorted((ROOT / "docs" / "findings").glob("*/numbers.json"))


def _counts(traj: dict) -> tuple[list[int], np.ndarray]:
    """Layers removed at each readout, and each readout's per-item right/wrong."""
    gold = np.asarray(traj["eval_gold"])
    readouts = [traj["step0"], *traj["steps"]]
    depths = [0, *(len(s["removed_so_far"]) for s in traj["steps"])]
    return depths, np.array([np.asarray(r["eval_picks"]) == gold for r in readouts])


def _kept_to(depths: list[int], right: list[int], tenths: int) -> int:
    """The deepest depth with ``right * 10 >= tenths * right_unpruned`` at every depth up to it."""
    kept = 0
    for d, k in zip(depths, right, strict=True):
        if 10 * k < tenths * right[0]:
            break
        kept = d
    return kept


def _judged(numbers: dict) -> list[tuple[str, dict]]:
    """Every head-to-head of one setting's numbers: (stage prefix, head-to-head)."""
    out = [("h2h-", numbers["h2h"])] if numbers.get("h2h") else []
    healed = numbers.get("healed")
    if healed:
        out += [("", healed["healed"]), ("", healed["every"])]
    return out


def _record(plan: str, prefix: str, run: str) -> dict:
    stage = run if run.startswith("heal-") else f"h2h-{run}"
    return json.loads((RECORDS / plan / stage / "trajectory.json").read_text())


@pytest.mark.parametrize("path", NUMBERS, ids=lambda p: p.parent.name)
def test_committed_head_to_heads_agree_with_their_records(path):
    numbers = json.loads(path.read_text())
    plan = path.parent.name
    judged = _judged(numbers)
    if not judged:
        pytest.skip(f"{plan}: no head-to-head in its numbers")
    for prefix, h in judged:
        curves = {}
        for row in h["rows"]:
            depths, ok = _counts(_record(plan, prefix, row["run"]))
            right = [int(r.sum()) for r in ok]
            curves[row["run"]] = dict(zip(depths, ok, strict=True))
            n = ok.shape[1]
            where = f"{plan} {row['run']}"
            assert {int(d): round(a * n) for d, a in row["accuracy_at"].items()} == dict(
                zip(depths, right, strict=True)
            ), where
            assert row["depth_90"] == _kept_to(depths, right, 9), where
            assert row["depth_80"] == _kept_to(depths, right, 8), where
            fallen = [d for d, k in zip(depths, right, strict=True) if 2 * k < right[0]]
            # a run's stored collapse is its first readout below half; the run may stop there
            assert row["collapse_depth"] == (fallen[0] if fallen else None), where
        ref = curves[h["reference"]]
        for pair in h["pairs"]:
            m = pair["mcnemar"]
            if m is None:
                continue
            x, y = ref[m["depth"]], curves[pair["against"]][m["depth"]]
            assert (m["a_only"], m["b_only"]) == (int((x & ~y).sum()), int((~x & y).sum()))


def test_every_setting_with_runs_is_checked():
    """The parametrised test above reads every plan that has committed head-to-head runs."""
    with_runs = {p.name for p in RECORDS.iterdir() if any(p.glob("h2h-*")) or any(p.glob("heal-*"))}
    assert with_runs <= {p.parent.name for p in NUMBERS if _judged(json.loads(p.read_text()))}


@pytest.mark.parametrize(
    "path", sorted(RECORDS.glob("*/heal-*/trajectory.json")), ids=lambda p: p.parent.name
)
def test_a_healed_model_without_maps_reads_as_unhealed(path):
    """Until a healed run keeps its first map, its model is the unhealed one: every such step's
    readout equals its ``unhealed`` readout, pick for pick (a store serving another run's
    healed model breaks this; one did, on OpenBookQA's heal-taylor)."""
    traj = json.loads(path.read_text())
    for step in traj["steps"]:
        if step["heal"].get("map_sha256"):
            break  # from here on the model holds a map
        assert step["eval_picks"] == step["unhealed"]["eval_picks"], f"step {step['step']}"


def _unhealed_readouts(plan: Path) -> dict[frozenset, tuple[str, list]]:
    """Every unhealed readout of a plan's committed runs by removed set: (run, picks)."""
    out = {}
    for path in sorted(plan.glob("h2h-*/trajectory.json")):
        traj = json.loads(path.read_text())
        for step in traj["steps"]:
            removed = frozenset(step["removed_so_far"])
            out.setdefault(removed, (path.parent.name, step["eval_picks"]))
    return out


@pytest.mark.parametrize("plan", sorted(p for p in RECORDS.iterdir() if p.is_dir()),
                         ids=lambda p: p.name)  # fmt: skip
def test_the_same_removals_unhealed_read_alike_in_every_run(plan):
    """A healed step's ``unhealed`` readout is the model without the same layers, so wherever an
    unhealed run of the plan removed the same set, the two give every item the same pick."""
    seen = _unhealed_readouts(plan)
    met = 0
    for path in sorted(plan.glob("heal-*/trajectory.json")):
        for step in json.loads(path.read_text())["steps"]:
            other = seen.get(frozenset(step["removed_so_far"]))
            if other is not None:
                met += 1
                where = f"{path.parent.name} step {step['step']} against {other[0]}"
                assert step["unhealed"]["eval_picks"] == other[1], where
    if not met:
        pytest.skip(f"{plan.name}: no healed step removes a set an unhealed run removed")
