"""The records an ``analyze`` run writes: ``summary.json`` and ``items.parquet``.

The schema is documented in ``docs/schema.md``; bump :data:`SCHEMA_VERSION` on any change
that renames or removes a key. Readers drop unknown keys with a warning
(:func:`load_summary`).
"""

from __future__ import annotations

import dataclasses
import io
import json
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from phaseprune.errors import UsageError
from phaseprune.metrics import LETTERS, ItemMetrics, LayerStats, option_frequency, wilson_interval
from phaseprune.phases import PhaseResult

SCHEMA_VERSION = 1
TRAJECTORY_SCHEMA = 1  # trajectory.json of prune runs
SUMMARY_KEYS = (
    "schema_version",
    "kind",
    "phaseprune_version",
    "created",
    "model",
    "task",
    "accuracy",
    "accuracy_ci",
    "chance",
    "n_layers",
    "gold_frequency",
    "layers",
    "transition_layer",
    "transition_ci",
    "p_no_transition",
    "phases",
    "timing",
    "settings",
)


def layer_record(stats: LayerStats) -> dict:
    """One entry of ``summary["layers"]``."""
    record = dataclasses.asdict(stats)
    record["margin_ci"] = list(stats.margin_ci)
    record["accuracy_ci"] = list(stats.accuracy_ci)
    return record


def phases_record(phases: PhaseResult, n_layers: int) -> dict:
    """``summary["phases"]``: ranges of readout indices, per-decoder-layer phases, a sentence."""
    return {
        "silent": list(phases.silent),
        "decisive": list(phases.decisive) if phases.decisive else None,
        "layer_phases": [phases.layer_phase(j) for j in range(n_layers)],
        "statement": phases.statement(),
    }


def build_summary(
    *,
    model: dict,
    task: dict,
    gold: np.ndarray,
    metrics: ItemMetrics,
    layers: Sequence[LayerStats],
    phases: PhaseResult,
    timing: dict,
    settings: dict,
    version: str,
    created: str,
) -> dict:
    """Assemble ``summary.json``; the model's own accuracy is the last readout layer's."""
    n_options = task["n_options"]
    n_items = len(gold)
    n_layers = len(layers) - 1
    k = int(metrics.correct[:, -1].sum())
    lo, hi = wilson_interval(np.array(k), n_items)
    gold_freq = option_frequency(gold, n_options)
    return {
        "schema_version": SCHEMA_VERSION,
        "kind": "analyze",
        "phaseprune_version": version,
        "created": created,
        "model": model,
        "task": task,
        "accuracy": k / n_items,
        "accuracy_ci": [float(lo), float(hi)],
        "chance": 1.0 / n_options,
        "n_layers": n_layers,
        "gold_frequency": {LETTERS[i]: float(s) for i, s in enumerate(gold_freq)},
        "layers": [layer_record(s) for s in layers],
        "transition_layer": phases.transition_layer,
        "transition_ci": list(phases.transition_ci) if phases.transition_ci else None,
        "p_no_transition": phases.p_no_transition,
        "phases": phases_record(phases, n_layers),
        "timing": timing,
        "settings": settings,
    }


def items_table(
    item_ids: Sequence[str],
    subjects: Sequence[str],
    gold: np.ndarray,
    option_logits: np.ndarray,
    metrics: ItemMetrics,
) -> pd.DataFrame:
    """One row per item and readout layer (``items.parquet``)."""
    n_items, n_readout, n_options = option_logits.shape
    letters = np.array(list(LETTERS[:n_options]))
    frame = pd.DataFrame(
        {
            "item_id": np.repeat(np.asarray(item_ids, dtype=object), n_readout),
            "subject": np.repeat(np.asarray(subjects, dtype=object), n_readout),
            "layer": np.tile(np.arange(n_readout, dtype=np.int16), n_items),
        }
    )
    flat = option_logits.reshape(n_items * n_readout, n_options)
    for i, letter in enumerate(letters):
        frame[f"logit_{letter}"] = flat[:, i].astype(np.float32)
    frame["margin"] = metrics.margin.reshape(-1).astype(np.float32)
    frame["prob_margin"] = metrics.prob_margin.reshape(-1).astype(np.float32)
    frame["pred"] = letters[metrics.pred.reshape(-1)]
    frame["gold"] = np.repeat(letters[np.asarray(gold)], n_readout)
    frame["correct"] = metrics.correct.reshape(-1)
    return frame


def parquet_bytes(frame: pd.DataFrame) -> bytes:
    """Serialise a table to Parquet in memory (so it can be written atomically)."""
    buf = io.BytesIO()
    frame.to_parquet(buf, index=False)
    return buf.getvalue()


def load_summary(run_dir: str | Path) -> dict:
    """Read a run's ``summary.json``; clear errors for non-runs and other schema versions."""
    path = Path(run_dir) / "summary.json"
    if not path.is_file():
        raise UsageError(f"{run_dir} is not a complete phaseprune run (no summary.json)")
    record = json.loads(path.read_text())
    version = record.get("schema_version")
    if version != SCHEMA_VERSION:
        raise UsageError(
            f"{path} has schema_version {version}, this phaseprune reads {SCHEMA_VERSION}; "
            "rerun the analysis"
        )
    unknown = sorted(set(record) - set(SUMMARY_KEYS))
    if unknown:
        warnings.warn(f"{path}: ignoring unknown keys {unknown}", stacklevel=2)
    return {k: v for k, v in record.items() if k in SUMMARY_KEYS}
