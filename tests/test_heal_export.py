"""``--strategy order`` (a given removal order) and ``export --heal linear`` of an unhealed run:
its removals healed by an order run in RUN/healed, the same as pruning that order healed."""

from __future__ import annotations

import dataclasses
import json

import pytest
from decider_runs import export_accuracy

from phaseprune.core.errors import UsageError
from phaseprune.runs.config import ModelConfig, PruneConfig, TaskConfig
from phaseprune.runs.records import settings_record
from phaseprune.runs.resume import config_of
from phaseprune.strategies.rankings import check_order


def _prune(decider, out, *extra) -> dict:
    from phaseprune.cli import main

    args = ["prune", "--model", str(decider.path), "--task", f"jsonl:{decider.path / 'eval.jsonl'}",
            "--quiet", "--no-plots", "--n-boot", "50", "--calib", "24", "--eval", "40",
            "--out", str(out), *extra]  # fmt: skip
    assert main(args) == 0
    return json.loads((out / "trajectory.json").read_text())


def _steps(traj: dict) -> list[dict]:
    return [{k: v for k, v in s.items() if k != "timing"} for s in traj["steps"]]


def test_order_removes_the_given_layers(decider, tmp_path):
    traj = _prune(decider, tmp_path / "run", "--strategy", "order", "--order", "4,1,2",
                  "--steps", "3")  # fmt: skip
    assert [s["removed_layer"] for s in traj["steps"]] == [4, 1, 2]
    assert traj["steps"][0]["criterion"] == "position in --order (min)"
    assert traj["settings"]["order"] == [4, 1, 2]


@pytest.mark.parametrize(
    ("strategy", "order", "steps", "protect", "n", "message"),
    [
        ("order", (), 1, (), None, "needs --order"),
        ("last", (1,), 1, (), None, "give both or neither"),
        ("order", (1, 1), 1, (), None, "names a layer twice"),
        ("order", (1, 2), 1, (2,), None, "protected layers [2]"),
        ("order", (1, 2), 3, (), None, "--steps 3 but --order lists 2"),
        ("order", (1, 6), 2, (), 6, "layers are 0..5"),
    ],
)
def test_order_refusals(strategy, order, steps, protect, n, message):
    with pytest.raises(UsageError, match=message.replace("[", r"\[").replace("]", r"\]")):
        check_order(strategy, order, steps, protect, n)


def test_config_of_inverts_the_settings_record():
    cfg = PruneConfig(out="x", model=ModelConfig(model="m"), task=TaskConfig(task="mmlu",
                      subjects=("a", "b")), strategy="order", order=(3, 1), steps=2,
                      protect=(0,), heal="linear")  # fmt: skip
    assert config_of(json.loads(json.dumps(settings_record(cfg)))) == cfg
    old = settings_record(dataclasses.replace(cfg, order=()))
    del old["order"], old["heal"]  # a run made before these settings existed
    assert config_of(old) == dataclasses.replace(cfg, order=(), heal="none")


def test_export_heals_an_unhealed_run(decider, tmp_path):
    """export --heal linear = prune --strategy order over the run's removals, healed."""
    from phaseprune.cli import main

    plain = _prune(decider, tmp_path / "plain", "--strategy", "iterative", "--steps", "3")
    order = [s["removed_layer"] for s in plain["steps"]]
    out = tmp_path / "export"
    args = ["export", str(tmp_path / "plain"), "--step", "2", "--out", str(out), "--heal", "linear"]
    assert main(args) == 0
    record = json.loads((out / "phaseprune_export.json").read_text())
    assert record["removed_layers"] == order[:2] and record["max_abs_logit_diff"] == 0.0
    assert record["healed_replay_of"] == f"{tmp_path / 'plain'} (iterative, step 2)"
    replay = json.loads((tmp_path / "plain" / "healed" / "trajectory.json").read_text())
    direct = _prune(decider, tmp_path / "direct", "--strategy", "order", "--order",
                    ",".join(map(str, order)), "--steps", "2", "--heal", "linear",
                    "--objective", "accuracy")  # fmt: skip
    assert _steps(replay) == _steps(direct)
    kept = {s["heal"]["layer"] for s in replay["steps"] if s["heal"].get("map_sha256")}
    assert record["healed_layers"] == sorted(kept - set(order[:2]))
    # the same removals unhealed are the plain run's
    for healed, unhealed in zip(replay["steps"], plain["steps"], strict=False):
        assert healed["unhealed"]["eval_accuracy"] == unhealed["eval_accuracy"]
    card = (out / "README.md").read_text()
    assert "(the removals of" in card and "healed)" in card
    # the export answers as the replay's step 2 says
    assert (
        export_accuracy(decider, out, replay["eval_items"]) == replay["steps"][1]["eval_accuracy"]
    )
    # a deeper export extends the replay; its first steps stay
    deeper = tmp_path / "deeper"
    args[3], args[5] = "3", str(deeper)
    assert main(args) == 0
    extended = json.loads((tmp_path / "plain" / "healed" / "trajectory.json").read_text())
    assert len(extended["steps"]) == 3 and _steps(extended)[:2] == _steps(replay)
