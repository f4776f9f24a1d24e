"""The study's stages: each plan's runs through phaseprune's own commands, resumed if stopped.

For each model it runs (one model load per model) ``analyze`` on MMLU (several subjects) and on
a second task, ``prune`` with each strategy on disjoint calibration/evaluation items, and the
head-to-head's runs (:mod:`phaseprune_study.plans`). Runs go to ``runs/findings/<model>/`` and
are resumed, so an interrupted or partial run continues where it stopped; each stage's records
are kept in ``experiments/records/`` (:mod:`phaseprune_study.records`) and the wall time of
every invocation is logged beside the runs and summed in the document.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import torch

from phaseprune.analysis import run_analyze
from phaseprune.engine.incremental import hold_models
from phaseprune.model.distributed import is_main, local_device, on_main
from phaseprune.pruning import run_prune
from phaseprune.runs.config import AnalyzeConfig, ModelConfig, PruneConfig, TaskConfig
from phaseprune.runs.files import load_trajectory
from phaseprune.strategies.registry import strategy_function
from phaseprune_study.plans import FIRST_VERSION, HEALED_EXTEND_TO, ROOT, Plan, resolve
from phaseprune_study.records import committed, done, has_records, keep, restore


def _log(run_root: Path, stage: str, seconds: float, accelerator: str | None = None) -> None:
    """Add one invocation of ``stage`` to ``run_root/log.json`` (with the GPU it ran on, if any)."""
    if not is_main():  # launched by torchrun: process 0 keeps the log
        return
    path = run_root / "log.json"
    log = json.loads(path.read_text()) if path.exists() else []
    entry = {"stage": stage, "wall_s": round(seconds, 1), "finished": _now()}
    log.append(entry | ({"accelerator": accelerator} if accelerator else {}))
    path.write_text(json.dumps(log, indent=1))


def _accelerator(device: str) -> str | None:
    """The GPU a run on ``device`` uses (e.g. "NVIDIA H200"), None for the CPU."""
    if device == "cpu" or not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_name(local_device(device) if device.startswith("cuda") else None)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _todo(run_dir: Path, cfg) -> bool:
    """Whether the stage still has work: unfinished, or finished with fewer steps than asked.

    A pruning run finished with fewer steps than ``cfg.steps`` (and no collapse it should stop
    at) is extended by resuming it (``prune --resume`` with a larger ``--steps``).
    """
    if not done(run_dir):
        return True
    if isinstance(cfg, AnalyzeConfig):
        return False
    traj = load_trajectory(run_dir)
    if cfg.stop_at_collapse and traj["collapse"]["step"] is not None:
        return False
    left = len(traj["steps"][-1]["remaining_layers"]) if traj["steps"] else traj["n_layers"]
    return len(traj["steps"]) < cfg.steps and left > 1


def run_plan(
    plan: Plan,
    run_root: Path,
    only: set[str] | None,
    device: str = "cpu",
    dtype: str | None = None,
) -> None:
    """Run every unfinished stage of ``plan`` (resuming partial ones) on ``device``."""
    model = ModelConfig(model=on_main(resolve, plan), device=device, dtype=dtype)
    stages = plan_stages(plan, run_root, model)
    run_root.mkdir(parents=True, exist_ok=True)
    # every strategy's module now, not when its stage starts hours later: an editable install
    # edited meanwhile would otherwise mix old and new modules (seen: an ImportError)
    for name in {cfg.strategy for _, cfg in stages if isinstance(cfg, PruneConfig)}:
        strategy_function(name)
    with hold_models():
        for name, cfg in stages:
            out = run_root / name
            if (only and name not in only) or name in plan.skip:
                continue
            on_main(restore, plan, name, out)
            cfg = _extended(out, cfg, plan, name)
            if not _todo(out, cfg):
                continue
            started = time.perf_counter()
            print(f"[{_now()}] {plan.name}: {name}", flush=True)
            finished = False
            try:
                if isinstance(cfg, AnalyzeConfig):
                    run_analyze(replace(cfg, out=str(out)))
                else:
                    resume = (out / "trajectory.json").exists()
                    run_prune(replace(cfg, out=str(out), resume=resume))
                finished = True
            finally:  # an interrupted invocation's time counts too (its steps are kept)
                label = name if finished else f"{name} (interrupted)"
                _log(run_root, label, time.perf_counter() - started, _accelerator(device))
                if is_main():
                    keep(plan, name, out)


def plan_stages(plan: Plan, run_root: Path, model: ModelConfig) -> list[tuple[str, object]]:
    """``plan``'s stages in the order they run: ``(name, config)``, outputs not yet set."""
    mmlu = TaskConfig(task="mmlu", subjects=plan.subjects, shots=plan.shots)
    stages: list[tuple[str, object]] = [
        ("analyze-mmlu", AnalyzeConfig(out="", model=model,
                                       task=replace(mmlu, limit=plan.mmlu_items),
                                       seed=plan.seed)),
        ("analyze-" + plan.other_task, AnalyzeConfig(
            out="", model=model,
            task=TaskConfig(task=plan.other_task, shots=plan.shots, limit=plan.other_items),
            seed=plan.seed)),
    ]  # fmt: skip
    for strategy in plan.strategies:
        steps = plan.steps_by_strategy.get(strategy, plan.steps)
        cfg = PruneConfig(out="", model=model, task=mmlu, strategy=strategy, steps=steps,
                          calib=plan.calib, eval=plan.eval, seed=plan.seed,
                          stop_at_collapse=True, **FIRST_VERSION)  # fmt: skip
        stages.append((f"prune-{strategy}", cfg))
    cache = str(run_root / "score-cache")  # logits of pruned models, shared by every h2h run
    h2h_task = mmlu if plan.h2h_task == "mmlu" else TaskConfig(task=plan.h2h_task,
                                                                shots=plan.shots)  # fmt: skip
    h2h = [(f"h2h-{label}", PruneConfig(
        out="", model=model, task=h2h_task, calib=plan.calib, eval=plan.eval,
        seed=plan.seed, stop_at_collapse=False, plots=False, score_cache=cache,
        cache_budget="6GB", **{"steps": plan.steps, **settings}))
        for label, settings in plan.h2h.items()]  # fmt: skip
    heal = [(f"heal-{label}", PruneConfig(
        out="", model=model, task=h2h_task, calib=plan.calib, eval=plan.eval, seed=plan.seed,
        plots=False, score_cache=cache, cache_budget="6GB", **settings))
        for label, settings in plan.heal.items()]  # fmt: skip
    # the first three runs, the decision readout, the single removals (claims b, c; under an
    # hour), then the rest
    single = []
    if plan.single_items:
        # the score cache keeps each layer's scan as it finishes (an interrupted stage resumes
        # with them), which needs every item's layer inputs in one chunk: 8GB holds Qwen's 120
        single.append(("single-removals", PruneConfig(
            out="", model=model, task=h2h_task, strategy="iterative", steps=1,
            calib=plan.single_items, eval=10, seed=plan.seed, score_cache=cache,
            cache_budget="8GB")))  # fmt: skip
    return [*h2h[:3], *stages, *single, *h2h[3:], *heal]


def stage_status(plan: Plan, run_root: Path) -> list[tuple[str, str]]:
    """Where each of ``plan``'s stages stands: ``(stage, state)`` in the order they run.

    Read from the stage's run directory under ``run_root``, else from its committed records
    (what a fresh machine would resume from); no model is loaded.
    """
    rows = []
    numbers = ROOT / "docs" / "findings" / plan.name / "numbers.json"
    analyze = [run_root / plan.analyze_stage, committed(plan, plan.analyze_stage)]
    if numbers.exists() and not any((p / "summary.json").exists() for p in analyze):
        rows.append(("(document)", f"from {numbers.relative_to(ROOT)}: runs made elsewhere"))
    for name, cfg in plan_stages(plan, run_root, ModelConfig(model=plan.model)):
        out = run_root / name
        if not has_records(out):
            out = committed(plan, name)
        if name in plan.skip:
            rows.append((name, "skipped by the plan"))
        elif not has_records(out):
            rows.append((name, "not started"))
        elif isinstance(cfg, AnalyzeConfig):
            rows.append((name, "done" if done(out) else "to do: started"))
        else:
            cfg = _extended(out, cfg, plan, name)
            traj = load_trajectory(out)
            state = (
                f"{'to do' if _todo(out, cfg) else 'done'}: {len(traj['steps'])}/{cfg.steps} steps"
            )
            if traj["collapse"]["step"] is not None:
                state += f", collapse at {traj['collapse']['step']}"
            rows.append((name, state))
    return rows


def _extended(out: Path, cfg, plan: Plan, stage: str = "h2h-"):
    """A finished run that the plan carries on deeper, resumed with a larger ``--steps``.

    Stopping settings, so the fingerprint allows it. A head-to-head run (``h2h-*``) past
    ``plan.steps`` removals without a collapse goes on to it, up to ``plan.extend_to``: every
    strategy is compared at every depth up to ``plan.steps``, and the deeper ones also to where
    they collapse. A healed run (``heal-*``) still keeping 90% of the unpruned accuracy at its
    last planned step goes on to :data:`~phaseprune_study.plans.HEALED_EXTEND_TO` removals
    (the OpenBookQA pre-registration's rule). Any other stage, or a run not finished: ``cfg``.
    """
    from phaseprune.core.headtohead import SHARES, curve, retention_depth

    if not stage.startswith(("h2h-", "heal-")) or not done(out):
        return cfg
    traj = load_trajectory(out)
    if len(traj["steps"]) < cfg.steps:
        return cfg
    if stage.startswith("h2h-"):
        if cfg.steps == plan.steps and traj["collapse"]["step"] is None:  # not ablation variants
            return replace(cfg, steps=plan.extend_to, stop_at_collapse=True)
        return cfg
    c = curve(traj)
    if cfg.steps < HEALED_EXTEND_TO and retention_depth(c, SHARES[0]) == c.depths[-1]:
        return replace(cfg, steps=HEALED_EXTEND_TO)
    return cfg
