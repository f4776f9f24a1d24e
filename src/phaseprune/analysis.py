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
import torch

from phaseprune import __version__
from phaseprune.core.metrics import item_metrics, layer_stats
from phaseprune.core.phases import detect_phases
from phaseprune.engine.precision import SAFETY, read_options_fast, sample_size
from phaseprune.engine.readout import read_options
from phaseprune.model.arch import decoder_parts
from phaseprune.model.distributed import COMMUNICATION, barrier, is_main, join, on_main
from phaseprune.model.load import default_max_tokens, resolve_model
from phaseprune.presentation.figures.stamp import stamp_figures
from phaseprune.runs.config import AnalyzeConfig
from phaseprune.runs.files import write_summary
from phaseprune.runs.loading import (
    check_model_config,
    encode_and_load,
    encode_held,
    fast_copy,
    subject_groups,
    task_record,
)
from phaseprune.runs.outdir import (
    PartialReadout,
    check_out_dir,
    fingerprint,
    prepare_out_dir,
)
from phaseprune.runs.records import build_summary, items_table
from phaseprune.tasks import load_task, round_robin


def fast_record(exact: np.ndarray, fast) -> dict:
    """``summary["precision"]`` of a fast run (the bound of this invocation's readout)."""
    return {
        "mode": "fast",
        "forward": "bfloat16",
        "decided_by": "float32",
        "safety": SAFETY,
        "sample_items": None if fast is None else len(fast.sample),
        "bound": None if fast is None else [round(float(b), 6) for b in fast.bound],
        "measured_error": None if fast is None else [round(float(b), 6) for b in fast.measured],
        "items_float32": int(exact.sum()),
        "items_bfloat16": int((~exact).sum()),
    }


def run_analyze(cfg: AnalyzeConfig, *, model=None, tokenizer=None, task=None) -> dict:
    """Run the analysis described by ``cfg`` and write it to ``cfg.out``; return the summary.

    ``model`` and ``tokenizer`` (objects the caller holds) replace loading ``cfg.model.model``;
    ``task`` (a :class:`~phaseprune.tasks.TaskData`) replaces loading ``cfg.task.task``.
    """
    started = time.perf_counter()
    out = Path(cfg.out)
    tc, mc = cfg.task, cfg.model
    check_model_config(mc)
    processes = join(mc.device)  # launched by torchrun / accelerate: each reads a shard
    if task is None:
        task = load_task(
            tc.task,
            subjects=tc.subjects or None,
            data_dir=tc.data_dir,
            shots=tc.shots,
            limit=tc.limit,
            lm_eval_include=tc.lm_eval_include,
        )
    spec = resolve_model(mc.model) if model is None else None
    check_out_dir(out, "analyze", overwrite=cfg.overwrite)
    if model is None:
        enc, model, info = encode_and_load(spec, task, tc, mc, progress=not cfg.quiet)
    else:
        enc, model, info = encode_held(model, tokenizer, task, tc, mc)
    model16 = fast_copy(model, mc)
    loaded = time.perf_counter()
    if is_main():  # one process writes the run; the others read it only once it is ready
        prepare_out_dir(out, "analyze", overwrite=cfg.overwrite)
    barrier()
    parts = decoder_parts(model)
    record = task_record(task, enc, tc.limit)
    mode = "exact" if model16 is None else "fast"
    key = fingerprint(dataclasses.asdict(info), record, __version__, torch.__version__, mode)
    shape = (len(task.items), info.n_layers + 1, task.n_options)
    partial = on_main(PartialReadout, out, key, shape)  # process 0's, which it alone saves
    partial.save = is_main()
    todo = np.flatnonzero(~partial.done).tolist()
    settings = {
        "max_tokens": cfg.max_tokens or default_max_tokens(mc.device),
        "progress": not cfg.quiet,
        "groups": subject_groups([task.items[i].subject for i in todo]),
    }
    fast = None
    if todo and model16 is None:
        rows = read_options(
            parts,
            [enc.input_ids[i] for i in todo],
            enc.options.ids,
            on_batch=lambda batch, logits: partial.update([todo[j] for j in batch], logits.numpy()),
            **settings,
        )
        partial.logits[todo], partial.done[todo] = rows.numpy(), True  # every process's rows
    elif todo:
        fast = read_options_fast(
            parts,
            decoder_parts(model16),
            [enc.input_ids[i] for i in todo],
            enc.options.ids,
            sample=round_robin([task.items[i].subject for i in todo])[: sample_size(len(todo))],
            on_rows=lambda rows, rows_logits, exact: partial.update(
                [todo[j] for j in rows], rows_logits, exact
            ),
            **settings,
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
        [it.item_id for it in task.items],
        [it.subject for it in task.items],
        gold,
        logits,
        metrics,
        np.where(partial.exact, info.dtype, "bfloat16"),
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
        settings=dataclasses.asdict(cfg),
        version=__version__,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        precision=None if model16 is None else fast_record(partial.exact, fast),
    )
    if not is_main():
        barrier()  # the run is on disk once process 0 passes this
        return summary
    if cfg.plots:
        from phaseprune.presentation.figures.png import (
            write_plots,  # presentation, loaded only when asked for
        )

        write_plots(summary, out / "plots")
        stamp_figures(summary, out / "plots")  # the report copies them while this stays true
    write_summary(out, summary, frame)  # summary.json last: marks the run complete
    partial.clear()
    barrier()
    return summary
