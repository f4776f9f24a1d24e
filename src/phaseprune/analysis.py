"""``phaseprune analyze``: load, prompt, read out every layer, measure, find phases, write.

This is the one place that wires the pure core (readout, metrics, phases) to files and
models; it takes a typed :class:`~phaseprune.runs.config.AnalyzeConfig` and returns the summary.
"""

from __future__ import annotations

import dataclasses
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from phaseprune import __version__
from phaseprune.core.errors import UsageError
from phaseprune.core.items import subject_groups
from phaseprune.core.metrics import item_metrics, layer_stats
from phaseprune.core.phases import detect_phases
from phaseprune.engine.readout import read_options
from phaseprune.model.arch import decoder_parts
from phaseprune.model.distributed import (
    COMMUNICATION,
    barrier,
    is_main,
    join,
    on_main,
    same_everywhere,
)
from phaseprune.model.load import default_max_tokens, resolve_model
from phaseprune.presentation.figures.stamp import stamp_figures
from phaseprune.runs.config import AnalyzeConfig
from phaseprune.runs.files import write_summary
from phaseprune.runs.loading import (
    check_model_config,
    encode_and_load,
    encode_held,
    task_of,
    task_record,
)
from phaseprune.runs.outdir import (
    PartialReadout,
    check_out_dir,
    fingerprint,
    one_writer,
    prepare_out_dir,
)
from phaseprune.runs.records import (
    Summary,
    build_summary,
    items_table,
    launch_settings,
    settings_record,
)
from phaseprune.runs.results import Analysis, as_written, table_as_written


def run_analyze(cfg: AnalyzeConfig, *, model=None, tokenizer=None, task=None) -> Analysis:
    """Run the analysis described by ``cfg``; write it to ``cfg.out`` if given; return it.

    With an empty ``cfg.out`` nothing is written anywhere (not even partial results).

    ``model`` and ``tokenizer`` (objects the caller holds) replace loading ``cfg.model.model``;
    ``task`` (a :class:`~phaseprune.tasks.TaskData`) replaces loading ``cfg.task.task``.
    """
    with one_writer(Path(cfg.out) if cfg.out else None):  # before anything loads
        return _analyze(cfg, model, tokenizer, task)


def _analyze(cfg: AnalyzeConfig, model, tokenizer, task) -> Analysis:
    """:func:`run_analyze` while holding its output directory."""
    started = time.perf_counter()
    out = Path(cfg.out) if cfg.out else None  # None: kept in memory only
    tc, mc = cfg.task, cfg.model
    check_model_config(mc)
    processes = join(mc.device)  # launched by torchrun / accelerate: each reads a shard
    same_everywhere(launch_settings(cfg), "settings or --out")
    if task is None:
        task = task_of(tc, limit=tc.limit)
    if tc.limit is not None and len(task.items) < tc.limit:  # as prune refuses --calib + --eval
        raise UsageError(
            f"{tc.task} has {len(task.items)} items; --limit {tc.limit} asks for more: lower it "
            "or add subjects"
        )
    spec = resolve_model(mc.model) if model is None else None
    if out is not None:
        check_out_dir(out, "analyze", overwrite=cfg.overwrite)
    if model is None:
        enc, model, info = encode_and_load(spec, task, tc, mc, progress=not cfg.quiet)
    else:
        enc, model, info = encode_held(model, tokenizer, task, tc, mc)
    loaded = time.perf_counter()
    if is_main() and out is not None:  # one process writes; the others read it once ready
        prepare_out_dir(out, "analyze", overwrite=cfg.overwrite)
    barrier()
    parts = decoder_parts(model)
    record = task_record(task, enc, tc.limit)
    # "exact": the partial readouts of runs made before --precision went keep their key
    key = fingerprint(dataclasses.asdict(info), record, __version__, torch.__version__, "exact")
    shape = (len(task.items), info.n_layers + 1, task.n_options)
    partial = on_main(PartialReadout, out, key, shape)  # process 0's, which it alone saves
    partial.save = partial.save and is_main()
    todo = np.flatnonzero(~partial.done).tolist()
    settings = {
        "max_tokens": cfg.max_tokens or default_max_tokens(mc.device),
        "progress": not cfg.quiet,
        "groups": subject_groups([task.items[i].subject for i in todo]),
    }
    if todo:
        rows = read_options(
            parts,
            [enc.input_ids[i] for i in todo],
            enc.options.ids,
            on_batch=lambda batch, logits: partial.update([todo[j] for j in batch], logits.numpy()),
            **settings,
        )
        partial.logits[todo], partial.done[todo] = rows.numpy(), True  # every process's rows
    read = time.perf_counter()
    logits = partial.logits
    gold = np.array([item.answer for item in task.items])
    metrics = item_metrics(logits, gold)
    stats = layer_stats(metrics, task.n_options, n_boot=cfg.n_boot, seed=cfg.seed)
    phases = detect_phases(
        metrics.correct, metrics.margin, task.n_options, n_boot=cfg.n_boot, seed=cfg.seed
    )
    frame = items_table(
        [it.item_id for it in task.items],
        [it.subject for it in task.items],
        gold,
        logits,
        metrics,
        [info.dtype] * len(task.items),
    )
    summary = build_summary(
        model=dataclasses.asdict(info),
        task=record,
        gold=gold,
        metrics=metrics,
        layers=stats,
        phases=phases,
        timing={
            "load_s": round(loaded - started, 3),
            "readout_s": round(read - loaded, 3),
            "items_resumed": len(task.items) - len(todo),
            "processes": processes,
            "communication_s": round(COMMUNICATION["seconds"], 3),
            "total_s": round(time.perf_counter() - started, 3),
        },
        settings=settings_record(cfg),
        version=__version__,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    result = Analysis(as_written(summary), table_as_written(frame), out)
    if out is not None and is_main():  # one process writes the run
        write_analysis(out, summary, frame, plots=cfg.plots)
        partial.clear()
    barrier()  # the run is on disk for every process
    return result


def write_analysis(out: Path, summary: Summary, frame: pd.DataFrame, *, plots: bool) -> None:
    """Write an analyze run into ``out``: its plots, then its records (summary.json last)."""
    if plots:
        from phaseprune.presentation.figures.png import write_plots  # loaded only when asked

        write_plots(summary, out / "plots")
        stamp_figures(summary, out / "plots")  # the report copies them while this stays true
    write_summary(out, summary, frame)  # summary.json last: marks the run complete
