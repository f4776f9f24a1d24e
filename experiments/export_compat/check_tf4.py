r"""Does transformers 4 load phaseprune's exports as transformers 5 does? Not part of the tests.

How to run it (from the repository root; a throwaway venv holds transformers 4):

    python3 -m venv /tmp/tf4
    /tmp/tf4/bin/pip install torch 'transformers==4.57.*' safetensors numpy
    .venv/bin/phaseprune prune --model smollm2-135m --task mmlu --subjects marketing \\
        --strategy last --steps 1 --calib 4 --eval 8 --out /tmp/p1 --quiet --no-plots
    .venv/bin/phaseprune export /tmp/p1 --step 1 --out /tmp/e1
    .venv/bin/python experiments/export_compat/check_tf4.py --tf4-python /tmp/tf4/bin/python \\
        --export /tmp/e1

What it does. In this venv (transformers 5) it writes, as ``phaseprune export`` writes them
(layer 1 of 3 removed through ``surgery.without_layers`` / ``export_config``, saved, then
``portable.make_portable``), a tiny random model of every family of ``tests/tiny_models.py``
with RoPE settings that differ from transformers 4's defaults (base, partial rotary factor,
llama3/linear scaling, Gemma-3's two bases), and records transformers 5's logits (every
position) on fixed token ids. Each ``--export`` directory (a real export) is added, with
prompts tokenised by its own tokenizer in each version. As controls, copies without what
``make_portable`` wrote (the RoPE fields; for exports also the tokenizer class) are added: on
them transformers 4 should differ or fail, which shows each field is needed. Then the
transformers 4 interpreter loads every directory, computes the same logits (and token ids),
and the script prints the largest absolute difference per model.
Every array is saved as ``.npy`` under ``--work``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

TEXTS = [
    "Answer:",
    "The following are multiple choice questions (with answers) about marketing.\n\n"
    "Which of these is a channel?\nA. price\nB. retail store\nC. brand\nD. logo\nAnswer:",
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
]


# --------------------------------------------------------------------- both interpreters


def logits_of(model_dir: Path, ids: list[list[int]]) -> np.ndarray:
    """Logits at every position of each row, stacked (rows padded to one length with NaN)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    rows = []
    with torch.inference_mode():
        for row in ids:
            rows.append(model(torch.tensor([row])).logits[0].float().numpy())
    width = max(len(r) for r in rows)
    out = np.full((len(rows), width, rows[0].shape[-1]), np.nan, dtype=np.float32)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


def read(work: Path, tag: str) -> None:
    """Compute every model's logits (and token ids) in this interpreter, under ``work/tag``."""
    import transformers

    manifest = json.loads((work / "manifest.json").read_text())
    out = work / tag
    out.mkdir(exist_ok=True)
    status = {"transformers": transformers.__version__}
    for name, entry in manifest.items():
        model_dir = Path(entry["dir"])
        try:
            ids = entry.get("ids")
            if ids is None:  # tokenise with this version's reading of the export's tokenizer
                from transformers import AutoTokenizer

                tok = AutoTokenizer.from_pretrained(model_dir)
                ids = [tok(t, add_special_tokens=False)["input_ids"] for t in TEXTS]
                (out / f"{name}.ids.json").write_text(json.dumps(ids))
            np.save(out / f"{name}.npy", logits_of(model_dir, ids))
            status[name] = "ok"
        except Exception as err:  # the control is meant to fail: record how
            status[name] = f"{type(err).__name__}: {str(err).splitlines()[0][:160]}"
    (out / "status.json").write_text(json.dumps(status, indent=1))


# --------------------------------------------------------------------- transformers 5 only


def _rope_variant(case: str, config) -> None:
    """RoPE settings transformers 4's defaults would get wrong."""
    params = getattr(config, "rope_parameters", None)
    if not params:
        return
    if "full_attention" in params:  # Gemma-3: one base per layer type
        params["full_attention"]["rope_theta"] = 77777.0
        params["sliding_attention"]["rope_theta"] = 777.0
        if case.endswith("-linear"):
            params["full_attention"].update(rope_type="linear", factor=8.0)
        return
    params["rope_theta"] = 777.0
    if "partial_rotary_factor" in params:
        params["partial_rotary_factor"] = 0.5
    if case.endswith("-llama3"):
        params.update(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                      original_max_position_embeddings=8)  # fmt: skip
    if case.endswith("-linear"):
        params.update(rope_type="linear", factor=2.0)


def write_tiny(work: Path, case: str) -> dict:
    """A pruned tiny model written as ``phaseprune export`` writes it."""
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
    from tiny_models import CASES, VOCAB

    from phaseprune.model.portable import make_portable
    from phaseprune.model.surgery import export_config, plain_checkpoint, without_layers

    make_config, cls, tweak = CASES[case.removesuffix("-llama3").removesuffix("-linear")]
    config = make_config(3)
    _rope_variant(case, config)
    torch.manual_seed(0)
    model = cls(config)
    if tweak is not None:
        tweak(model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    model.float().eval()
    out = work / "models" / case
    with without_layers(model, [1]), plain_checkpoint(model):
        model.config = export_config(model, ())
        model.save_pretrained(out, safe_serialization=True)
    portability = make_portable(out, {"check": "tf4"})
    rng = np.random.default_rng(0)
    ids = [rng.integers(3, VOCAB, size=n).tolist() for n in (5, 12, 20)]
    return {"dir": str(out), "ids": ids, "requires": portability.requires,
            "fields": sorted(portability.written)}  # fmt: skip


def unportable_copy(model_dir: Path, work: Path, suffix: str, keys=(), tokenizer=False) -> Path:
    """``model_dir`` without the config ``keys`` (and the tokenizer class) make_portable wrote."""
    out = work / "models" / f"{model_dir.name}{suffix}"
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(model_dir, out)
    record = json.loads((out / "config.json").read_text())
    for key in keys:
        record.pop(key)
    (out / "config.json").write_text(json.dumps(record, indent=2))
    if tokenizer:
        record = json.loads((out / "tokenizer_config.json").read_text())
        record["tokenizer_class"] = "TokenizersBackend"
        (out / "tokenizer_config.json").write_text(json.dumps(record, indent=2))
    return out


def controls(name: str, entry: dict, work: Path, export: bool) -> dict:
    """Copies without each thing make_portable wrote: transformers 4 should misread them."""
    fields = entry["fields"]
    out = {}
    scaling = [k for k in fields if k == "rope_scaling"]
    for suffix, keys in (("-no-rope-fields", fields), ("-no-rope-scaling", scaling)):
        if keys:
            copy = unportable_copy(Path(entry["dir"]), work, suffix, keys)
            out[copy.name] = {**entry, "dir": str(copy), "control": True}
    if export:
        copy = unportable_copy(Path(entry["dir"]), work, "-backend-tokenizer", tokenizer=True)
        out[copy.name] = {**entry, "dir": str(copy), "control": True}
    return out


def compare(work: Path, manifest: dict) -> int:
    """Print the largest logit difference per model; 1 if any portable one differs."""
    new, old = work / "tf5", work / "tf4"
    status4 = json.loads((old / "status.json").read_text())
    print(f"transformers {json.loads((new / 'status.json').read_text())['transformers']} vs "
          f"{status4['transformers']}")  # fmt: skip
    bad = 0
    for name, entry in manifest.items():
        control = entry.get("control", False)
        if status4[name] != "ok":
            print(f"{name:34s} transformers 4 fails: {status4[name]}")
            bad += not control
            continue
        a, b = np.load(new / f"{name}.npy"), np.load(old / f"{name}.npy")
        same_ids = True
        if entry.get("ids") is None:
            ids = [(d / f"{name}.ids.json").read_text() for d in (new, old)]
            same_ids = ids[0] == ids[1]
        diff = float(np.nanmax(np.abs(a - b))) if a.shape == b.shape else float("inf")
        verdict = "ok" if diff < 1e-4 and same_ids else "DIFFERS"
        bad += verdict != "ok" and not control
        print(f"{name:34s} requires {entry.get('requires', '?'):7s} max |logit diff| "
              f"{diff:.2e}  token ids {'equal' if same_ids else 'DIFFER'}  {verdict}"
              f"{'  (control: without the portable fields)' if control else ''}")  # fmt: skip
    return 1 if bad else 0


CASES = ["llama", "llama-llama3", "mistral", "qwen2", "qwen2-sliding", "qwen2-linear", "qwen3",
         "gemma", "gemma2", "gemma3", "gemma3-pattern3", "gemma3-pattern3-linear", "phi3", "olmo",
         "olmo2", "gpt2", "gpt_neox", "opt", "falcon-new", "falcon-old-alibi"]  # fmt: skip


def main() -> int:
    """Write the models, read them in both versions, compare; exit 1 if a portable one differs."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tf4-python", help="interpreter of the transformers 4 venv")
    parser.add_argument("--export", action="append", default=[], help="a phaseprune export")
    parser.add_argument("--work", default="/tmp/export_compat")
    parser.add_argument("--read", help=argparse.SUPPRESS)  # run by each interpreter
    args = parser.parse_args()
    work = Path(args.work)
    if args.read:
        read(work, args.read)
        return 0
    shutil.rmtree(work, ignore_errors=True)
    (work / "models").mkdir(parents=True)
    manifest = {}
    for case in CASES:
        manifest[case] = write_tiny(work, case)
        manifest.update(controls(case, manifest[case], work, export=False))
    for export in map(Path, args.export):
        meta = json.loads((export / "config.json").read_text())["phaseprune"]
        manifest[export.name] = {"dir": str(export), "requires": meta["requires_transformers"],
                                 "fields": meta["transformers_4_fields"]}  # fmt: skip
        manifest.update(controls(export.name, manifest[export.name], work, export=True))
    (work / "manifest.json").write_text(json.dumps(manifest, indent=1))
    me = str(Path(__file__).resolve())
    subprocess.run([sys.executable, me, "--work", str(work), "--read", "tf5"], check=True)
    subprocess.run([args.tf4_python, me, "--work", str(work), "--read", "tf4"], check=True)
    return compare(work, manifest)


if __name__ == "__main__":
    sys.exit(main())
