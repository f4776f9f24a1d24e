"""``phaseprune prune``: remove layers step by step and re-read the decision after each step.

Wires the strategies (:mod:`phaseprune.strategies`) to the evaluation readout and to files.
After every removal the pruned model's full decision readout (per-layer margins, option
frequencies, layer accuracies, phases) is measured on the evaluation items, and the step is
written at once (atomically) to ``trajectory.json`` and ``candidates.parquet``. ``--resume``
continues from the last completed step; every number is deterministic given the settings, so a
resumed run ends with the same trajectory as an uninterrupted one (``timing`` aside).
"""

from __future__ import annotations

import dataclasses
import json
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from phaseprune import __version__
from phaseprune.candidates import final_readout, option_reduce
from phaseprune.collapse import trajectory_collapse
from phaseprune.config import PruneConfig
from phaseprune.errors import UsageError
from phaseprune.incremental import IncrementalReadout
from phaseprune.loading import encode_and_load, fast_copy, subject_groups, task_record
from phaseprune.metrics import item_metrics, layer_stats, wilson_interval
from phaseprune.models import cache_budget_bytes, default_max_tokens, resolve_model
from phaseprune.objectives import candidate_metrics
from phaseprune.phases import detect_phases, removal_phase
from phaseprune.precision import start_rescoring
from phaseprune.records import (
    EXACT,
    TRAJECTORY_SCHEMA,
    Readout,
    Step,
    Trajectory,
    layer_record,
    phases_record,
)
from phaseprune.runio import check_out_dir, fingerprint, prepare_out_dir, stamp_figures
from phaseprune.runs import load_candidates, load_trajectory, write_trajectory
from phaseprune.strategies.context import NoCandidate, PruneContext, runner_up
from phaseprune.strategies.registry import strategy_function
from phaseprune.surgery import kept_layers
from phaseprune.tasks import load_task, round_robin

VOLATILE = ("out", "resume", "overwrite", "quiet", "plots", "cache_budget")
# settings that only decide where a run stops: a resume may change them (extend or cut short)
STOPPING = ("steps", "stop_at_collapse", "min_accuracy")


def check_config(cfg: PruneConfig) -> None:
    """Refuse what the config's own field checks cannot see, with one clear line."""
    if cfg.task.limit is not None:
        raise UsageError("prune takes --calib and --eval instead of --limit")


def readout_record(
    logits: np.ndarray, gold: np.ndarray, n_options: int, cfg: PruneConfig
) -> Readout:
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
    }
    return record


class PruneRun:
    """State of one pruning run: model, items, context and the trajectory so far."""

    def __init__(self, cfg: PruneConfig):
        check_config(cfg)
        self.cfg = cfg
        self.out = Path(cfg.out)
        self.started = time.perf_counter()
        tc, mc = cfg.task, cfg.model
        task = load_task(
            tc.task,
            subjects=tc.subjects or None,
            data_dir=tc.data_dir,
            shots=tc.shots,
            limit=cfg.calib + cfg.eval,
        )
        if len(task.items) < cfg.calib + cfg.eval:
            raise UsageError(
                f"{tc.task} has {len(task.items)} items; --calib {cfg.calib} + --eval {cfg.eval} "
                "need more: lower them or add subjects"
            )
        self.task = task
        self.max_tokens = cfg.max_tokens or default_max_tokens(mc.device)
        cache_budget = cache_budget_bytes(cfg.cache_budget, mc.device)
        spec = resolve_model(mc.model)
        self._check_out()
        enc, self.model, self.info = encode_and_load(
            spec, task, tc, mc, progress=not cfg.quiet, check_layers=self._check_layers
        )
        self.enc = enc
        self.model16 = fast_copy(self.model, mc)
        gold = np.array([it.answer for it in task.items])
        # calibration and evaluation both spread over every subject, disjoint
        order = round_robin([it.subject for it in task.items])
        self.calib = sorted(order[: cfg.calib])
        self.eval = sorted(order[cfg.calib : cfg.calib + cfg.eval])
        self.eval_ids = [enc.input_ids[i] for i in self.eval]
        self.eval_gold = gold[self.eval]
        # plain calibration text: the prompt followed by its gold letter's (verified) token
        text_ids = [row + [enc.options.ids[g]] for row, g in zip(enc.input_ids, gold, strict=True)]
        self.record_task = task_record(task, enc, None)
        self.ctx = PruneContext(
            model=self.model,
            n_layers=self.info.n_layers,
            calib_ids=[enc.input_ids[i] for i in self.calib],
            calib_text_ids=[text_ids[i] for i in self.calib],
            calib_gold=gold[self.calib],
            option_ids=enc.options.ids,
            ref_logits=np.zeros(0),
            objective=cfg.objective,
            protect=frozenset(cfg.protect),
            guard=cfg.guard,
            block_size=cfg.block_size,
            seed=cfg.seed,
            n_boot=cfg.n_boot,
            max_tokens=self.max_tokens,
            cache_budget=cache_budget,
            progress=not cfg.quiet,
            calib_groups=subject_groups([task.items[i].subject for i in self.calib]),
        )
        # the evaluation readout after each removal recomputes only the layers after it
        self.eval_reader = IncrementalReadout(
            self.model,
            self.eval_ids,
            enc.options.ids,
            groups=subject_groups([task.items[i].subject for i in self.eval]),
            max_tokens=self.max_tokens,
            cache_budget=cache_budget,
            progress=not cfg.quiet,
        )

    def _check_layers(self, n: int) -> None:
        """Refuse settings the model's depth makes impossible (before the weights load)."""
        cfg = self.cfg
        bad = [k for k in cfg.protect if not 0 <= k < n]
        if bad:
            raise UsageError(f"--protect {bad}: layers are 0..{n - 1}")
        if len(set(cfg.protect)) >= n:
            raise UsageError(f"--protect spares all {n} layers: nothing could be removed")
        if cfg.block_size >= n:
            raise UsageError(f"--block-size {cfg.block_size}: the model has {n} layers; use fewer")

    def _check_out(self) -> None:
        check_out_dir(self.out, "prune", overwrite=self.cfg.overwrite, resume=self.cfg.resume)

    def key(self, **stopping) -> str:
        """Fingerprint of everything that determines the trajectory.

        ``stopping`` overrides :data:`STOPPING` settings (to recognise a run made with others).
        """
        cfg = dataclasses.replace(self.cfg, **stopping)
        settings = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in VOLATILE}
        # the prompts' token hash covers questions and options; the answer key is not in them
        answers = [(it.item_id, it.answer) for it in self.task.items]
        info = dataclasses.asdict(self.info)
        return fingerprint(settings, info, self.record_task, answers, __version__)

    def eval_readout(self, removed) -> dict:
        """Full decision readout of the model without ``removed`` on the evaluation items."""
        logits = self.eval_reader(removed).numpy()
        return readout_record(logits, self.eval_gold, self.task.n_options, self.cfg)


def _header(run: PruneRun, step0: Readout) -> Trajectory:
    cfg = run.cfg
    items = [it.item_id for it in run.task.items]
    return {
        "schema_version": TRAJECTORY_SCHEMA,
        "kind": "prune",
        "phaseprune_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "fingerprint": run.key(),
        "model": dataclasses.asdict(run.info),
        "task": run.record_task,
        "strategy": cfg.strategy,
        "objective": cfg.objective,
        "settings": dataclasses.asdict(cfg),
        "calib_items": [items[i] for i in run.calib],
        "eval_items": [items[i] for i in run.eval],
        "chance": 1.0 / run.task.n_options,
        "n_layers": run.info.n_layers,
        # the unpruned model on the calibration items, as candidates are scored there
        "calib_step0": candidate_metrics(
            run.ctx.ref_logits, run.ctx.calib_gold, run.ctx.ref_logits
        ),
        "step0": step0,
        "steps": [],
        "complete": False,
        "timing": {},
        "collapse": None,  # set by _write before anything is written
        "precision": run.ctx.fast.run_record() if run.ctx.fast else dict(EXACT),
    }


def _flat(settings: dict) -> dict:
    """A run's settings with the model and task sections merged in (their names are distinct)."""
    flat = {}
    for key, value in settings.items():
        flat.update(value if isinstance(value, dict) else {key: value})
    return flat


def _differences(run: PruneRun, traj: Trajectory) -> str:
    """What a trajectory was made with that this run differs in, for the refusal message."""
    now = _flat(json.loads(json.dumps(dataclasses.asdict(run.cfg))))  # tuples as JSON lists
    then = _flat(traj["settings"])
    flags = [f"--{k.replace('_', '-')}" for k, v in now.items()
             if k not in VOLATILE and k not in STOPPING and then.get(k) != v]  # fmt: skip
    if flags:
        return "settings (" + ", ".join(flags) + ")"
    if traj["phaseprune_version"] != __version__:
        return f"phaseprune ({traj['phaseprune_version']})"
    if traj["model"] != json.loads(json.dumps(dataclasses.asdict(run.info))):
        return "model weights or dtype"
    if traj["task"] != run.record_task:
        return "items or prompts"
    return "items: the answer key differs"


def _load_previous(run: PruneRun) -> tuple[Trajectory | None, list[dict]]:
    """The run to resume (None for a fresh one) and its candidate rows of completed steps."""
    if not (run.cfg.resume and (run.out / "trajectory.json").exists()):
        return None, []

    def differs(traj: Trajectory) -> str | None:
        # the same run made with other stopping rules (e.g. a smaller --steps) continues
        made = {k: traj["settings"].get(k) for k in STOPPING}
        same = traj["fingerprint"] in (run.key(), run.key(**made))
        return None if same else _differences(run, traj)

    traj = load_trajectory(run.out, differs=differs)
    if traj["fingerprint"] != run.key():  # continued under the new stopping rules, recorded
        traj["fingerprint"] = run.key()
        traj["settings"] = dataclasses.asdict(run.cfg)
    return traj, load_candidates(run.out, {s["step"] for s in traj["steps"]})


def _step_record(
    run: PruneRun, step: int, choice, removed: list[int], phase_of_removed: str, readout: Readout
) -> Step:
    best = choice.scores[choice.layers[0]]
    return {
        "step": step,
        "removed_layer": choice.layers[0] if len(choice.layers) == 1 else list(choice.layers),
        "removed_layers": list(choice.layers),
        "removed_so_far": list(removed),
        "remaining_layers": kept_layers(run.info.n_layers, removed),
        "phase_of_removed": phase_of_removed,
        "calib_score": best["score"],
        "calib_metrics": {k: v for k, v in best.items() if k != "score"},
        "criterion": str(choice.criterion),
        **runner_up(choice),
        "note": choice.note,
        "calib_phases": choice.calib_phases,
        "precision": choice.precision,
        **readout,
    }


def _write(run: PruneRun, traj: Trajectory, rows: list[dict]) -> None:
    """Store the collapse of the steps so far (provisional until complete), then write."""
    traj["collapse"] = trajectory_collapse(traj)
    write_trajectory(run.out, traj, rows)


def _candidate_rows(step: int, choice) -> list[dict]:
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
                **{k: float(v) for k, v in metrics.items() if k != "score"},
            }
        )
    return rows


def _should_stop(run: PruneRun, traj: dict, removed: list[int]) -> bool:
    if len(traj["steps"]) >= run.cfg.steps:
        return True
    if run.cfg.stop_at_collapse and traj["collapse"]["step"] is not None:
        return True
    if (
        run.cfg.min_accuracy is not None
        and traj["steps"]
        and traj["steps"][-1]["eval_accuracy"] < run.cfg.min_accuracy
    ):
        return True
    return len(kept_layers(run.info.n_layers, removed)) <= run.cfg.block_size


def run_prune(cfg: PruneConfig) -> Trajectory:
    """Run (or resume) a pruning run and return its trajectory record."""
    run = PruneRun(cfg)
    traj, rows = _load_previous(run)
    if traj is not None and traj.get("complete"):
        removed = [k for s in traj["steps"] for k in s["removed_layers"]]
        if _should_stop(run, traj, removed):
            return traj  # resuming a finished run: nothing to do or rewrite
        traj["complete"] = False  # finished under other stopping rules: extend it
    if not (traj is not None and cfg.resume):
        prepare_out_dir(run.out, "prune", overwrite=cfg.overwrite)
    # the unpruned calibration answers, by the same code path as every candidate's
    reduce = option_reduce(run.enc.options.ids)
    ref = final_readout(
        run.model,
        (),
        run.ctx.calib_ids,
        reduce,
        max_tokens=run.max_tokens,
        groups=run.ctx.calib_groups,
    )
    run.ctx.ref_logits = ref.numpy()
    if run.model16 is not None:  # the bounds: bfloat16 against float32 on the same items
        run.ctx.fast = start_rescoring(
            run.model, run.model16, run.ctx.calib_ids, run.enc.options.ids, run.ctx.calib_groups,
            run.ctx.calib_gold, run.ctx.ref_logits, max_tokens=run.max_tokens,
        )  # fmt: skip
    if traj is None:
        step0 = run.eval_readout([])
        traj = _header(run, step0)
        _write(run, traj, rows)
    removed = [k for s in traj["steps"] for k in s["removed_layers"]]
    prev = traj["steps"][-1] if traj["steps"] else traj["step0"]
    strategy = strategy_function(cfg.strategy)
    while not traj.get("complete") and not _should_stop(run, traj, removed):
        step = len(traj["steps"]) + 1
        try:
            choice = strategy(run.ctx, removed)
        except NoCandidate as err:
            warnings.warn(f"stopped after {step - 1} of {cfg.steps} steps: {err}", stacklevel=2)
            break
        position = kept_layers(run.info.n_layers, removed).index(choice.layers[0])
        phase = removal_phase(prev["transition_layer"], position)
        removed = [*removed, *choice.layers]
        readout = run.eval_readout(removed)
        record = _step_record(run, step, choice, removed, phase, readout)
        traj["steps"].append(record)
        rows += _candidate_rows(step, choice)
        traj["timing"][f"step_{step}_s"] = round(time.perf_counter() - run.started, 2)
        _write(run, traj, rows)
        prev = record
    if len(traj["steps"]) < cfg.steps and len(removed) >= run.info.n_layers - cfg.block_size:
        warnings.warn(
            f"stopped after {len(traj['steps'])} of {cfg.steps} steps: "
            f"{run.info.n_layers - len(removed)} layer(s) left",
            stacklevel=2,
        )
    traj["complete"] = True
    traj["timing"]["total_s"] = round(time.perf_counter() - run.started, 2)
    if cfg.plots:
        from phaseprune.figures.png import write_prune_plots

        write_prune_plots(traj, run.out / "plots")
        stamp_figures(traj, run.out / "plots")  # the report copies them while this stays true
    _write(run, traj, rows)
    return traj
