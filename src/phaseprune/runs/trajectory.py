"""The records of a pruning run: its header, each step's record and candidate rows.

Built from plain values: the header from a :class:`RunHead` that ``prune``'s runner fills, a
step from its :class:`~phaseprune.strategies.context.Choice` and readout. The types are
:mod:`phaseprune.runs.records`' and docs/schema.md describes every key.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime, timezone
from typing import Any

import numpy as np

from phaseprune import __version__
from phaseprune.core.metrics import item_metrics, layer_stats, wilson_interval
from phaseprune.core.objectives import candidate_metrics
from phaseprune.core.phases import detect_phases
from phaseprune.model.surgery import kept_layers
from phaseprune.runs.records import (
    EXACT,
    TRAJECTORY_SCHEMA,
    Readout,
    Step,
    Trajectory,
    layer_record,
    phases_record,
    settings_record,
)
from phaseprune.strategies.context import runner_up


def readout_record(logits: np.ndarray, gold: np.ndarray, n_options: int, cfg) -> Readout:
    """Accuracy, interval, per-layer records and phases of one evaluation readout."""
    m = item_metrics(logits, gold)
    stats = layer_stats(m, n_options, n_boot=cfg.n_boot, seed=cfg.seed)
    phases = detect_phases(m.correct, m.margin, n_options, n_boot=cfg.n_boot, seed=cfg.seed)
    k = int(m.correct[:, -1].sum())
    lo, hi = wilson_interval(np.array(k), len(gold))
    record = {
        "eval_accuracy": k / len(gold),
        "eval_accuracy_ci": [float(lo), float(hi)],
        "transition_layer": phases.transition_layer,
        "transition_ci": list(phases.transition_ci) if phases.transition_ci else None,
        "phases": phases_record(phases, logits.shape[1] - 1),
        "layers": [layer_record(s) for s in stats],
        # per item, for paired comparisons between runs on the same items
        "eval_picks": [int(x) for x in m.pred[:, -1]],
        "eval_margins": [round(float(x), 4) for x in m.margin[:, -1]],
    }
    return record


@dataclasses.dataclass(frozen=True)
class RunHead:
    """What a new trajectory's header records about its run (made by ``prune``'s runner)."""

    cfg: Any
    """The run's :class:`~phaseprune.runs.config.PruneConfig`."""
    fingerprint: str
    """The recipe's fingerprint (:func:`~phaseprune.runs.resume.recipe_key`)."""
    info: dict
    """The model's identity (``ModelInfo`` as a dict)."""
    task: dict
    """The items and how they were tokenised (``trajectory["task"]``)."""
    calib_items: list[str]
    """Calibration item ids, in the order they are scored."""
    eval_items: list[str]
    """Evaluation item ids, in the order they are read."""
    calib_gold: np.ndarray
    """(n_calib,) gold option index per calibration item."""
    eval_gold: np.ndarray
    """(n_eval,) gold option index per evaluation item."""
    calib_logits: np.ndarray
    """(n_calib, n_options) the unpruned model's final option logits on the calibration items."""
    n_options: int
    """Options per item."""
    heal_data: dict | None = None
    """``--heal linear``: what the maps are fitted on (``HealData.record``)."""


def header(head: RunHead, step0: Readout) -> Trajectory:
    """A new trajectory record: the run's identity, items and unpruned readout, no steps yet."""
    cfg = head.cfg
    return {
        "schema_version": TRAJECTORY_SCHEMA,
        "kind": "prune",
        "phaseprune_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "fingerprint": head.fingerprint,
        "model": head.info,
        "task": head.task,
        "strategy": cfg.strategy,
        "objective": cfg.objective,
        "settings": settings_record(cfg),
        "calib_items": list(head.calib_items),
        "eval_items": list(head.eval_items),
        "eval_gold": [int(g) for g in head.eval_gold],
        "calib_gold": [int(g) for g in head.calib_gold],
        "calib_picks": [int(p) for p in np.asarray(head.calib_logits).argmax(-1)],
        "chance": 1.0 / head.n_options,
        "n_layers": head.info["n_layers"],
        # the unpruned model on the calibration items, as candidates are scored there
        "calib_step0": candidate_metrics(head.calib_logits, head.calib_gold, head.calib_logits),
        "step0": step0,
        "steps": [],
        "complete": False,
        "timing": {},
        "collapse": None,  # set by _write before anything is written
        "precision": dict(EXACT),
        **({"heal_data": head.heal_data} if head.heal_data is not None else {}),
    }


def step_record(
    n_layers: int, step: int, choice, removed: list[int], phase_of_removed: str, readout: Readout
) -> Step:
    """The record of one step: what was removed, why, and the readout after it."""
    best = choice.scores[choice.layers[0]]
    return {
        "step": step,
        "removed_layer": choice.layers[0] if len(choice.layers) == 1 else list(choice.layers),
        "removed_layers": list(choice.layers),
        "removed_so_far": list(removed),
        "remaining_layers": kept_layers(n_layers, removed),
        "phase_of_removed": phase_of_removed,
        "calib_score": best["score"],
        "calib_metrics": {k: v for k, v in best.items() if k not in ("score", "picks")},
        "criterion": str(choice.criterion),
        **runner_up(choice),
        "note": choice.note,
        "calib_phases": choice.calib_phases,
        "precision": choice.precision,
        **readout,
    }


def candidate_rows(step: int, choice) -> list[dict]:
    """``candidates.parquet`` rows of one step: every candidate's score, the chosen marked."""
    chosen = choice.layers[0]
    rows = []
    for layer, metrics in choice.scores.items():
        rows.append(
            {
                "step": step,
                "layer": int(layer),
                "score": float(metrics["score"]),
                "selected": layer == chosen,
                "criterion": str(choice.criterion),
                **{k: float(v) for k, v in metrics.items() if k not in ("score", "picks")},
                # per calibration item (objective-scored strategies): the pruned model's pick
                **({"picks": [int(p) for p in metrics["picks"]]} if "picks" in metrics else {}),
            }
        )
    return rows
