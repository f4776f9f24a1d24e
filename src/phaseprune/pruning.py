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
from collections.abc import Callable
from pathlib import Path

import numpy as np

from phaseprune import __version__
from phaseprune.core.collapse import trajectory_collapse
from phaseprune.core.errors import UsageError
from phaseprune.core.objectives import objective_of
from phaseprune.core.phases import removal_phase
from phaseprune.core.progress import stage
from phaseprune.engine.candidates import final_readout, option_reduce
from phaseprune.engine.incremental import IncrementalReadout
from phaseprune.engine.precision import start_rescoring
from phaseprune.model.distributed import (
    COMMUNICATION,
    barrier,
    broadcast,
    is_main,
    join,
    on_main,
)
from phaseprune.model.load import (
    cache_budget_bytes,
    default_max_tokens,
    model_change,
    resolve_model,
)
from phaseprune.model.surgery import kept_layers
from phaseprune.presentation.figures.stamp import stamp_figures
from phaseprune.runs.config import PHASE_AWARE_ONLY, PruneConfig, spared_builders
from phaseprune.runs.files import load_candidates, load_trajectory, write_trajectory
from phaseprune.runs.lm_eval_scores import StepScorer
from phaseprune.runs.loading import (
    check_model_config,
    encode_and_load,
    encode_held,
    fast_copy,
    subject_groups,
    task_record,
)
from phaseprune.runs.outdir import OWN_STORE, check_out_dir, fingerprint, prepare_out_dir
from phaseprune.runs.records import Readout, Trajectory
from phaseprune.runs.score_store import ScoreStore
from phaseprune.runs.trajectory import candidate_rows, header, readout_record, step_record
from phaseprune.strategies.context import NoCandidate, PruneContext, stored
from phaseprune.strategies.registry import strategy_function
from phaseprune.tasks import load_task, round_robin

VOLATILE = ("out", "resume", "overwrite", "quiet", "log_json", "plots", "cache_budget",
            "score_cache", "lm_eval_tasks", "lm_eval_steps", "lm_eval_limit",
            "lm_eval_batch_size")  # fmt: skip
# settings that only decide where a run stops: a resume may change them (extend or cut short)
STOPPING = ("steps", "stop_at_collapse", "min_accuracy")
# settings added after runs were made, left out of the fingerprint at these values so those runs
# resume (phase-aware's: the first version's, its defaults until the head-to-head picked others)
LATER_DEFAULTS = {"revision": None, "lm_eval_include": None}
LATER_PRUNE_DEFAULTS = {"spare": 0, "after_decisive": "block-influence", "decisive": "objective"}
FIRST_VERSION = {**LATER_PRUNE_DEFAULTS, "objective": "accuracy"}  # phase-aware's, as settings

OnStep = Callable[[Trajectory, Readout, bool], None]
"""``on_step(traj, record, resumed)``: see :func:`run_prune`."""


def check_config(cfg: PruneConfig) -> None:
    """Refuse what the config's own field checks cannot see, with one clear line."""
    if cfg.task.limit is not None:
        raise UsageError("prune takes --calib and --eval instead of --limit")


class PruneRun:
    """State of one pruning run: model, items, context and the trajectory so far."""

    def __init__(self, cfg: PruneConfig, *, model=None, tokenizer=None, task=None):
        check_config(cfg)
        check_model_config(cfg.model)
        cfg = dataclasses.replace(cfg, objective=objective_of(cfg.strategy, cfg.objective))
        self.processes = join(cfg.model.device)  # launched by torchrun: each scores a shard
        self.lm_eval = StepScorer(cfg, tokenizer)  # lm-eval missing or a task unknown: fail now
        self.cfg = cfg
        self.out = Path(cfg.out)
        self.started = time.perf_counter()
        tc, mc = cfg.task, cfg.model
        if task is None:
            task = load_task(
                tc.task,
                subjects=tc.subjects or None,
                data_dir=tc.data_dir,
                shots=tc.shots,
                limit=cfg.calib + cfg.eval,
                lm_eval_include=tc.lm_eval_include,
            )
        if len(task.items) < cfg.calib + cfg.eval:
            raise UsageError(
                f"{tc.task} has {len(task.items)} items; --calib {cfg.calib} + --eval {cfg.eval} "
                "need more: lower them or add subjects"
            )
        self.task = task
        self.max_tokens = cfg.max_tokens or default_max_tokens(mc.device)
        cache_budget = cache_budget_bytes(cfg.cache_budget, mc.device)
        spec = resolve_model(mc.model) if model is None else None
        self._check_out()
        if model is None:
            enc, self.model, self.info = encode_and_load(
                spec, task, tc, mc, progress=not cfg.quiet, check_layers=self._check_layers
            )
        else:
            enc, self.model, self.info = encode_held(
                model, tokenizer, task, tc, mc, check_layers=self._check_layers
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
            spare=spared_builders(cfg.spare, self.info.n_layers),
            decisive=cfg.decisive,
            after_decisive=cfg.after_decisive,
            block_size=cfg.block_size,
            seed=cfg.seed,
            n_boot=cfg.n_boot,
            max_tokens=self.max_tokens,
            cache_budget=cache_budget,
            progress=not cfg.quiet,
            calib_groups=subject_groups([task.items[i].subject for i in self.calib]),
        )
        self.ctx.store = self._store()
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

    def _store(self) -> ScoreStore | None:
        """The store for this model, items and settings (``--score-cache``, else the run's own)."""
        if self.model16 is not None:
            return None
        ctx, groups = self.ctx, subject_groups([self.task.items[i].subject for i in self.eval])
        info = {k: v for k, v in dataclasses.asdict(self.info).items() if k != "path"}
        root = self.cfg.score_cache or Path(self.cfg.out) / OWN_STORE
        return ScoreStore(root, info, self.cfg.model.dtype, ctx.calib_ids, ctx.calib_groups,
                          self.eval_ids, groups, list(ctx.option_ids), self.max_tokens,
                          self.processes, __version__)  # fmt: skip

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
        """Fingerprint of the trajectory's recipe; ``stopping`` overrides :data:`STOPPING`."""
        objective = objective_of(self.cfg.strategy, self.cfg.objective)
        cfg = dataclasses.replace(self.cfg, objective=objective, **stopping)
        settings = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in VOLATILE
                    and LATER_PRUNE_DEFAULTS.get(k, ...) != v
                    and (k not in PHASE_AWARE_ONLY or cfg.strategy == "phase-aware")}  # fmt: skip
        for section in ("model", "task"):  # settings added later, at their defaults: left out
            settings[section] = {k: v for k, v in settings[section].items()
                                 if LATER_DEFAULTS.get(k, ...) != v}  # fmt: skip
        # the prompts' token hash covers questions and options; the answer key is not in them
        answers = [(it.item_id, it.answer) for it in self.task.items]
        info = dataclasses.asdict(self.info)
        if info["weights_sha256"] in (None, info["revision"]):  # a GGUF file's hash is its revision
            del info["weights_sha256"]
        return fingerprint(settings, info, self.record_task, answers, __version__)

    def eval_readout(self, removed) -> dict:
        """Full decision readout of the model without ``removed`` on the evaluation items."""
        logits = stored(self.ctx, "eval", removed, lambda: self.eval_reader(removed)).numpy()
        return readout_record(logits, self.eval_gold, self.task.n_options, self.cfg)


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
    changed = model_change(traj["model"], json.loads(json.dumps(dataclasses.asdict(run.info))))
    if changed:
        return changed
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


def _write(run: PruneRun, traj: Trajectory, rows: list[dict]) -> None:
    """Store the collapse of the steps so far (provisional until complete), then write.

    Every process holds the same trajectory; process 0 writes it.
    """
    traj["collapse"] = trajectory_collapse(traj)
    traj["timing"]["processes"] = run.processes
    if run.ctx.store is not None:
        traj["timing"]["score_cache"] = run.ctx.store.record()
    if run.processes > 1:
        traj["timing"]["communication_s"] = round(COMMUNICATION["seconds"], 3)
    if is_main():
        write_trajectory(run.out, traj, rows)


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


def run_prune(
    cfg: PruneConfig, *, on_step: OnStep | None = None, model=None, tokenizer=None, task=None
) -> Trajectory:
    """Run (or resume) a pruning run and return its trajectory record.

    Args:
        cfg: The run's settings.
        on_step: Called as ``on_step(traj, record, resumed)`` once the unpruned readout
            (``record`` is ``traj["step0"]``) and then each step (``traj["steps"][-1]``) is
            written; ``resumed`` is True for steps an earlier run completed.
        model: A model the caller holds (with ``tokenizer``), instead of loading
            ``cfg.model.model``.
        tokenizer: That model's tokenizer.
        task: A :class:`~phaseprune.tasks.TaskData`, instead of loading ``cfg.task.task``.
    """
    run = PruneRun(cfg, model=model, tokenizer=tokenizer, task=task)
    traj, rows, fresh = _start(run)
    notify = on_step or (lambda traj, record, resumed: None)
    for record in [traj["step0"], *traj["steps"]]:
        notify(traj, record, not fresh)
    if traj.get("complete"):
        return traj
    removed = [k for s in traj["steps"] for k in s["removed_layers"]]
    prev = traj["steps"][-1] if traj["steps"] else traj["step0"]
    strategy = strategy_function(cfg.strategy)
    while not _should_stop(run, traj, removed):
        step = len(traj["steps"]) + 1
        with stage(f"step {step}/{cfg.steps}"):
            try:
                choice = strategy(run.ctx, removed)
            except NoCandidate as err:
                warnings.warn(f"stopped after {step - 1} of {cfg.steps} steps: {err}", stacklevel=2)
                break
            position = kept_layers(run.info.n_layers, removed).index(choice.layers[0])
            phase = removal_phase(prev["transition_layer"], position)
            removed = [*removed, *choice.layers]
            readout = run.eval_readout(removed)
            readout |= _lm_eval(run, removed, step)
        record = step_record(run, step, choice, removed, phase, readout)
        traj["steps"].append(record)
        rows += candidate_rows(step, choice)
        traj["timing"][f"step_{step}_s"] = round(time.perf_counter() - run.started, 2)
        _write(run, traj, rows)
        notify(traj, record, False)
        prev = record
    return _finish(run, traj, rows, removed)


def _start(run: PruneRun) -> tuple[Trajectory, list[dict], bool]:
    """The trajectory to continue, its candidate rows, and whether it was made just now.

    A resumed trajectory comes back as it was; a new one with its unpruned readout written.
    """
    cfg = run.cfg
    traj, rows = on_main(_load_previous, run)  # the run directory may be process 0's alone
    if traj is not None and traj.get("complete"):
        removed = [k for s in traj["steps"] for k in s["removed_layers"]]
        if _should_stop(run, traj, removed):
            return traj, rows, False  # resuming a finished run: nothing to do or rewrite
        traj["complete"] = False  # finished under other stopping rules: extend it
    if not (traj is not None and cfg.resume) and is_main():  # one process writes the run
        prepare_out_dir(run.out, "prune", overwrite=cfg.overwrite)
    # the unpruned calibration answers, by the same code path as every candidate's
    reduce = option_reduce(run.enc.options.ids)
    ref = stored(run.ctx, "calib-final", (), lambda: final_readout(
        run.model,
        (),
        run.ctx.calib_ids,
        reduce,
        max_tokens=run.max_tokens,
        groups=run.ctx.calib_groups,
    ))  # fmt: skip
    run.ctx.ref_logits = ref.numpy()
    if run.model16 is not None:  # the bounds: bfloat16 against float32 on the same items
        run.ctx.fast = start_rescoring(
            run.model, run.model16, run.ctx.calib_ids, run.enc.options.ids, run.ctx.calib_groups,
            run.ctx.calib_gold, run.ctx.ref_logits, max_tokens=run.max_tokens,
        )  # fmt: skip
    if traj is None:
        with stage("step 0 (unpruned)"):
            step0 = run.eval_readout([])
            step0 |= _lm_eval(run, [], 0)
        traj = header(run, step0)
        _write(run, traj, rows)
        return traj, rows, True
    return traj, rows, False


def _finish(run: PruneRun, traj: Trajectory, rows: list[dict], removed: list[int]) -> Trajectory:
    """Mark the run complete, draw its plots and write it for the last time."""
    cfg = run.cfg
    if len(traj["steps"]) < cfg.steps and len(removed) >= run.info.n_layers - cfg.block_size:
        warnings.warn(
            f"stopped after {len(traj['steps'])} of {cfg.steps} steps: "
            f"{run.info.n_layers - len(removed)} layer(s) left",
            stacklevel=2,
        )
    traj["complete"] = True
    traj["timing"]["total_s"] = round(time.perf_counter() - run.started, 2)
    if cfg.plots and is_main():
        from phaseprune.presentation.figures.png import write_prune_plots

        write_prune_plots(traj, run.out / "plots")
        stamp_figures(traj, run.out / "plots")  # the report copies them while this stays true
    _write(run, traj, rows)
    barrier()  # the run is on disk for every process
    return traj


def _lm_eval(run: PruneRun, removed: list[int], step: int) -> dict:
    """lm-eval's scores of this step, computed by process 0 and sent to the others."""
    return broadcast(run.lm_eval(run.model, removed, step) if is_main() else None)
