"""``phaseprune export``: the pruned model of one step as a standard Hugging Face checkpoint.

The run's model is loaded again, the layers removed up to the requested step are dropped with
:func:`~phaseprune.surgery.without_layers`, and the view is saved with ``save_pretrained``
(safetensors) under a config from :func:`~phaseprune.surgery.export_config` (``num_hidden_layers``
and per-layer arrays synced), with the tokenizer. GGUF inputs are written in HF format. The
export is checked by reloading it and comparing its option logits on a few evaluation prompts
with the view's.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from phaseprune.errors import UsageError
from phaseprune.models import ModelSpec, load_model, load_tokenizer, resolve_model
from phaseprune.runs import load_trajectory


def removed_at(traj: dict, step: int) -> list[int]:
    """Original indices removed after ``step`` steps (0 = none)."""
    n = len(traj["steps"])
    if not 0 <= step <= n:
        raise UsageError(f"run has steps 0..{n}; --step {step} does not exist")
    return [k for s in traj["steps"][:step] for k in s["removed_layers"]]


def _spec(traj: dict) -> ModelSpec:
    m = traj["model"]
    spec = (
        resolve_model(m["name"])
        if not m.get("gguf_file")
        else ModelSpec(m["name"], m["path"], m["gguf_file"])
    )
    return spec


def run_export(run_dir: str, step: int, out: str, *, overwrite: bool = False) -> dict:
    """Export the pruned model of ``step``; return a small record of what was written."""
    from transformers import AutoModelForCausalLM

    from phaseprune.surgery import export_config, plain_checkpoint, without_layers

    traj = load_trajectory(run_dir)
    removed = removed_at(traj, step)
    out_dir = Path(out)
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise UsageError(f"--out {out} is not empty; pass --overwrite or another directory")
    spec = _spec(traj)
    tokenizer, _ = load_tokenizer(spec)
    model, info = load_model(spec, dtype=traj["model"]["dtype"], progress=False)
    if info.revision != traj["model"]["revision"] or info.n_layers != traj["n_layers"]:
        raise UsageError(
            f"the model at {spec.path} is not the one this run pruned (revision differs)"
        )
    probe = torch.tensor([tokenizer.encode("Answer:", add_special_tokens=False)])
    with torch.inference_mode(), without_layers(model, removed), plain_checkpoint(model):
        expected = model(probe).logits[0, -1]
        model.config = export_config(model, ())  # the view's config, already edited
        model.config.__dict__.pop("quantization_config", None)
        model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    reloaded = AutoModelForCausalLM.from_pretrained(out_dir, dtype=model.dtype).eval()
    with torch.inference_mode():
        got = reloaded(probe).logits[0, -1]
    diff = float((got - expected).abs().max())
    record = {
        "run": str(run_dir),
        "step": step,
        "removed_layers": removed,
        "num_hidden_layers": reloaded.config.num_hidden_layers,
        "max_abs_logit_diff": diff,
    }
    (out_dir / "phaseprune_export.json").write_text(json.dumps(record, indent=2) + "\n")
    if diff > 1e-3:
        raise RuntimeError(f"exported model differs from the pruned view by {diff:.2e} in logits")
    return record
