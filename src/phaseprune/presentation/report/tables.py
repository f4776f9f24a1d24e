"""What the report's cards and tables say, as named records built from the run records.

Every row is a ``NamedTuple`` of display strings (formatted by :mod:`.text`) so the template
only lays them out. Nothing here draws; :mod:`phaseprune.presentation.figures` does.
"""

from __future__ import annotations

from typing import NamedTuple

from phaseprune import __version__
from phaseprune.core.collapse import collapse_statement, layers_before_collapse
from phaseprune.core.phases import readout_phase
from phaseprune.presentation.report.load import Run
from phaseprune.presentation.report.text import (
    DASH,
    layer_ci,
    layers_text,
    num,
    pct,
    pct_ci,
    transition_text,
)


class Card(NamedTuple):
    """One headline number."""

    id: str
    """Element id on the page (``headline-accuracy`` ...)."""
    label: str
    """What the number is."""
    value: str
    """The number, formatted."""
    detail: str
    """Its interval or context, one short line."""


class Setting(NamedTuple):
    """One row of the settings table."""

    label: str
    """Setting name."""
    value: str
    """Its value, possibly shortened."""
    full: str
    """The full value (shown on hover when ``value`` is shortened)."""


class LayerRow(NamedTuple):
    """One readout layer of an analyze run (or of the unpruned model of a pruning run)."""

    layer: int
    """Readout index (0 = embeddings)."""
    phase: str
    """``silent`` or ``decisive``."""
    margin: str
    """Mean Decision Margin."""
    margin_ci: str
    """Its 95% bootstrap interval."""
    accuracy: str
    """Layer accuracy."""
    accuracy_ci: str
    """Its Wilson interval."""
    top_pick: str
    """Most picked letter and its share."""
    entropy: str
    """Pick entropy in bits."""


class StepRow(NamedTuple):
    """One removal of a pruning run."""

    step: int
    """Step number (1-based)."""
    removed: str
    """``layer 7`` or ``layers 3–4``."""
    phase: str
    """Phase of the removed layer in the model it was removed from."""
    n_removed: int
    """Layers removed so far."""
    accuracy: str
    """Evaluation accuracy after the removal."""
    accuracy_ci: str
    """Its Wilson interval."""
    transition: str
    """Transition layer after the removal (readout index of the pruned model)."""
    calib_score: str
    """The chosen candidate's calibration score."""
    note: str
    """The strategy's note (e.g. phase-aware's fallback), or empty."""
    is_collapse: bool
    """True for the collapse step."""
    lm_eval: tuple[str, ...] = ()
    """lm-evaluation-harness ``acc · acc_norm`` per :func:`lm_eval_columns` task (``–``: the
    step was not scored)."""


class CompareRow(NamedTuple):
    """One pruning run in a comparison."""

    run: str
    """Run label: strategy and directory name."""
    strategy: str
    """Strategy."""
    accuracy_unpruned: str
    """Unpruned evaluation accuracy."""
    steps_run: int
    """Completed steps."""
    accuracy_last: str
    """Accuracy after the last completed step."""
    removable: int
    """Layers removed before the collapse step (all removed layers if none)."""
    collapse: str
    """``step 4: layer 7 (silent)`` or ``none``."""
    removed_order: str
    """Removed layers in order."""


def layer_rows(layers: list[dict], phases: dict) -> list[LayerRow]:
    """One row per readout layer, under a ``phases`` record."""
    transition = phases["decisive"][0] if phases.get("decisive") else None
    rows = []
    for r in layers:
        top = max(r["option_frequency"], key=r["option_frequency"].get)
        rows.append(
            LayerRow(
                r["layer"],
                readout_phase(transition, r["layer"]),
                num(r["margin_mean"]),
                f"{num(r['margin_ci'][0])} to {num(r['margin_ci'][1])}",
                pct(r["accuracy"]),
                pct_ci(r["accuracy_ci"]),
                f"{top} ({pct(r['option_frequency'][top])})",
                num(r["pick_entropy"]),
            )
        )
    return rows


def _transition_detail(layer: int | None, ci: list[int] | None, n_layers: int) -> str:
    if layer is None:
        return f"the model does not decide · {n_layers} layers"
    return f"95% CI {layer_ci(ci)} · of {n_layers} layers"


def analyze_cards(summary: dict) -> list[Card]:
    """Accuracy, transition, p(no transition) of an analyze run."""
    return [
        Card(
            "headline-accuracy",
            "accuracy",
            pct(summary["accuracy"]),
            f"95% CI {pct_ci(summary['accuracy_ci'])} · chance {pct(summary['chance'])}",
        ),
        Card(
            "headline-transition",
            "transition layer",
            "none" if summary["transition_layer"] is None else str(summary["transition_layer"]),
            _transition_detail(
                summary["transition_layer"], summary["transition_ci"], summary["n_layers"]
            ),
        ),
        Card(
            "headline-p-no-transition",
            "p(no transition)",
            pct(summary["p_no_transition"]),
            "share of bootstrap resamples without one",
        ),
        Card(
            "headline-items",
            "items",
            str(summary["task"]["n_items"]),
            f"{summary['task']['shots']}-shot · {summary['task']['n_options']} options",
        ),
    ]


def prune_collapse_text(traj: dict) -> str:
    """The collapse sentence of a pruning run (its stored collapse, provisional if unfinished)."""
    return collapse_statement(
        traj["collapse"],
        traj["step0"],
        traj["steps"],
        traj["chance"],
        traj["settings"]["collapse_fraction"],
        pct=pct,
        detailed=True,
    )


def prune_cards(traj: dict) -> list[Card]:
    """Unpruned accuracy and transition, accuracy after the last step, layers removed."""
    s0, steps = traj["step0"], traj["steps"]
    last = steps[-1] if steps else s0
    n_removed = len(steps[-1]["removed_so_far"]) if steps else 0
    return [
        Card(
            "headline-accuracy",
            "unpruned accuracy",
            pct(s0["eval_accuracy"]),
            f"95% CI {pct_ci(s0['eval_accuracy_ci'])} · chance {pct(traj['chance'])}",
        ),
        Card(
            "headline-transition",
            "unpruned transition layer",
            "none" if s0["transition_layer"] is None else str(s0["transition_layer"]),
            _transition_detail(s0["transition_layer"], s0["transition_ci"], traj["n_layers"]),
        ),
        Card(
            "headline-last-accuracy",
            f"accuracy after {n_removed} removed",
            pct(last["eval_accuracy"]),
            f"95% CI {pct_ci(last['eval_accuracy_ci'])}",
        ),
        Card(
            "headline-items",
            "evaluation items",
            str(len(traj["eval_items"])),
            f"{len(traj.get('calib_items', []))} calibration items choose the layers",
        ),
    ]


def step_rows(traj: dict) -> list[StepRow]:
    """One row per completed removal."""
    c_step = traj["collapse"]["step"]
    tasks = _lm_eval_tasks(traj)
    return [
        StepRow(
            s["step"],
            layers_text(s["removed_layer"]),
            s["phase_of_removed"],
            len(s["removed_so_far"]),
            pct(s["eval_accuracy"]),
            pct_ci(s["eval_accuracy_ci"]),
            transition_text(s["transition_layer"], s["transition_ci"]),
            num(s.get("calib_score"), 3),
            s.get("note") or "",
            s["step"] == c_step,
            tuple(_lm_eval_cell(s.get("lm_eval"), t) for t in tasks),
        )
        for s in traj["steps"]
    ]


def _lm_eval_tasks(traj: dict) -> list[str]:
    """The lm-eval tasks to show: those asked for, else every one scored.

    A tag (``ai2_arc``) is scored as its tasks, without an aggregate under its own name.
    """
    scored: dict[str, None] = {}
    for record in (traj["step0"], *traj["steps"]):
        scored.update(dict.fromkeys(record.get("lm_eval") or {}))
    asked = list(traj.get("settings", {}).get("lm_eval_tasks") or [])
    return asked if asked and all(t in scored for t in asked) else list(scored)


def _lm_eval_cell(scores: dict | None, task: str) -> str:
    if not scores or task not in scores:
        return DASH
    metrics = scores[task]
    if "acc_norm" in metrics:
        return f"{pct(metrics.get('acc'))} · {pct(metrics['acc_norm'])}"
    return pct(metrics.get("acc"))


def lm_eval_columns(traj: dict) -> list[str]:
    """Headers of the step table's lm-eval columns, with the unpruned model's scores."""
    step0 = traj["step0"].get("lm_eval")
    return [
        f"lm-eval {t} acc · acc_norm (unpruned {_lm_eval_cell(step0, t)})"
        for t in _lm_eval_tasks(traj)
    ]


def removable_before_collapse(traj: dict) -> int:
    """Layers removed before the collapse step (all removed layers when nothing collapsed).

    :func:`phaseprune.core.collapse.layers_before_collapse` (provisional for an unfinished run).
    """
    return layers_before_collapse(traj)["removed"]


def compare_rows(runs: list[Run]) -> list[CompareRow]:
    """One row per pruning run."""
    rows = []
    for run in runs:
        traj = run.record
        c = traj["collapse"]
        last = traj["steps"][-1] if traj["steps"] else traj["step0"]
        collapse = (
            f"step {c['step']}: {layers_text(c['removed_layer'])} ({c['phase_of_removed']})"
            if c.get("step")
            else "none"
        )
        rows.append(
            CompareRow(
                run_label(run),
                traj["strategy"],
                pct(traj["step0"]["eval_accuracy"]),
                len(traj["steps"]),
                pct(last["eval_accuracy"]),
                removable_before_collapse(traj),
                collapse + ("" if run.complete else " (incomplete run)"),
                ", ".join(str(s["removed_layer"]) for s in traj["steps"]) or "none",
            )
        )
    return rows


def run_label(run: Run) -> str:
    """``iterative (runs/iter)`` for a prune run, ``analyze (runs/geo)`` otherwise."""
    what = run.record["strategy"] if run.kind == "prune" else "analyze"
    return f"{what} ({run.name})"


def _short(text: str, n: int = 48) -> str:
    return text if len(text) <= n else text[: n // 2 - 1] + "…" + text[-(n // 2 - 1) :]


def _setting(label: str, value, width: int = 48) -> Setting:
    if isinstance(value, (list, tuple)):
        full = ", ".join(str(v) for v in value) if value else "none"
    elif value is None:
        full = "none"
    elif isinstance(value, float):
        full = f"{value:.6g}" if abs(value) < 1 else f"{round(value, 2):g}"
    else:
        full = str(value)
    return Setting(label, _short(full, width), full)


def settings(run: Run) -> list[tuple[str, list[Setting]]]:
    """Grouped settings: model, task, run (versions, strategy, timing)."""
    rec = run.record
    model, task = rec["model"], rec["task"]
    model_rows = [
        _setting(k, model.get(k), 24 if k == "revision" else 48)
        for k in ("name", "architecture", "family", "n_layers", "dtype", "device", "path",
                  "gguf_file", "revision")
        if k in model
    ]  # fmt: skip
    task_rows = [
        _setting("task", task.get("name")),
        _setting("subjects", task.get("subjects")),
        _setting("split / source", f"{task.get('split')} · {task.get('source_kind')}"),
        _setting("source", task.get("source")),
        _setting("items scored", task.get("n_items")),
        _setting("shots", task.get("shots")),
        _setting("options", task.get("letters")),
        _setting("option token ids", task.get("option_token_ids")),
        _setting("option token texts", [repr(t) for t in task.get("option_token_texts", [])]),
        _setting("chat template / BOS", f"{task.get('chat')} / {task.get('add_bos')}"),
        _setting("prompt tokens (mean)", task.get("prompt_tokens_mean")),
        _setting("exemplars excluded", len(task.get("excluded_exemplars", []))),
        _setting("items dropped", len(task.get("dropped_items", []))),
    ]
    run_rows = [_setting("directory", str(run.path)), _setting("kind", rec["kind"])]
    if run.kind == "prune":
        cfg = rec["settings"]
        run_rows += [
            _setting("strategy", rec["strategy"]),
            _setting("objective", rec["objective"]),
            _setting(
                "calibration / evaluation items",
                f"{len(rec.get('calib_items', []))} / {len(rec['eval_items'])}",
            ),
            _setting("steps done / asked", f"{len(rec['steps'])} / {cfg.get('steps')}"),
            _setting("protected layers", cfg.get("protect")),
            _setting("collapse fraction", cfg["collapse_fraction"]),
            _setting("complete", rec["complete"]),
        ]
    cfg = rec.get("settings", {})
    run_rows += [
        _setting("bootstrap resamples / seed", f"{cfg.get('n_boot')} / {cfg.get('seed')}"),
        _setting("written by phaseprune", rec.get("phaseprune_version")),
        _setting("report by phaseprune", __version__),
        _setting("created", rec.get("created")),
        _setting("time (s)", rec.get("timing", {}).get("total_s")),
    ]
    return [("Model", model_rows), ("Task", task_rows), ("Run", run_rows)]
