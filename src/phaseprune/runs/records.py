"""The run records: what ``analyze`` and ``prune`` write, typed, and how they are built.

An ``analyze`` run writes :class:`Summary` (``summary.json``) and ``items.parquet``; a ``prune``
run writes :class:`Trajectory` (``trajectory.json``: settings, the unpruned readout, one
:class:`Step` per removal and the :class:`Collapse`) and ``candidates.parquet``. The records are
JSON objects, typed here as ``TypedDict`` so that every reader and writer names the same keys;
:mod:`phaseprune.runs.files` is the one loader (schema version, kind, required keys,
fingerprint) and the one writer. The schema is documented in ``docs/schema.md``; bump
:data:`SCHEMA_VERSION` or :data:`TRAJECTORY_SCHEMA` on any change that renames or removes a key.
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Sequence
from typing import Any, Literal, TypedDict

import numpy as np
import pandas as pd

from phaseprune.core.items import LETTERS
from phaseprune.core.metrics import ItemMetrics, LayerStats, option_frequency, wilson_interval
from phaseprune.core.phases import PhaseResult

SCHEMA_VERSION = 1  # summary.json of analyze runs
TRAJECTORY_SCHEMA = 1  # trajectory.json of prune runs
RunKind = Literal["analyze", "prune"]
EXACT = {"mode": "exact"}
"""The precision record of a run computed in its model's dtype throughout (every run since
``--precision fast`` was removed; runs made with it say ``"mode": "fast"``)."""


class LayerRecord(TypedDict):
    """One readout index's aggregates over items (:class:`~phaseprune.core.metrics.LayerStats`)."""

    layer: int
    margin_mean: float
    margin_ci: list[float]
    prob_margin_mean: float
    accuracy: float
    accuracy_ci: list[float]
    option_frequency: dict[str, float]
    pick_entropy: float


class PhasesRecord(TypedDict):
    """Readout-index ranges of the phases, each decoder layer's phase, and a sentence."""

    silent: list[int]
    decisive: list[int] | None
    layer_phases: list[str]
    statement: str


class LmEvalPart(TypedDict, total=False):
    """What only runs made with ``prune --lm-eval-tasks`` hold (:mod:`.lm_eval_scores`)."""

    lm_eval: dict[str, dict[str, float | int | None]] | None
    """Per lm-eval task: its metrics (``acc``, ``acc_stderr``, ``acc_norm``, ...) and ``n``, the
    docs scored; None at a step not among ``--lm-eval-steps``."""


class ItemOutcomes(TypedDict, total=False):
    """Each evaluation item's final answer at this readout (runs made since the head-to-head).

    Paired statistics between strategies (:mod:`.headtohead`) resample these items; older runs
    lack them and are compared by their accuracies alone.
    """

    eval_picks: list[int]
    """Per evaluation item (in ``eval_items`` order), the option picked at the last layer."""
    eval_margins: list[float]
    """Per evaluation item, its Decision Margin at the last layer (logits, 4 decimals)."""


class Readout(LmEvalPart, ItemOutcomes):
    """The full decision readout of one (pruned) model on the evaluation items."""

    eval_accuracy: float
    eval_accuracy_ci: list[float]
    transition_layer: int | None
    transition_ci: list[int] | None
    phases: PhasesRecord
    layers: list[LayerRecord]


class Healing(TypedDict, total=False):
    """A step of a ``--heal linear`` run (absent without healing)."""

    heal: dict[str, Any]
    """The step's map: ``layer`` it is folded into, ``boundary`` it matches, ``ridge`` (None:
    no map), token counts, held-out errors unhealed and healed, ``judged`` (the calibration
    objective healed and unhealed, ``kept``), ``map_sha256`` of ``heal/step_NNN.npy``."""
    unhealed: dict[str, Any]
    """The evaluation readout of the same removals without any map (accuracy and interval,
    transition, mean margin, picks)."""


class Step(Readout, Healing):
    """One removal: what was removed and why, then the readout of the pruned model."""

    step: int
    removed_layer: int | list[int]
    removed_layers: list[int]
    removed_so_far: list[int]
    remaining_layers: list[int]
    phase_of_removed: Literal["silent", "decisive", "none"]
    calib_score: float
    calib_metrics: dict[str, float]
    criterion: str
    runner_up_layer: int | None
    runner_up_score: float | None
    score_gap: float | None
    note: str | None
    calib_phases: dict[str, Any] | None
    precision: dict[str, Any] | None
    """A bfloat16 or float16 run: whether the choice was within rounding of the runner-up
    (``dtype``, ``error``, ``score``, ``gap``, ``bound``, ``within_rounding``; docs/schema.md).
    None in float32 (a run made with ``--precision fast``: its bound and float32 re-scorings)."""


class Collapse(TypedDict):
    """Which removal broke the decision (``step`` None: none did); see :mod:`.collapse`."""

    step: int | None
    removed_layer: int | list[int] | None
    phase_of_removed: str | None
    accuracy_before: float | None
    accuracy_after: float | None
    reason: str | None
    transition_path: list[int | None]
    statement: str


class EvalGold(TypedDict, total=False):
    """The items' gold options and unpruned picks (runs made since the head-to-head)."""

    eval_gold: list[int]
    """Gold option index per evaluation item, in ``eval_items`` order."""
    calib_gold: list[int]
    """Gold option index per calibration item, in ``calib_items`` order."""
    calib_picks: list[int]
    """The unpruned model's pick per calibration item (``candidates.parquet``'s ``picks``
    are the same items' picks without each candidate)."""


class HealData(TypedDict, total=False):
    """What a ``--heal linear`` run fits its maps on (absent without healing)."""

    heal_data: dict[str, Any]
    """``kind``, ``prompts``, ``held_out_prompts``, ``calib_items``, ``extra_items`` and their
    ids, ``tokens_sha256``."""


class Trajectory(EvalGold, HealData):
    """``trajectory.json``; ``collapse`` is provisional while ``complete`` is false."""

    schema_version: int
    kind: Literal["prune"]
    phaseprune_version: str
    created: str
    fingerprint: str
    model: dict[str, Any]
    task: dict[str, Any]
    strategy: str
    objective: str
    settings: dict[str, Any]
    calib_items: list[str]
    eval_items: list[str]
    chance: float
    n_layers: int
    calib_step0: dict[str, float]
    step0: Readout
    steps: list[Step]
    complete: bool
    timing: dict[str, float]
    collapse: Collapse
    precision: dict[str, Any]
    """How the run computed: ``mode`` exact (a run made with ``--precision fast``: fast, and
    that mode's measured bound)."""


class Summary(TypedDict):
    """``summary.json`` of an ``analyze`` run."""

    schema_version: int
    kind: Literal["analyze"]
    phaseprune_version: str
    created: str
    model: dict[str, Any]
    task: dict[str, Any]
    accuracy: float
    accuracy_ci: list[float]
    chance: float
    n_layers: int
    gold_frequency: dict[str, float]
    layers: list[LayerRecord]
    transition_layer: int | None
    transition_ci: list[int] | None
    p_no_transition: float
    phases: PhasesRecord
    timing: dict[str, float]
    settings: dict[str, Any]
    precision: dict[str, Any]
    """How the readout was computed: ``mode`` exact (a run made with ``--precision fast``:
    fast, its bound and items per precision)."""


RECORD_TYPES: dict[RunKind, type] = {"analyze": Summary, "prune": Trajectory}
RECORD_FILES: dict[RunKind, str] = {"analyze": "summary.json", "prune": "trajectory.json"}
RECORD_VERSIONS: dict[RunKind, int] = {"analyze": SCHEMA_VERSION, "prune": TRAJECTORY_SCHEMA}


def layer_record(stats: LayerStats) -> LayerRecord:
    """One entry of ``summary["layers"]``."""
    record = dataclasses.asdict(stats)
    record["margin_ci"] = list(stats.margin_ci)
    record["accuracy_ci"] = list(stats.accuracy_ci)
    return record


def phases_record(phases: PhaseResult, n_layers: int) -> PhasesRecord:
    """``summary["phases"]``: ranges of readout indices, per-decoder-layer phases, a sentence."""
    return {
        "silent": list(phases.silent),
        "decisive": list(phases.decisive) if phases.decisive else None,
        "layer_phases": [phases.layer_phase(j) for j in range(n_layers)],
        "statement": phases.statement(),
    }


def settings_record(cfg) -> dict[str, Any]:
    """A record's ``settings``: the config's fields, with ``model.precision`` ``"exact"``.

    ``--precision`` is gone and every run computes in its ``--dtype`` throughout, as runs
    made with ``--precision exact`` did: their settings and fingerprints stay as they were,
    so those runs resume and readers of the field keep working.
    """
    settings = dataclasses.asdict(cfg)
    settings["model"]["precision"] = "exact"
    return settings


def launch_settings(cfg) -> dict[str, Any]:
    """What every process of a torchrun launch must share: the settings, less how each prints.

    Processes other than 0 run quiet, so ``quiet`` (and ``log_json``) may differ.
    """
    return {k: v for k, v in settings_record(cfg).items() if k not in ("quiet", "log_json")}


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
) -> Summary:
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
        "precision": dict(EXACT),
    }


def items_table(
    item_ids: Sequence[str],
    subjects: Sequence[str],
    gold: np.ndarray,
    option_logits: np.ndarray,
    metrics: ItemMetrics,
    precision: Sequence[str] | None = None,
) -> pd.DataFrame:
    """One row per item and readout layer (``items.parquet``).

    ``precision`` names the dtype each item's logits were read in.
    """
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
    if precision is not None:
        frame["precision"] = np.repeat(np.asarray(precision, dtype=object), n_readout)
    return frame


def parquet_bytes(frame: pd.DataFrame) -> bytes:
    """Serialise a table to Parquet in memory (so it can be written atomically)."""
    buf = io.BytesIO()
    frame.to_parquet(buf, index=False)
    return buf.getvalue()
