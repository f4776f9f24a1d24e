"""A pruning run's healing: its heal prompts, its maps on disk, and their replay on resume.

Each healed step's map is written as ``OUT/heal/step_NNN.npy`` (float64, atomically) and its
sha256 recorded in the step (``heal.map_sha256``), so ``--resume`` and ``export`` rebuild the
healed model bit for bit without refitting; a map file that is missing is refitted (the fit
is deterministic), one that differs from its record is refused.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import time
from pathlib import Path

import numpy as np
import torch

from phaseprune.core.errors import UsageError
from phaseprune.core.items import subject_groups
from phaseprune.core.objectives import candidate_metrics, objective_key
from phaseprune.core.progress import stage
from phaseprune.core.prompts import build_prompts
from phaseprune.engine.encoding import encode_prompts
from phaseprune.engine.healing import RIDGES, HealData, HealFit, HealSite, LinearHealer, maps_after
from phaseprune.model.arch import context_window
from phaseprune.model.distributed import is_main
from phaseprune.model.load import load_tokenizer
from phaseprune.runs.outdir import atomic_write_bytes
from phaseprune.strategies.context import heal_fit_key
from phaseprune.strategies.search import calib_reader
from phaseprune.tasks import load_task

HEAL_DIR = "heal"


def heal_data(task, input_ids: list[list[int]], calib: list[int], extra: list[int]) -> HealData:
    """The default heal prompts: the calibration items', then ``extra`` items' (never eval)."""
    rows = [*calib, *extra]
    return HealData(
        [list(input_ids[i]) for i in rows],
        subject_groups([task.items[i].subject for i in rows]),
        {
            "kind": "task prompts",
            "calib_items": len(calib),
            "extra_items": len(extra),
            "extra_item_ids": [task.items[i].item_id for i in extra],
        },  # fmt: skip
    )


def judged(ctx, removed: list[int], fit: HealFit) -> HealFit:
    """``fit``, or no map where the calibration readout says the map does not help.

    The map minimises the squared error of every token's hidden state; what the model must
    keep is its decision. So the healed model (without ``removed``) and the same model with
    that layer left unhealed both answer the calibration items, and the map is kept unless
    the unhealed one scores better by the run's objective (a tie keeps it). The scores go in
    ``fit.record["judged"]``.
    """
    if fit.map is None:
        return fit
    plain = HealFit(fit.site, None, fit.record)
    # the calibration layer cache follows the run: the unhealed variant is kept as its state,
    # the healed one a probe resumed from the healed layer (a map changes its heal tag)
    reader, scores = calib_reader(ctx), {}
    for name, candidate in (("unhealed", plain), ("healed", fit)):
        with ctx.heal.trying(candidate):
            logits = (reader if name == "unhealed" else reader.probe)(removed)[:, -1].numpy()
        scores[name] = objective_key(
            ctx.objective, candidate_metrics(logits, ctx.calib_gold, ctx.ref_logits)
        )
    keep = scores["healed"] >= scores["unhealed"]
    record = fit.record | {
        "judged": {
            "objective": ctx.objective,
            "healed": scores["healed"][0],
            "unhealed": scores["unhealed"][0],
            "kept": bool(keep),
        }
    }
    if not keep:
        record.pop("map_sha256", None)
    return HealFit(fit.site, fit.map if keep else None, record)


def heal_key(cfg, healer: LinearHealer | None) -> list:
    """What a healed run adds to its score store's key (nothing when unhealed).

    Everything besides the removal order that decides which maps the healed model holds: the
    heal method and timing, the heal prompts, the ridge grid, the objective that judges each
    map (:func:`judged`: a map kept under ``kl`` may be refused under ``accuracy``, so two
    runs removing the same layers in the same order can hold different models) and the block
    size (one map per removed block: the same layers removed as one block or one by one are
    other models). ``cfg.objective`` is the resolved one (``PruneRun`` resolves it first).
    """
    if healer is None:
        return []
    return [(cfg.heal, cfg.heal_when, healer.data.record(), list(RIDGES), cfg.objective,
             cfg.block_size)]  # fmt: skip


def heal_step(
    run, step: int, removed: list[int], layers: tuple[int, ...], timing: dict
) -> dict | None:
    """Fit (or take the search's) map for removing ``layers``, fold it in, keep it on disk.

    ``run`` is prune's ``PruneRun``; returns the step's ``heal`` record (None unhealed). The
    seconds it took (fit, judge, fold) go into ``timing`` as ``step_N_heal_s``.
    """
    if run.healer is None:
        return None
    started = time.perf_counter()
    key = layers[0] if len(layers) == 1 else tuple(layers)
    fit = run.ctx.cache.heal_fits.get(heal_fit_key(run.healer, removed, key))
    run.ctx.cache.heal_fits.clear()
    with stage("heal"):
        if fit is None:
            fit = run.healer.fit(removed, [key])[key]
        fit = judged(run.ctx, [*removed, *layers], fit)
    run.healer.apply([*removed, *layers], fit)
    if is_main():
        save_map(run.out, step, fit)
    timing[f"step_{step}_heal_s"] = round(time.perf_counter() - started, 2)
    return fit.record


def healer_of(run, task, input_ids, tokenizer_or_spec, cache_budget):
    """The run's :class:`LinearHealer` (None without ``--heal linear``).

    ``run`` is prune's ``PruneRun``; ``tokenizer_or_spec`` is ``(tokenizer, spec)``: the held
    model's tokenizer, or the model to load one from (only ``--heal-data`` needs it). The
    healer may keep the unpruned model's states on the heal prompts (every fit's targets) in
    half of ``cache_budget``.
    """
    cfg = run.cfg
    if cfg.heal != "linear":
        return None
    if cfg.heal_data:
        tokenizer, spec = tokenizer_or_spec
        if tokenizer is None:
            tokenizer = load_tokenizer(spec, trust_remote_code=cfg.model.trust_remote_code)[0]
        evaluation = {task.items[i].item_id for i in run.eval}
        data = user_heal_data(cfg, tokenizer, run.model.config, task.name, evaluation)
    else:
        data = heal_data(task, input_ids, run.calib, run.extra)
    half = None if cache_budget is None else cache_budget // 2
    return LinearHealer(run.model, data, max_tokens=run.max_tokens, target_budget=half)


def user_heal_data(cfg, tokenizer, config, task_name: str, evaluation: set[str]) -> HealData:
    """``--heal-data``: a task's prompts, or ``text:FILE``.

    A task's evaluation items are left out when it is the run's own task; ``text:FILE`` reads
    a ``text`` field per line of a ``.jsonl``, else one document a line.
    """
    spec, tc = cfg.heal_data, cfg.task
    window = context_window(config) or 2048
    if spec.startswith("text:"):
        path = Path(spec.removeprefix("text:"))
        if not path.is_file():
            raise UsageError(f"--heal-data {spec}: {path} is not a file")
        lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        try:
            docs = (
                [json.loads(line)["text"] for line in lines] if path.suffix == ".jsonl" else lines
            )
        except (KeyError, TypeError, json.JSONDecodeError) as err:
            raise UsageError(
                f"--heal-data {spec}: every line of a .jsonl must be an object with a 'text' "
                f"field ({type(err).__name__}: {err})"
            ) from None
        rows = [tokenizer(d, add_special_tokens=False)["input_ids"][:window] for d in docs]
        rows = [r for r in rows if len(r) > 1]
        return HealData(rows, None, {"kind": "text", "source": str(path), "documents": len(rows)})
    other = load_task(spec, data_dir=tc.data_dir, shots=tc.shots, limit=None)
    items = [it for it in other.items if other.name != task_name or it.item_id not in evaluation]
    dropped = len(other.items) - len(items)
    other = dataclasses.replace(other, items=items)
    enc = encode_prompts(tokenizer, build_prompts(other), other.n_options,
                         family=config.model_type, chat=tc.chat, add_bos=tc.bos)  # fmt: skip
    rows = [row[:window] for row in enc.input_ids]
    return HealData(rows, subject_groups([it.subject for it in items]),
                    {"kind": "task prompts", "source": spec, "items": len(items),
                     "evaluation_items_left_out": dropped})  # fmt: skip


def map_path(out: Path, step: int) -> Path:
    """Where step ``step``'s map is kept."""
    return out / HEAL_DIR / f"step_{step:03d}.npy"


def save_map(out: Path | None, step: int, fit: HealFit) -> None:
    """Write the step's map (nothing when the run is in memory or the fit kept no map)."""
    if out is None or fit.map is None:
        return
    buffer = io.BytesIO()
    np.save(buffer, fit.map.numpy())
    path = map_path(out, step)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buffer.getvalue())


def load_fit(out: Path, record: dict) -> HealFit | None:
    """The fit of a completed step from its record and map file; None if the file is missing.

    Raises:
        UsageError: if the file is not the map the record names.
    """
    heal = record.get("heal")
    if heal is None:
        return None
    site = HealSite(heal["layer"], heal["boundary"], ())
    if heal.get("map_sha256") is None:
        return HealFit(site, None, heal)
    path = map_path(out, record["step"])
    if not path.exists():
        return None
    t = torch.from_numpy(np.load(path))
    if hashlib.sha256(t.numpy().tobytes()).hexdigest() != heal["map_sha256"]:
        raise UsageError(
            f"{path} is not the map step {record['step']} recorded (sha256 differs): "
            "restore it, or delete it to have it refitted"
        )
    return HealFit(site, t, heal)


def replay(healer: LinearHealer, out: Path | None, steps: list[dict]) -> None:
    """Bring the model to the healed state after the completed ``steps`` (resume)."""
    removed: list[int] = []
    for record in steps:
        fit = load_fit(out, record) if out is not None else None
        block = record["removed_layers"]
        if fit is None and record.get("heal") is not None:
            key = block[0] if len(block) == 1 else tuple(block)
            fit = healer.fit(removed, [key])[key]
            save_map(out, record["step"], fit)
        removed = [*removed, *block]
        healer.apply(removed, fit)


def maps_at(out: Path, steps: list[dict]) -> dict[int, torch.Tensor]:
    """The maps the healed model holds after ``steps`` (original layer -> map), from disk.

    Raises:
        UsageError: if a step kept a map whose file is missing or not the recorded one.
    """
    maps: dict[int, torch.Tensor] = {}
    for record in steps:
        fit = load_fit(out, record)
        if fit is None and record.get("heal") is not None:
            raise UsageError(
                f"step {record['step']}'s healing map {map_path(out, record['step'])} is missing: "
                f"run prune --resume on {out} to refit it"
            )
        maps = maps_after(maps, record["removed_layers"], fit)
    return maps


def unhealed_record(readout: dict) -> dict:
    """What the step's evaluation readout would be without any map (the compact part)."""
    keep = ("eval_accuracy", "eval_accuracy_ci", "transition_layer", "transition_ci", "eval_picks")
    out = {k: readout[k] for k in keep}
    out["mean_margin"] = round(float(np.mean(readout["eval_margins"])), 6)
    return out
