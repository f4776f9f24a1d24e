"""``phaseprune analyze``: load, prompt, read out every layer, measure, find phases, write.

This is the one place that wires the pure core (readout, metrics, phases) to files and
models; it takes a typed :class:`~phaseprune.config.AnalyzeConfig` and returns the summary.
"""

from __future__ import annotations

import dataclasses
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from phaseprune import __version__
from phaseprune.arch import decoder_parts
from phaseprune.config import AnalyzeConfig
from phaseprune.loading import encode_and_load, subject_groups, task_record
from phaseprune.metrics import item_metrics, layer_stats
from phaseprune.models import default_max_tokens, resolve_model
from phaseprune.phases import detect_phases
from phaseprune.readout import read_options
from phaseprune.records import build_summary, items_table
from phaseprune.runio import (
    PartialReadout,
    check_out_dir,
    fingerprint,
    prepare_out_dir,
    stamp_figures,
)
from phaseprune.runs import write_summary
from phaseprune.tasks import load_task


def run_analyze(cfg: AnalyzeConfig) -> dict:
    """Run the analysis described by ``cfg`` and write it to ``cfg.out``; return the summary."""
    started = time.perf_counter()
    out = Path(cfg.out)
    tc, mc = cfg.task, cfg.model
    task = load_task(
        tc.task, subjects=tc.subjects or None, data_dir=tc.data_dir, shots=tc.shots, limit=tc.limit
    )
    spec = resolve_model(mc.model)
    check_out_dir(out, "analyze", overwrite=cfg.overwrite)
    enc, model, info = encode_and_load(spec, task, tc, mc, progress=not cfg.quiet)
    loaded = time.perf_counter()
    prepare_out_dir(out, "analyze", overwrite=cfg.overwrite)
    parts = decoder_parts(model)
    record = task_record(task, enc, tc.limit)
    key = fingerprint(dataclasses.asdict(info), record, __version__, torch.__version__)
    shape = (len(task.items), info.n_layers + 1, task.n_options)
    partial = PartialReadout(out, key, shape)
    todo = np.flatnonzero(~partial.done).tolist()
    if todo:
        read_options(
            parts,
            [enc.input_ids[i] for i in todo],
            enc.options.ids,
            max_tokens=cfg.max_tokens or default_max_tokens(mc.device),
            progress=not cfg.quiet,
            on_batch=lambda batch, logits: partial.update([todo[j] for j in batch], logits.numpy()),
            groups=subject_groups([task.items[i].subject for i in todo]),
        )
    read = time.perf_counter()
    logits = partial.logits
    gold = np.array([item.answer for item in task.items])
    metrics = item_metrics(logits, gold)
    stats = layer_stats(metrics, task.n_options, n_boot=cfg.n_boot, seed=cfg.seed)
    phases = detect_phases(
        metrics.correct, metrics.margin, task.n_options, n_boot=cfg.n_boot, seed=cfg.seed
    )
    frame = items_table(
        [it.item_id for it in task.items], [it.subject for it in task.items], gold, logits, metrics
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
            "total_s": round(time.perf_counter() - started, 3),
        },
        settings=dataclasses.asdict(cfg),
        version=__version__,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    if cfg.plots:
        from phaseprune.figures.png import write_plots  # presentation, loaded only when asked for

        write_plots(summary, out / "plots")
        stamp_figures(summary, out / "plots")  # the report copies them while this stays true
    write_summary(out, summary, frame)  # summary.json last: marks the run complete
    partial.clear()
    return summary
