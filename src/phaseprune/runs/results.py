"""What a run returns in memory: :class:`Analysis` and :class:`Pruning`, as a reader would see them.

``analyze`` and ``prune`` return these records whether or not they write a run directory.
The records pass through the same serialisation as the files (JSON for the summary and the
trajectory, Parquet for the tables), in memory, so a run kept only in memory and one written to
``--out`` and read back are equal, value for value and type for type.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from phaseprune.runs.records import Summary, Trajectory, parquet_bytes


def as_written(record: Any) -> Any:
    """``record`` as its JSON file holds it (tuples as lists, numbers as JSON numbers)."""
    return json.loads(json.dumps(record, allow_nan=False, ensure_ascii=False))


def table_as_written(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` as its Parquet file holds it (the column types a reader gets back)."""
    return pd.read_parquet(io.BytesIO(parquet_bytes(frame)))


@dataclass(frozen=True)
class Analysis:
    """What ``analyze`` measured: the run's summary and its per-item table."""

    summary: Summary
    """``summary.json`` (docs/schema.md): accuracy, per-layer records, phases, settings."""
    items: pd.DataFrame
    """``items.parquet``: one row per item and readout layer (margins, picks, logits)."""
    out: Path | None
    """Where the run was written; None when it was kept in memory only."""

    @property
    def accuracy(self) -> float:
        """Final-layer accuracy over the items."""
        return self.summary["accuracy"]

    @property
    def transition_layer(self) -> int | None:
        """First layer of the Decisive Phase (None: the model never decides)."""
        return self.summary["transition_layer"]

    @property
    def phases(self) -> dict:
        """The phases record: Silent and Decisive ranges, each layer's phase, the statement."""
        return self.summary["phases"]


@dataclass(frozen=True)
class Pruning:
    """What ``prune`` did: the trajectory and every candidate's score."""

    trajectory: Trajectory
    """``trajectory.json`` (docs/schema.md): step 0, every step's readout, the collapse."""
    candidates: pd.DataFrame
    """``candidates.parquet``: the score of every candidate layer at every step."""
    out: Path | None
    """Where the run was written; None when it was kept in memory only."""

    def removed_layers(self, step: int | None = None) -> list[int]:
        """Original indices removed after ``step`` steps (default: all of them)."""
        steps = self.trajectory["steps"]
        upto = len(steps) if step is None else step
        if not 0 <= upto <= len(steps):
            raise ValueError(f"the run has steps 0..{len(steps)}; step {step} does not exist")
        return [k for s in steps[:upto] for k in s["removed_layers"]]

    @property
    def accuracies(self) -> list[float]:
        """Evaluation accuracy at step 0 (unpruned) and after each step."""
        t = self.trajectory
        return [t["step0"]["eval_accuracy"], *(s["eval_accuracy"] for s in t["steps"])]
