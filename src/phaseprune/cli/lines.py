"""What a running ``prune`` prints: one text line or one JSON object per completed step.

:class:`StepPrinter` is the ``on_step`` callback of :func:`phaseprune.pruning.run_prune` that the
CLI hands over: each step's line appears as soon as the step is written (steps an earlier run
completed are marked ``resumed``). With ``--log-json`` every line is one JSON object
(:func:`step_event`): ``{"event": "step0" | "step" | "end", ...}``, for a script or a job
scheduler to follow; the text lines carry the same numbers.
"""

from __future__ import annotations

import json
import time

from phaseprune.core.progress import say
from phaseprune.runs.records import Readout, Trajectory


def step_line(record: Readout, *, resumed: bool = False) -> str:
    """``step 3: removed layer 27 (decisive) -> accuracy 61.0%, transition 14 ...``.

    A step of a bfloat16 run whose runner-up was within rounding says so: float32 might have
    removed the runner-up instead.
    """
    outcome = f"accuracy {record['eval_accuracy']:.1%}, transition {record['transition_layer']}"
    if "step" not in record:
        parts = [f"  step 0: unpruned -> {outcome}"]
    else:
        parts = [
            f"  step {record['step']}: removed layer {record['removed_layer']} "
            f"({record['phase_of_removed']}) -> {outcome}"
        ]
    if record.get("note"):
        parts.append(f"[{record['note']}]")
    if (record.get("precision") or {}).get("within_rounding"):
        rounding = record["precision"]
        parts.append(
            f"[decision within {rounding['dtype']} rounding of the runner-up: "
            f"{rounding['score']} gap {rounding['gap']:.3g} <= bound {rounding['bound']:.3g}]"
        )
    if scores := record.get("lm_eval"):
        parts.append("[lm-eval " + ", ".join(_scores(scores)) + "]")
    if resumed:
        parts.append("(resumed)")
    return "  ".join(parts)


def _scores(scores: dict) -> list[str]:
    """``task acc 0.412`` for each lm-eval task scored at a step."""
    out = []
    for task, metrics in scores.items():
        shown = {k: v for k, v in metrics.items() if isinstance(v, float) and "stderr" not in k}
        out += [f"{task} {k} {v:.3f}" for k, v in list(shown.items())[:2]]
    return out


def step_event(traj: Trajectory, record: Readout, *, resumed: bool, elapsed_s: float) -> dict:
    """One step as a JSON-ready object (``event`` ``step0`` for the unpruned readout)."""
    event = {
        "event": "step" if "step" in record else "step0",
        "strategy": traj["strategy"],
        "step": record.get("step", 0),
        "removed_layers": record.get("removed_layers", []),
        "phase_of_removed": record.get("phase_of_removed"),
        "eval_accuracy": record["eval_accuracy"],
        "eval_accuracy_ci": record["eval_accuracy_ci"],
        "transition_layer": record["transition_layer"],
        "collapsed": (traj.get("collapse") or {}).get("step") == record.get("step", 0),
        "resumed": resumed,
        "elapsed_s": round(elapsed_s, 2),
    }
    if record.get("lm_eval"):
        event["lm_eval"] = record["lm_eval"]
    if record.get("precision"):  # a bfloat16 run: the step's rounding check
        event["rounding"] = record["precision"]
    return event


class StepPrinter:
    """The CLI's ``on_step``: text lines, JSON lines, or nothing (``--quiet``)."""

    def __init__(self, *, json_lines: bool, quiet: bool):
        self.json_lines = json_lines
        self.quiet = quiet and not json_lines
        self.started = time.perf_counter()
        self.printed = 0

    def __call__(self, traj: Trajectory, record: Readout, resumed: bool) -> None:
        """Print one completed step (or the unpruned readout) of ``traj``."""
        if self.quiet:
            return
        if self.json_lines:
            event = step_event(traj, record, resumed=resumed, elapsed_s=self.elapsed())
            say(json.dumps(event))
        else:
            if self.printed == 0:
                say(f"{traj['model']['name']} · {traj['strategy']}:")
            say(step_line(record, resumed=resumed))
        self.printed += 1

    def elapsed(self) -> float:
        """Seconds since the printer was made (the command's start)."""
        return time.perf_counter() - self.started

    def end(self, traj: Trajectory) -> dict:
        """The ``end`` event: what the run concluded."""
        return {
            "event": "end",
            "strategy": traj["strategy"],
            "steps": len(traj["steps"]),
            "removed_layers": [k for s in traj["steps"] for k in s["removed_layers"]],
            "collapse_step": traj["collapse"]["step"],
            "statement": traj["collapse"]["statement"],
            "elapsed_s": round(self.elapsed(), 2),
        }
