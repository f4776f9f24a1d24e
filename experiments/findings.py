"""Reproduce docs/findings.md: the paper's phenomenon tested on real models with phaseprune.

    .venv/bin/python experiments/findings.py                      # every model, every stage
    .venv/bin/python experiments/findings.py --models smollm2-135m
    .venv/bin/python experiments/findings.py --doc-only           # re-render from finished runs
    .venv/bin/python experiments/findings.py --doc-only --keep-records  # and keep their records
    .venv/bin/python experiments/findings.py --status             # what is done, what is left
    torchrun --standalone --nproc_per_node 2 experiments/findings.py  # items over 2 processes

For each model it runs, through phaseprune's own commands (one model load per model):
``analyze`` on MMLU (several subjects) and on ARC-Challenge, ``prune`` with each strategy on
disjoint calibration/evaluation items, ``report`` over them; then ``findings_doc.py`` (the
document half) extracts the claims' numbers (:mod:`phaseprune.core.evidence`) and renders
docs/findings.md from experiments/findings.md.j2. This module runs the stages of the plans
(``plans.py``) and keeps their committed records (``experiments/records/``). Runs go to
``runs/findings/<model>/`` and are resumed, so an interrupted or partial run continues where
it stopped; the wall time of every invocation is logged there and summed in the document.
Figures are copied to ``docs/findings/<model>/``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import sys
import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import torch
from plans import FIRST_VERSION, PLANS, ROOT, Plan, resolve  # experiments/: this script's folder

from phaseprune.analysis import run_analyze
from phaseprune.model.distributed import is_main, join, local_device, on_main
from phaseprune.engine.incremental import hold_models
from phaseprune.pruning import run_prune
from phaseprune.runs.config import AnalyzeConfig, ModelConfig, PruneConfig, TaskConfig
from phaseprune.runs.files import load_trajectory
from phaseprune.strategies.registry import strategy_function

RECORDS = ROOT / "experiments" / "records"
"""Where each stage's small records are committed (trajectory.json, candidates.parquet,
summary.json, an analyze run's per-item readout items.parquet; never weights), so that a fresh
machine resumes instead of starting over."""
RECORD_FILES = ("trajectory.json", "candidates.parquet", "summary.json", "items.parquet")


def _has_records(path: Path) -> bool:
    """Whether ``path`` holds any of a stage's record files (a run directory or its records)."""
    return any((path / f).exists() for f in RECORD_FILES)


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


def _done(run_dir: Path) -> bool:
    if (run_dir / "summary.json").exists():
        return True
    return (run_dir / "trajectory.json").exists() and load_trajectory(run_dir)["complete"]


def _todo(run_dir: Path, cfg) -> bool:
    """Whether the stage still has work: unfinished, or finished with fewer steps than asked.

    A pruning run finished with fewer steps than ``cfg.steps`` (and no collapse it should stop
    at) is extended by resuming it (``prune --resume`` with a larger ``--steps``).
    """
    if not _done(run_dir):
        return True
    if isinstance(cfg, AnalyzeConfig):
        return False
    traj = load_trajectory(run_dir)
    if cfg.stop_at_collapse and traj["collapse"]["step"] is not None:
        return False
    left = len(traj["steps"][-1]["remaining_layers"]) if traj["steps"] else traj["n_layers"]
    return len(traj["steps"]) < cfg.steps and left > 1


def _steps_done(run_dir: Path) -> int:
    exists = (run_dir / "trajectory.json").exists()
    return len(load_trajectory(run_dir)["steps"]) if exists else 0


def run_plan(
    plan: Plan,
    run_root: Path,
    only: set[str] | None,
    device: str = "cpu",
    dtype: str | None = None,
    precision: str = "exact",
) -> None:
    """Run every unfinished stage of ``plan`` (resuming partial ones) on ``device``."""
    model = ModelConfig(model=on_main(resolve, plan), device=device, dtype=dtype,
                        precision=precision)  # fmt: skip
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
            on_main(_restore, plan, name, out)
            if name.startswith("h2h-"):
                cfg = _extended(out, cfg, plan)
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
                    _keep(plan, name, out)


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
    return [*h2h[:3], *stages, *single, *h2h[3:]]


def stage_status(plan: Plan, run_root: Path) -> list[tuple[str, str]]:
    """Where each of ``plan``'s stages stands: ``(stage, state)`` in the order they run.

    Read from the stage's run directory under ``run_root``, else from its committed records
    (what a fresh machine would resume from); no model is loaded.
    """
    rows = []
    numbers = ROOT / "docs" / "findings" / plan.name / "numbers.json"
    analyze = [run_root / plan.analyze_stage, RECORDS / plan.name / plan.analyze_stage]
    if numbers.exists() and not any((p / "summary.json").exists() for p in analyze):
        rows.append(("(document)", f"from {numbers.relative_to(ROOT)}: runs made elsewhere"))
    for name, cfg in plan_stages(plan, run_root, ModelConfig(model=plan.model)):
        out = run_root / name
        if not _has_records(out):
            out = RECORDS / plan.name / name
        if name in plan.skip:
            rows.append((name, "skipped by the plan"))
        elif not _has_records(out):
            rows.append((name, "not started"))
        elif isinstance(cfg, AnalyzeConfig):
            rows.append((name, "done" if _done(out) else "to do: started"))
        else:
            cfg = _extended(out, cfg, plan) if name.startswith("h2h-") else cfg
            traj = load_trajectory(out)
            state = (
                f"{'to do' if _todo(out, cfg) else 'done'}: {len(traj['steps'])}/{cfg.steps} steps"
            )
            if traj["collapse"]["step"] is not None:
                state += f", collapse at {traj['collapse']['step']}"
            rows.append((name, state))
    return rows


def _extended(out: Path, cfg: PruneConfig, plan: Plan) -> PruneConfig:
    """A head-to-head run past ``plan.steps`` removals without a collapse goes on to it.

    The same run resumed with a larger ``--steps`` and ``--stop-at-collapse`` (stopping
    settings, so the fingerprint allows it): every strategy is compared at every depth up to
    ``plan.steps``, and the deeper ones also to where they collapse.
    """
    if not _done(out) or cfg.steps != plan.steps:  # ablation variants stop at their own depth
        return cfg
    traj = load_trajectory(out)
    if len(traj["steps"]) >= cfg.steps and traj["collapse"]["step"] is None:
        return replace(cfg, steps=plan.extend_to, stop_at_collapse=True)
    return cfg


def _keep(plan: Plan, name: str, out: Path) -> None:
    """Copy a stage's small records into experiments/records/ (committed with the code)."""
    target = RECORDS / plan.name / name
    if (out.parent / "log.json").exists():  # every invocation's wall time, for the document
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(out.parent / "log.json", target.parent / "log.json")
    for f in RECORD_FILES:
        if (out / f).exists():
            target.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(out / f, target / f)


def keep_all(plan: Plan, run_root: Path) -> list[str]:
    """:func:`_keep` every stage found under ``run_root``; returns the stages kept.

    Records are written atomically, so a stage running meanwhile is copied as of its last
    completed step.
    """
    kept = []
    for out in sorted(p for p in run_root.glob("*") if p.is_dir()):
        if _has_records(out):
            _keep(plan, out.name, out)
            kept.append(out.name)
    return kept


def _restore(plan: Plan, name: str, out: Path) -> None:
    """On a machine without the stage's run directory, start from the committed records.

    ``prune --resume`` then continues from the last step recorded (its fingerprint still
    checks the model, items and settings).
    """
    source = RECORDS / plan.name / name
    log = source.parent / "log.json"
    if log.exists() and not (out.parent / "log.json").exists():  # earlier machines' wall time
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(log, out.parent / "log.json")
    if (out / "trajectory.json").exists() or (out / "summary.json").exists():
        return
    if not _has_records(source):  # analyze keeps a summary only
        return
    out.mkdir(parents=True, exist_ok=True)
    for f in RECORD_FILES:
        if (source / f).exists():
            shutil.copyfile(source / f, out / f)


def main() -> None:
    """Run the stages, then write the document."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(PLANS), help="comma-separated plan names")
    parser.add_argument("--stages", default="", help="only these stages (e.g. analyze-mmlu)")
    parser.add_argument("--doc-only", action="store_true", help="only re-render the document")
    parser.add_argument(
        "--keep-records",
        action="store_true",
        help="with --doc-only: first copy the records of every stage under --runs (finished or "
        "not, e.g. a run still going in another process) into experiments/records/, to commit "
        "a long run's progress",
    )
    parser.add_argument(
        "--status",
        action="store_true",
        help="print where each stage stands (steps done of those asked, from --runs or else the "
        "committed records) and exit",
    )
    parser.add_argument("--runs", default=str(ROOT / "runs" / "findings"))
    parser.add_argument(
        "--device",
        default="cpu",
        help="cpu, cuda or auto; runs made on another device or dtype have another fingerprint, "
        "so give them their own --runs folder",
    )
    parser.add_argument("--dtype", default=None, help="default: float32 on CPU, bfloat16 on GPU")
    parser.add_argument(
        "--precision",
        default="exact",
        choices=("exact", "fast"),
        help="fast: candidates in bfloat16, every decision float32's (a run made with the other "
        "precision has another fingerprint and is not resumed)",
    )
    args = parser.parse_args()
    names = [m for m in args.models.split(",") if m]
    unknown = [m for m in names if m not in PLANS]
    if unknown:
        raise SystemExit(f"unknown model plan {unknown}; choose from {', '.join(PLANS)}")
    only = set(args.stages.split(",")) - {""} or None
    if args.status:
        for name in names:
            for stage, state in stage_status(PLANS[name], Path(args.runs) / name):
                print(f"{name:24s} {stage:34s} {state}")
        return
    join(args.device)  # under torchrun / accelerate launch: every run shares the items out
    # `kill` (SIGTERM) unwinds like Ctrl-C, so the stage's time is logged before exiting
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if not args.doc_only:
        for name in names:
            run_plan(
                PLANS[name], Path(args.runs) / name, only, args.device, args.dtype, args.precision
            )
    elif args.keep_records and is_main():
        for name in names:
            keep_all(PLANS[name], Path(args.runs) / name)
    if not is_main():  # launched by torchrun: process 0 writes the document
        return
    sys.modules.setdefault("findings", sys.modules[__name__])  # one copy of this module
    import findings_doc  # the document half (experiments/ is on sys.path: this script's folder)

    docs = ROOT / "docs" / "findings"
    numbers = {n: findings_doc.collect(PLANS[n], Path(args.runs) / n, docs) for n in PLANS}
    findings_doc.render(numbers, ROOT / "docs" / "findings.md")
    print(f"wrote {ROOT / 'docs' / 'findings.md'}")


if __name__ == "__main__":
    main()
