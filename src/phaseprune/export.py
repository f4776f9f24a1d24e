"""``phaseprune export``: the pruned model of one step as a standard Hugging Face checkpoint.

The run's model is loaded again and refused if its weights are not the run's (the sha256 of a
local checkpoint's weight files, a hub model's snapshot commit). The layers removed up to the
requested step are dropped with :func:`~phaseprune.model.surgery.without_layers`, and the view is
saved with ``save_pretrained`` (safetensors) under a config from
:func:`~phaseprune.model.surgery.export_config` (``num_hidden_layers`` and per-layer arrays
synced), with the tokenizer. GGUF inputs are written in HF format.
:func:`~phaseprune.model.portable.make_portable` then adds what transformers 4 needs to read the
config and tokenizer as transformers 5 does (or records that the export needs transformers 5),
and ``config.json`` gets a ``phaseprune`` entry naming the base model, its hash and the
transformers version needed.

The export is checked by reloading it and comparing its last-position logits, on the first
:data:`CHECK_PROMPTS` evaluation prompts of the run (rebuilt from the run's task settings),
with the view's. A model card (``README.md``, :mod:`phaseprune.presentation.model_card`) is
written last.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path

import torch

from phaseprune import __version__
from phaseprune.core.errors import UsageError, first_line
from phaseprune.core.prompts import build_prompts
from phaseprune.engine.encoding import encode_prompts
from phaseprune.model.healing import check_model, healed
from phaseprune.model.identity import MEMORY, tensors_sha256
from phaseprune.model.load import (
    ModelSpec,
    load_model,
    load_tokenizer,
    model_change,
    resolve_model,
    with_revision,
)
from phaseprune.model.portable import make_portable
from phaseprune.presentation.model_card import model_card
from phaseprune.runs.files import load_trajectory
from phaseprune.runs.heal_run import maps_at
from phaseprune.runs.resume import config_of
from phaseprune.tasks import load_task

CHECK_PROMPTS = 4
"""Evaluation prompts the reloaded export is compared on."""

_IDENTITY = ("weights_sha256", "revision", "architecture", "n_layers")
HEALED_DIR = "healed"
"""Where ``export --heal linear`` heals an unhealed run's removals, inside that run."""


def removed_at(traj: dict, step: int) -> list[int]:
    """Original indices removed after ``step`` steps (0 = none)."""
    n = len(traj["steps"])
    if not 0 <= step <= n:
        raise UsageError(f"run has steps 0..{n}; --step {step} does not exist")
    return [k for s in traj["steps"][:step] for k in s["removed_layers"]]


def _spec(traj: dict) -> ModelSpec:
    """The run's model; a hub model at the snapshot commit the run recorded."""
    m = traj["model"]
    if m.get("gguf_file"):
        return ModelSpec(m["name"], m["path"], m["gguf_file"])
    spec = resolve_model(m["name"])
    return spec if spec.local else with_revision(spec, m.get("revision"))


def check_identity(traj: dict, now: dict, where: str) -> None:
    """Refuse a model whose weights (or revision, depth) are not those the run recorded.

    A run recorded before weights were hashed cannot be checked: a warning says so.
    """
    then = {k: traj["model"].get(k) for k in _IDENTITY}
    now = {k: now.get(k) for k in _IDENTITY}
    if then["weights_sha256"] is None and now["weights_sha256"] is not None:
        warnings.warn(
            f"{where}: the run records no weights hash (an older phaseprune made it), so "
            "nothing checks that these weights are the ones it pruned",
            stacklevel=3,
        )
        now["weights_sha256"] = None
    changed = model_change(then, now)
    if changed:
        raise UsageError(
            f"the model at {where} is not the one this run pruned: other {changed}; export "
            "from the checkpoint the run was made with, or prune this one again"
        )


def _export_model(traj: dict, model, tokenizer):
    """``(model, tokenizer, spec)``: the held model (checked; spec None), else reloaded."""
    recorded = str(traj["model"].get("weights_sha256"))
    if model is not None:
        if tokenizer is None:
            raise UsageError("a model passed as an object needs its tokenizer too: pass tokenizer")
        now = MEMORY + tensors_sha256(model)
        if now != recorded:
            raise UsageError(
                "the model passed is not the one this run pruned (its tensors' sha256 differs "
                f"from the run's {recorded[:19]}...): pass that model, unchanged"
            )
        return model.eval().requires_grad_(False), tokenizer, None
    if recorded.startswith(MEMORY):
        raise UsageError(
            "this run pruned a model held in memory (the Python API), whose weights no file "
            "holds: export it from Python, phaseprune.export_checkpoint(run, step, out, "
            "model=model, tokenizer=tokenizer)"
        )
    spec = _spec(traj)
    tokenizer, _ = load_tokenizer(spec)
    model, info = load_model(spec, dtype=traj["model"]["dtype"], progress=False)
    check_identity(traj, dataclasses.asdict(info), spec.path)
    return model, tokenizer, spec


def check_prompts(traj: dict, tokenizer, n: int = CHECK_PROMPTS) -> tuple[list[list[int]], list]:
    """Token ids of the run's first ``n`` evaluation prompts, and their item ids.

    The task is loaded as the run loaded it (its settings, ``--calib`` + ``--eval`` items).
    When that fails (the data moved, the hub is out of reach) a warning says so and the single
    prompt ``Answer:`` stands in.
    """
    settings = traj["settings"]
    tc = settings["task"]
    extra = {"lm_eval_include": tc["lm_eval_include"]} if tc.get("lm_eval_include") else {}
    try:
        task = load_task(
            tc["task"],
            subjects=tuple(tc["subjects"]) or None,
            data_dir=tc["data_dir"],
            shots=tc["shots"],
            limit=settings["calib"] + settings["eval"],
            **extra,
        )
        index = {it.item_id: i for i, it in enumerate(task.items)}
        wanted = [i for i in traj["eval_items"][:n] if i in index]
        if not wanted:
            raise UsageError("none of the run's evaluation items is in the task now")
        prompts = build_prompts(task)  # every item's, once
        enc = encode_prompts(
            tokenizer,
            [prompts[index[i]] for i in wanted],
            task.n_options,
            family=traj["model"]["family"],
            chat=tc["chat"],
            add_bos=tc["bos"],
        )
    except (UsageError, OSError, ValueError) as err:
        warnings.warn(
            f"cannot rebuild the run's evaluation prompts ({first_line(err)}): the reload is "
            "checked on the prompt 'Answer:' only",
            stacklevel=2,
        )
        return [tokenizer.encode("Answer:", add_special_tokens=False)], []
    return enc.input_ids, wanted


def _last_logits(model, prompts: list[list[int]]) -> list[torch.Tensor]:
    """The last position's logits of each prompt, one forward each (no padding)."""
    with torch.inference_mode():
        return [model(torch.tensor([ids])).logits[0, -1].float() for ids in prompts]


def _metadata(traj: dict, step: int, removed: list[int], run_dir: str) -> dict:
    """The ``phaseprune`` entry of the export's ``config.json``."""
    m = traj["model"]
    return {
        "version": __version__,
        "base_model": m["name"],
        "base_weights_sha256": m.get("weights_sha256"),
        "base_revision": m.get("revision"),
        "base_n_layers": traj["n_layers"],
        "removed_layers": removed,
        "strategy": traj["strategy"],
        "step": step,
        "run": str(run_dir),
    }


def healed_replay(
    run_dir: str, traj: dict, step: int, *, quiet: bool = False, model=None, tokenizer=None
) -> tuple[str, int]:
    """An unhealed run's removals, healed: where that run is, and its step of ``step``'s removals.

    ``--strategy order`` over the run's removals (one a step, a block's layers too), with
    ``--heal linear`` and the run's other settings (items, objective, which judges each map), is
    run or resumed in ``RUN/healed/`` up to the removals of ``step``; a later export of a deeper
    step extends it. The healed accuracy the model card states is measured there.
    """
    from phaseprune.pruning import run_prune

    order = removed_at(traj, len(traj["steps"]))
    upto = len(removed_at(traj, step))
    out = Path(run_dir) / HEALED_DIR
    cfg = dataclasses.replace(
        config_of(traj["settings"]), strategy="order", order=tuple(order), steps=upto,
        block_size=1, heal="linear", out=str(out), resume=(out / "trajectory.json").exists(),
        overwrite=False, quiet=quiet, log_json=False, plots=False, score_cache=None,
        stop_at_collapse=False, min_accuracy=None, lm_eval_tasks=(), lm_eval_steps=(),
    )  # fmt: skip
    run_prune(cfg, model=model, tokenizer=tokenizer)
    return str(out), upto


def run_export(
    run_dir: str,
    step: int,
    out: str,
    *,
    overwrite: bool = False,
    heal: str | None = None,
    model=None,
    tokenizer=None,
) -> dict:
    """Export the pruned model of ``step``; return a small record of what was written.

    ``heal="linear"`` on an unhealed run exports its removals healed (:func:`healed_replay`);
    None (or a healed run) exports the run as it was made. ``model`` and ``tokenizer``: the
    model a run made through the Python API pruned, held by the caller (its weights must be
    the run's: :func:`~phaseprune.model.identity.tensors_sha256`); a run made on a held model
    cannot be exported without it.
    """
    import transformers
    from transformers import AutoModelForCausalLM

    from phaseprune.model.surgery import export_config, plain_checkpoint, without_layers

    traj = load_trajectory(run_dir, rerun=True)  # a --precision fast run is refused
    removed = removed_at(traj, step)
    out_dir = Path(out)
    inside = Path(run_dir).resolve() in (out_dir.resolve(), *out_dir.resolve().parents)
    if inside or any((out_dir / name).exists() for name in ("trajectory.json", "summary.json")):
        raise UsageError(
            f"--out {out} is {'inside the run directory' if inside else 'a run directory'}: "
            "a checkpoint there would mix with the run's records; pass another --out"
        )
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise UsageError(f"--out {out} is not empty; pass --overwrite or another directory")
    if heal == "linear" and traj["settings"].get("heal", "none") == "none" and removed:
        source = f"{run_dir} ({traj['strategy']}, step {step})"
        run_dir, step = healed_replay(run_dir, traj, step, model=model, tokenizer=tokenizer)
        traj = load_trajectory(run_dir, rerun=True)
        traj["healed_replay_of"] = source
    model, tokenizer, spec = _export_model(traj, model, tokenizer)
    prompts, items = check_prompts(traj, tokenizer)
    maps = maps_at(Path(run_dir), traj["steps"][:step])  # a healed run's maps, else none
    modules = check_model(model) if maps else {}
    with healed(modules, maps), without_layers(model, removed), plain_checkpoint(model):
        expected = _last_logits(model, prompts)
        model.config = export_config(model, ())  # the view's config, already edited
        model.config.__dict__.pop("quantization_config", None)
        model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    portability = make_portable(out_dir, _metadata(traj, step, removed, run_dir))
    reloaded = AutoModelForCausalLM.from_pretrained(out_dir, dtype=model.dtype).eval()
    got = _last_logits(reloaded, prompts)
    diff = max(float((g - e).abs().max()) for g, e in zip(got, expected, strict=True))
    record = {
        "run": str(run_dir),
        "base_hub_id": None if spec is None or spec.local else spec.name,
        "step": step,
        "removed_layers": removed,
        "healed_layers": sorted(maps),
        "healed_replay_of": traj.get("healed_replay_of"),
        "num_hidden_layers": reloaded.config.num_hidden_layers,
        "max_abs_logit_diff": diff,
        "check_prompts": len(prompts),
        "check_items": items,
        "phaseprune_version": __version__,
        "transformers_version": transformers.__version__,
        "requires_transformers": portability.requires,
        "transformers_4_cannot_read": portability.reasons,
    }
    (out_dir / "phaseprune_export.json").write_text(json.dumps(record, indent=2) + "\n")
    if diff > 1e-3:
        raise RuntimeError(f"exported model differs from the pruned view by {diff:.2e} in logits")
    (out_dir / "README.md").write_text(model_card(traj, record, str(out_dir)))
    return record
