"""``phaseprune demo``: the whole story in a few minutes on the embedded model and offline data.

One process, one model load (:func:`~phaseprune.model.load.hold_models`): ``analyze`` reads every
layer's decision, ``prune`` removes layers with several strategies on disjoint calibration and
evaluation items, ``compare`` puts them side by side, and ``report`` writes one HTML page.
Each stage is an ordinary run directory under ``--out``, so every command the demo ran can be
rerun, inspected or resumed alone; a rerun of the demo resumes whatever is unfinished.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path

from tqdm.auto import tqdm

from phaseprune.core.errors import UsageError
from phaseprune.core.progress import stage
from phaseprune.runs.config import (
    AnalyzeConfig,
    DemoConfig,
    ModelConfig,
    PruneConfig,
    TaskConfig,
    strategy_names,
)
from phaseprune.runs.files import load_summary
from phaseprune.runs.records import settings_record

SCORE_CACHE = "score-cache"
"""The demo's strategies share one score store (``prune --score-cache``): every run reads the
unpruned model's readouts, and phase-aware's scan of the decision builders is iterative
pruning's first step, so each is computed once; ``--overwrite`` starts it again."""


def _clear_store(out: Path, overwrite: bool) -> None:
    """With ``--overwrite``, empty the store the demo's runs in ``out`` share."""
    if overwrite:
        shutil.rmtree(out / SCORE_CACHE, ignore_errors=True)


def _check(cfg: DemoConfig) -> None:
    if not cfg.strategies:  # each one is checked against the registry by the config
        raise UsageError(f"--strategies (none): choose from {', '.join(strategy_names())}")


def _stage_configs(cfg: DemoConfig) -> tuple[AnalyzeConfig, list[PruneConfig]]:
    out = Path(cfg.out)
    mc = ModelConfig(model=cfg.model)
    tc = TaskConfig(task=cfg.task, subjects=cfg.subjects, data_dir=cfg.data_dir, shots=cfg.shots)
    analyze = AnalyzeConfig(
        out=str(out / "analyze"),
        model=mc,
        task=dataclasses.replace(tc, limit=cfg.items),
        overwrite=cfg.overwrite,
        quiet=True,
    )
    prunes, store = [], str(out / SCORE_CACHE)
    for strategy in cfg.strategies:
        run_dir = out / f"prune-{strategy}"
        exists = (run_dir / "trajectory.json").exists()
        prunes.append(
            PruneConfig(
                out=str(run_dir),
                model=mc,
                task=tc,
                strategy=strategy,
                steps=cfg.steps,
                calib=cfg.calib,
                eval=cfg.eval,
                resume=exists and not cfg.overwrite,
                overwrite=cfg.overwrite,
                quiet=True,
                score_cache=store,
            )
        )
    return analyze, prunes


def run_demo(cfg: DemoConfig) -> dict:
    """Run every stage (resuming finished ones) and return what was written and measured."""
    from phaseprune.analysis import run_analyze
    from phaseprune.compare import run_compare
    from phaseprune.engine.incremental import hold_models
    from phaseprune.presentation.report import build_report
    from phaseprune.pruning import run_prune

    _check(cfg)
    out = Path(cfg.out)
    analyze_cfg, prune_cfgs = _stage_configs(cfg)
    _clear_store(out, cfg.overwrite)
    started = time.perf_counter()
    # one unit per stage, and one per pruning step: the bar moves while a strategy prunes
    bar = tqdm(total=3 + len(prune_cfgs) * (cfg.steps + 1), desc="demo", unit="step")
    result: dict = {"out": str(out)}
    with hold_models():
        bar.set_postfix_str("analyze (loads the model)")
        with stage("demo analyze"):
            summary = _analyze(run_analyze, analyze_cfg)
        result["analyze"] = summary
        bar.update()
        trajs = {}
        for i, pc in enumerate(prune_cfgs):
            bar.set_postfix_str(f"prune {pc.strategy}: unpruned readout")
            with stage(f"demo prune {pc.strategy}"):
                trajs[pc.strategy] = run_prune(pc, on_step=_advance(bar, pc)).trajectory
            bar.update(1 + (i + 1) * (cfg.steps + 1) - bar.n)  # a run that stopped early
    bar.set_postfix_str("compare")
    # the head-to-head: phase-aware (when run) against every other strategy on the same items
    reference = "phase-aware" if "phase-aware" in cfg.strategies else None
    result["compare"] = run_compare(
        [p.out for p in prune_cfgs], str(out / "compare"), reference=reference, depth=cfg.steps
    )
    bar.update()
    bar.set_postfix_str("report")
    runs = [analyze_cfg.out, *(p.out for p in prune_cfgs)]
    result["report"] = build_report(runs, out / "report.html")
    bar.update()
    bar.close()
    result["prune"] = trajs
    if cfg.decider:
        result["decider"] = _decider_story(cfg, out / "decider")
    result["wall_s"] = time.perf_counter() - started
    return result


DECIDER_ITEMS = {"analyze": 160, "calib": 40, "eval": 120}
"""The decider's share of its 160 held-out items: all for analyze, 40/120 for pruning."""
DECIDER_STEPS = 3
"""Layers each strategy removes from the 6-layer decider (seconds each, whatever ``--steps``)."""


def _decider_story(cfg: DemoConfig, out: Path) -> dict:
    """The same story on a model that decides: train it (once), analyze, prune, head-to-head.

    The decider (:mod:`phaseprune.engine.decider`) has a sharp transition: `last` removes its
    Decisive-Phase layers and keeps the accuracy until it reaches the transition, and the
    head-to-head holds phase-aware (its defaults) against the other strategies. Each strategy
    runs twice: as it is, and with ``--heal linear`` (fitted on the calibration prompts: the
    decider's 160 items are all calibration or evaluation items), whose steps also read the
    same removals without any map (``OUT/decider/compare-healed/``).
    """
    from phaseprune.analysis import run_analyze
    from phaseprune.compare import run_compare
    from phaseprune.engine.decider import build_decider
    from phaseprune.presentation.report import build_report
    from phaseprune.pruning import run_prune

    _clear_store(out, cfg.overwrite)  # the healed runs' store too
    if cfg.overwrite:
        shutil.rmtree(out / f"{SCORE_CACHE}-healed", ignore_errors=True)
    model = out / "model"
    if not (model / "eval.jsonl").exists() or cfg.overwrite:
        with stage("demo decider: training"):
            build_decider(model, seed=0)
    task = TaskConfig(task=f"jsonl:{model / 'eval.jsonl'}")
    mc = ModelConfig(model=str(model))
    analyze = AnalyzeConfig(out=str(out / "analyze"), model=mc, overwrite=cfg.overwrite,
                            task=dataclasses.replace(task, limit=DECIDER_ITEMS["analyze"]),
                            quiet=True)  # fmt: skip
    summary = _analyze(run_analyze, analyze)
    _clear_store(out, cfg.overwrite)
    steps = min(DECIDER_STEPS, summary["n_layers"] - 1)
    trajs, healed, runs = {}, {}, {"": [], "-healed": []}
    for strategy in cfg.strategies:
        for suffix, heal in (("", "none"), ("-healed", "linear")):
            run_dir = out / f"prune-{strategy}{suffix}"
            pc = PruneConfig(out=str(run_dir), model=mc, task=task, strategy=strategy,
                             steps=steps, calib=DECIDER_ITEMS["calib"],
                             eval=DECIDER_ITEMS["eval"], heal=heal, heal_items=0,
                             resume=(run_dir / "trajectory.json").exists() and not cfg.overwrite,
                             overwrite=cfg.overwrite, quiet=True,
                             score_cache=str(out / f"{SCORE_CACHE}{suffix}"))  # fmt: skip
            with stage(f"demo decider prune {strategy}{suffix}"):
                traj = run_prune(pc).trajectory
            (healed if heal == "linear" else trajs)[strategy] = traj
            runs[suffix].append(pc.out)
    reference = "phase-aware" if "phase-aware" in cfg.strategies else None
    table = run_compare(runs[""], str(out / "compare"), reference=reference, depth=steps)
    healed_table = run_compare(
        runs["-healed"], str(out / "compare-healed"), reference=reference, depth=steps
    )
    report = build_report([analyze.out, *runs[""], *runs["-healed"]], out / "report.html")
    return {"analyze": summary, "prune": trajs, "healed": healed, "compare": table,
            "compare_healed": healed_table, "report": report}  # fmt: skip


def _advance(bar: tqdm, pc: PruneConfig):
    """``on_step`` of one strategy's run: one unit of the demo's bar per completed step."""

    def on_step(traj: dict, record: dict, resumed: bool) -> None:
        done = record.get("step", 0)
        bar.update()
        if done < pc.steps:
            bar.set_postfix_str(f"prune {pc.strategy}: step {done + 1}/{pc.steps}")

    return on_step


def _analyze(run_analyze, cfg: AnalyzeConfig) -> dict:
    """Analyze, reusing a finished run with the same settings (an unfinished one resumes)."""
    if (Path(cfg.out) / "summary.json").exists() and not cfg.overwrite:
        record = load_summary(cfg.out)
        same = json.loads(json.dumps(settings_record(cfg)))  # tuples as JSON lists
        if _without_volatile(record["settings"]) == _without_volatile(same):
            return record
        cfg = dataclasses.replace(cfg, overwrite=True)
    return run_analyze(cfg).summary


def _without_volatile(settings: dict) -> dict:
    return {k: v for k, v in settings.items() if k not in ("overwrite", "quiet")}
