"""Run directories for the report tests: one analyze run and two pruning runs of the decider.

Loaded with ``pytest_plugins = ["report_fixtures"]`` by the report test modules (and imported
by nothing else, so pytest can rewrite its asserts). The runs are
made once per session by the CLI on the trained tiny decider (``conftest.decider``), so the
pages show a real transition and a real collapse: about 10 s on top of the decider's build.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import pytest

from phaseprune.cli import main


class ReportRuns(NamedTuple):
    """Run directories made once per session."""

    analyze: Path
    """``phaseprune analyze`` of the decider on its 160 eval items."""
    iterative: Path
    """``phaseprune prune --strategy iterative``, 5 steps, 40 calibration / 100 eval items."""
    last: Path
    """``phaseprune prune --strategy last`` on the same items, 5 steps."""


def _cli(*argv) -> None:
    code = main([str(a) for a in argv])
    assert code == 0, f"phaseprune {argv[0]} failed with exit code {code}"


@pytest.fixture(scope="session")
def report_runs(tmp_path_factory, decider) -> ReportRuns:
    root = tmp_path_factory.mktemp("report-runs")
    task = f"jsonl:{decider.path / 'eval.jsonl'}"
    common = ["--model", decider.path, "--task", task, "--quiet", "--no-plots", "--n-boot", "200"]
    _cli("analyze", *common, "--out", root / "analyze")
    for strategy in ("iterative", "last"):
        _cli("prune", *common, "--calib", "40", "--eval", "100", "--strategy", strategy,
             "--steps", "5", "--out", root / strategy)  # fmt: skip
    return ReportRuns(root / "analyze", root / "iterative", root / "last")
