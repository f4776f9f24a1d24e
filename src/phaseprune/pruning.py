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
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from phaseprune import __version__
from phaseprune.core.collapse import trajectory_collapse
from phaseprune.core.errors import UsageError
from phaseprune.core.items import round_robin, subject_groups
from phaseprune.core.objectives import objective_of
from phaseprune.core.phases import removal_phase
from phaseprune.core.progress import stage
from phaseprune.engine.candidates import final_readout, option_reduce
from phaseprune.engine.incremental import IncrementalReadout
from phaseprune.model.distributed import (
    COMMUNICATION,
    barrier,
    broadcast,
    is_main,
    join,
    on_main,
    same_everywhere,
)
from phaseprune.model.load import cache_budget_bytes, default_max_tokens, resolve_model
from phaseprune.model.surgery import kept_layers
from phaseprune.presentation.figures.stamp import stamp_figures
from phaseprune.runs.config import PruneConfig, spared_builders
from phaseprune.runs.files import write_trajectory
from phaseprune.runs.heal_run import heal_key, heal_step, healer_of, replay, unhealed_record
from phaseprune.runs.lm_eval_scores import StepScorer
from phaseprune.runs.loading import (
    check_model_config,
    encode_and_load,
    encode_held,
    task_of,
    task_record,
)
from phaseprune.runs.outdir import OWN_STORE, check_out_dir, one_writer, prepare_out_dir
from phaseprune.runs.records import Readout, Trajectory, launch_settings
from phaseprune.runs.results import Pruning, as_written, table_as_written
from phaseprune.runs.resume import LATER_PRUNE_DEFAULTS, Recipe, load_previous, recipe_key
from phaseprune.runs.score_store import ScoreStore
from phaseprune.runs.trajectory import (
    RunHead,
    candidate_rows,
    header,
    readout_record,
    step_record,
)
from phaseprune.strategies.context import NoCandidate, PruneContext, stored
from phaseprune.strategies.rankings import check_order
from phaseprune.strategies.registry import strategy_function
from phaseprune.strategies.search import start_rounding, with_rounding

__all__ = ["LATER_PRUNE_DEFAULTS", "OnStep", "PruneRun", "run_prune"]  # what callers import

OnStep = Callable[[Trajectory, Readout, bool], None]
"""``on_step(traj, record, resumed)``: see :func:`run_prune`."""


def check_config(cfg: PruneConfig) -> None:
    """Refuse what the config's own field checks cannot see, with one clear line."""
    if cfg.task.limit is not None:
        raise UsageError("prune takes --calib and --eval instead of --limit")
    check_order(cfg.strategy, cfg.order, cfg.steps, cfg.protect)


class PruneRun:
    """State of one pruning run: model, items, context and the trajectory so far."""

    def __init__(self, cfg: PruneConfig, *, model=None, tokenizer=None, task=None):
        check_config(cfg)
        check_model_config(cfg.model)
        cfg = dataclasses.replace(cfg, objective=objective_of(cfg.strategy, cfg.objective))
        self.processes = join(cfg.model.device)  # launched by torchrun: each scores a shard
        same_everywhere(launch_settings(cfg), "settings or --out")
        self.lm_eval = StepScorer(cfg, tokenizer)  # lm-eval missing or a task unknown: fail now
        self.cfg = cfg
        self.out = Path(cfg.out) if cfg.out else None  # None: kept in memory only
        self.started = time.perf_counter()
        tc, mc = cfg.task, cfg.model
        extra = cfg.heal_items if cfg.heal != "none" and not cfg.heal_data else 0
        if task is None:
            task = task_of(tc, limit=cfg.calib + cfg.eval + extra)
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
        gold = np.array([it.answer for it in task.items])
        # calibration and evaluation both spread over every subject, disjoint
        order = round_robin([it.subject for it in task.items])
        self.calib = sorted(order[: cfg.calib])
        self.eval = sorted(order[cfg.calib : cfg.calib + cfg.eval])
        self.extra = sorted(order[cfg.calib + cfg.eval : cfg.calib + cfg.eval + extra])
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
            order=cfg.order,
            n_boot=cfg.n_boot,
            max_tokens=self.max_tokens,
            cache_budget=cache_budget,
            progress=not cfg.quiet,
            calib_groups=subject_groups([task.items[i].subject for i in self.calib]),
        )
        # with --heal linear the model holds the current maps from here on
        self.healer = healer_of(self, task, enc.input_ids, (tokenizer, spec), cache_budget)
        self.ctx.heal, self.ctx.heal_when = self.healer, cfg.heal_when
        self.ctx.store, self.ctx.unhealed_store = self._store(), self.healer and self._store(False)

        # the evaluation readout after each removal recomputes only the layers after it
        groups = subject_groups([task.items[i].subject for i in self.eval])
        reader = dict(groups=groups, max_tokens=self.max_tokens, cache_budget=cache_budget)
        args = (self.model, self.eval_ids, enc.options.ids)
        self.eval_reader = IncrementalReadout(*args, progress=not cfg.quiet, **reader)
        self.unhealed_reader = self.healer and IncrementalReadout(*args, **reader)

    def _store(self, healed: bool = True) -> ScoreStore | None:
        """The (``healed=False``: unhealed) store of ``--score-cache``, else the run's own."""
        ctx, groups = self.ctx, subject_groups([self.task.items[i].subject for i in self.eval])
        info = {k: v for k, v in dataclasses.asdict(self.info).items() if k != "path"}
        root = self.cfg.score_cache or (self.out / OWN_STORE if self.out else None)
        if root is None:  # a run kept in memory keeps no store of its own
            return None
        heal = heal_key(self.cfg, self.healer if healed else None)  # healed: the order counts
        return ScoreStore(root, info, self.cfg.model.dtype, ctx.calib_ids, ctx.calib_groups,
                          self.eval_ids, groups, list(ctx.option_ids), self.max_tokens,
                          self.processes, __version__, *heal, ordered=bool(heal))  # fmt: skip

    def _check_layers(self, n: int) -> None:
        """Refuse settings the model's depth makes impossible (before the weights load)."""
        cfg = self.cfg
        bad = [k for k in cfg.protect if not 0 <= k < n]
        if bad:
            raise UsageError(f"--protect {bad}: layers are 0..{n - 1}")
        check_order(cfg.strategy, cfg.order, cfg.steps, cfg.protect, n)
        if len(set(cfg.protect)) >= n:
            raise UsageError(f"--protect spares all {n} layers: nothing could be removed")
        if cfg.block_size >= n:
            raise UsageError(f"--block-size {cfg.block_size}: the model has {n} layers; use fewer")

    def _check_out(self) -> None:
        if self.out is None:
            if self.cfg.resume:
                raise UsageError("resume needs the directory of the run to resume: give out")
            return
        check_out_dir(self.out, "prune", overwrite=self.cfg.overwrite, resume=self.cfg.resume)

    def key(self, **stopping) -> str:
        """Fingerprint of the trajectory's recipe (:func:`~phaseprune.runs.resume.recipe_key`)."""
        return recipe_key(self.cfg, self.recipe(), **stopping)

    def head(self) -> RunHead:
        """What the trajectory's header records about this run."""
        ids = [it.item_id for it in self.task.items]
        return RunHead(
            cfg=self.cfg,
            fingerprint=self.key(),
            info=dataclasses.asdict(self.info),
            task=self.record_task,
            calib_items=[ids[i] for i in self.calib],
            eval_items=[ids[i] for i in self.eval],
            calib_gold=self.ctx.calib_gold,
            eval_gold=self.eval_gold,
            calib_logits=self.ctx.ref_logits,
            n_options=self.task.n_options,
            heal_data=None if self.healer is None else self.healer.data.record(),
        )

    def recipe(self) -> Recipe:
        """What the run's numbers depend on besides its settings."""
        answers = [(it.item_id, it.answer) for it in self.task.items]
        return Recipe(dataclasses.asdict(self.info), self.record_task, answers)

    def eval_readout(self, removed) -> dict:
        """Full decision readout of the model without ``removed`` on the evaluation items.

        Healed, also the same removals with no map (``unhealed``: an unhealed run's ``eval``).
        """
        logits = stored(self.ctx, "eval", removed, lambda: self.eval_reader(removed)).numpy()
        record = readout_record(logits, self.eval_gold, self.task.n_options, self.cfg)
        if self.healer is None or not removed:
            return record
        with self.healer.original():
            read, store = (lambda: self.unhealed_reader(removed)), self.ctx.unhealed_store
            plain = (store.fetch("eval", removed, read) if store else read()).numpy()
        plain = readout_record(plain, self.eval_gold, self.task.n_options, self.cfg)
        return record | {"unhealed": unhealed_record(plain)}


def _write(run: PruneRun, traj: Trajectory, rows: list[dict]) -> None:
    """Store the collapse of the steps so far (provisional until complete), then write.

    Every process holds the same trajectory; process 0 writes it.
    """
    traj["collapse"] = trajectory_collapse(traj)
    traj["timing"]["processes"] = run.processes
    if run.ctx.store is not None:
        traj["timing"]["score_cache"] = run.ctx.store.record(run.ctx.unhealed_store)
    if run.processes > 1:
        traj["timing"]["communication_s"] = round(COMMUNICATION["seconds"], 3)
    if is_main() and run.out is not None:
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
) -> Pruning:
    """Run (or resume) a pruning run and return its records.

    With ``cfg.out`` the run is written there after every step (and resumes from there);
    with an empty ``cfg.out`` nothing is written anywhere and the records come back in memory.

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
    with one_writer(Path(cfg.out) if cfg.out else None):  # before anything loads
        run = PruneRun(cfg, model=model, tokenizer=tokenizer, task=task)
        try:
            return _run(run, on_step)
        finally:
            if run.healer is not None:
                run.healer.close()  # the caller's model gets its own weights back


def _run(run: PruneRun, on_step: OnStep | None) -> Pruning:
    cfg = run.cfg
    traj, rows, fresh = _start(run)
    notify = on_step or (lambda traj, record, resumed: None)
    for record in [traj["step0"], *traj["steps"]]:
        notify(traj, record, not fresh)
    if traj.get("complete"):
        return _result(run, traj, rows)
    removed = [k for s in traj["steps"] for k in s["removed_layers"]]
    prev = traj["steps"][-1] if traj["steps"] else traj["step0"]
    strategy = strategy_function(cfg.strategy)
    while not _should_stop(run, traj, removed):
        step = len(traj["steps"]) + 1
        with stage(f"step {step}/{cfg.steps}"):
            try:
                choice = with_rounding(run.ctx, strategy(run.ctx, removed))
            except NoCandidate as err:
                warnings.warn(f"stopped after {step - 1} of {cfg.steps} steps: {err}", stacklevel=2)
                break
            position = kept_layers(run.info.n_layers, removed).index(choice.layers[0])
            phase = removal_phase(prev["transition_layer"], position)
            heal = heal_step(run, step, removed, choice.layers, traj["timing"])
            removed = [*removed, *choice.layers]
            readout = run.eval_readout(removed)
            readout |= _lm_eval(run, removed, step)
            if heal is not None:
                readout["heal"] = heal
        record = step_record(run.info.n_layers, step, choice, removed, phase, readout)
        traj["steps"].append(record)
        rows += candidate_rows(step, choice)
        traj["timing"][f"step_{step}_s"] = round(time.perf_counter() - run.started, 2)
        _write(run, traj, rows)
        notify(traj, record, False)
        prev = record
    return _result(run, _finish(run, traj, rows, removed), rows)


def _result(run: PruneRun, traj: Trajectory, rows: list[dict]) -> Pruning:
    """The run's records as a reader of its files gets them (written or not)."""
    return Pruning(as_written(traj), table_as_written(pd.DataFrame(rows)), run.out)


def _start(run: PruneRun) -> tuple[Trajectory, list[dict], bool]:
    """The trajectory to continue, its candidate rows, and whether it was made just now.

    A resumed trajectory comes back as it was; a new one with its unpruned readout written.
    """
    cfg = run.cfg
    # the run directory may be process 0's alone
    traj, rows = on_main(load_previous, run.out, run.cfg, run.key, run.recipe())
    if traj is not None and traj.get("complete"):
        removed = [k for s in traj["steps"] for k in s["removed_layers"]]
        if _should_stop(run, traj, removed):
            return traj, rows, False  # resuming a finished run: nothing to do or rewrite
        traj["complete"] = False  # finished under other stopping rules: extend it
    if not (traj is not None and cfg.resume) and is_main() and run.out is not None:
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
    start_rounding(run.ctx)  # a bfloat16 run: the error each step's choice is checked against
    if traj is not None and run.healer is not None:
        replay(run.healer, run.out, traj["steps"])  # the maps of the completed steps
    if traj is None:
        with stage("step 0 (unpruned)"):
            step0 = run.eval_readout([])
            step0 |= _lm_eval(run, [], 0)
        traj = header(run.head(), step0)
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
    if cfg.plots and is_main() and run.out is not None:
        from phaseprune.presentation.figures.png import write_prune_plots

        write_prune_plots(traj, run.out / "plots")
        stamp_figures(traj, run.out / "plots")  # the report copies them while this stays true
    _write(run, traj, rows)
    barrier()  # the run is on disk for every process
    return traj


def _lm_eval(run: PruneRun, removed: list[int], step: int) -> dict:
    """lm-eval's scores of this step, computed by process 0 and sent to the others."""
    return broadcast(run.lm_eval(run.model, removed, step) if is_main() else None)
