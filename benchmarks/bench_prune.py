"""Benchmark: phaseprune's Iterative Pruning against a naive reference, same items, one run.

    .venv/bin/python benchmarks/bench_prune.py --model smollm2-135m --task mmlu
        --data-dir ../shared/data/mmlu --subjects high_school_geography --shots 5
        --calib 64 --steps 3

Two sides, each in its own child process (so each peak RSS is its own) on the same model
file and the same calibration items, each reporting the layers it removed: ``phaseprune``
(float32), ``naive`` (a plain full forward per candidate, float32) and ``bfloat16``
(phaseprune's search on the model cast to bfloat16, as ``--dtype bfloat16`` runs it).
``--sides`` picks which run. Model loading is excluded from the wall times. The last line
printed is one JSON object: wall seconds of each side, the speedup (naive / phaseprune),
whether naive's decisions are identical to phaseprune's (``identical_decisions``; for the
bfloat16 side ``bfloat16_speedup`` and ``bfloat16_identical_decisions``), peak memory of each,
and phaseprune's measured GFLOP/s against a FLOP lower bound.

FLOP lower bound, per step with L remaining layers, P = 2 x (parameters of one decoder layer):
one pass over all calibration tokens to cache every layer's input, then for the candidate at
position p the L-1-p layers after it over the item tokens, with each subject's shared few-shot
prefix counted once per candidate instead of once per item; attention's sequence-length terms
and the option-row readout are left out (they only add), so the bound is an underestimate.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SIDES = ("phaseprune", "naive", "bfloat16")


def _setup(args):
    import numpy as np

    from phaseprune.core.prompts import build_prompts, split_prefix
    from phaseprune.engine.encoding import encode_prompts
    from phaseprune.model.load import load_model, load_tokenizer, resolve_model
    from phaseprune.tasks import load_task

    subjects = args.subjects.split(",") if args.subjects else None
    task = load_task(
        args.task, subjects=subjects, data_dir=args.data_dir, shots=args.shots, limit=args.calib
    )
    spec = resolve_model(args.model)
    tokenizer, config = load_tokenizer(spec)
    enc = encode_prompts(tokenizer, build_prompts(task), task.n_options, family=config.model_type)
    model, info = load_model(spec, progress=False)
    if args.layers:
        info = _first_layers(model, info, args.layers)
    gold = np.array([it.answer for it in task.items])
    # tokens of each subject's shared prefix (description + exemplars), tokenised alone
    prefix_tokens = {}
    for (prefix, _), item in zip(split_prefix(task), task.items, strict=True):
        if item.subject not in prefix_tokens:
            prefix_tokens[item.subject] = len(
                tokenizer(prefix, add_special_tokens=False)["input_ids"]
            )
    return task, enc, model, info, gold, prefix_tokens


def _first_layers(model, info, n: int):
    """Keep only the first ``n`` decoder layers (for measuring how cost grows with depth)."""
    import dataclasses

    from phaseprune.model.arch import decoder_parts

    parts = decoder_parts(model)
    if not 1 <= n <= len(parts.layers):
        raise SystemExit(f"--layers {n}: the model has {len(parts.layers)}")
    del parts.layers[n:]
    model.config.num_hidden_layers = n
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = model.config.layer_types[:n]
    return dataclasses.replace(info, n_layers=n)


def flop_lower_bound(task, enc, model, n_layers: int, steps: int, prefix_tokens: dict) -> float:
    """The FLOP count described in the module docstring, in GFLOP."""
    from phaseprune.model.arch import decoder_parts

    per_token_layer = 2 * sum(p.numel() for p in decoder_parts(model).layers[0].parameters())
    total = sum(len(r) for r in enc.input_ids)
    shared = sum(prefix_tokens.values())
    own = total - sum(prefix_tokens[it.subject] for it in task.items)  # item tokens only
    flops = 0.0
    for step in range(steps):
        remaining = n_layers - step
        flops += remaining * (shared + own) * per_token_layer  # caching pass, prefix once
        for p in range(remaining):
            flops += (remaining - 1 - p) * (shared + own) * per_token_layer
    return flops / 1e9


def child(args) -> dict:
    """Run one side and return its record."""
    task, enc, model, info, gold, prefix_tokens = _setup(args)
    if args.which == "bfloat16":
        import torch

        model.to(torch.bfloat16)
    start = time.perf_counter()
    if args.which == "naive":
        sys.path.insert(0, str(HERE))
        from naive_prune import naive_iterative

        removed = naive_iterative(
            model, info.n_layers, enc.input_ids, enc.options.ids, gold, args.steps
        )
    else:
        from phaseprune.core.items import subject_groups
        from phaseprune.engine.candidates import final_readout, option_reduce
        from phaseprune.model.load import default_max_tokens
        from phaseprune.strategies.context import PruneContext
        from phaseprune.strategies.search import iterative

        groups = subject_groups([it.subject for it in task.items])
        reduce = option_reduce(enc.options.ids)
        max_tokens = default_max_tokens("cpu")
        ref = final_readout(model, (), enc.input_ids, reduce, max_tokens=max_tokens, groups=groups)
        ctx = PruneContext(
            model=model,
            n_layers=info.n_layers,
            calib_ids=enc.input_ids,
            calib_text_ids=enc.input_ids,
            calib_gold=gold,
            option_ids=enc.options.ids,
            ref_logits=ref.numpy(),
            calib_groups=groups,
            max_tokens=max_tokens,
            objective=args.objective,
        )
        removed = []
        for _ in range(args.steps):
            removed += list(iterative(ctx, removed).layers)
    wall = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    gflop = flop_lower_bound(task, enc, model, info.n_layers, args.steps, prefix_tokens)
    return {
        "removed": removed,
        "wall_s": round(wall, 2),
        "peak_mb": round(peak_mb, 1),
        "gflop_lower_bound": round(gflop, 1),
    }


def main() -> None:
    """Run both sides in child processes and print the comparison as the last line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--task", default="mmlu")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--subjects", default="high_school_geography")
    parser.add_argument("--shots", type=int, default=5)
    parser.add_argument("--calib", type=int, default=64)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument(
        "--layers", type=int, default=None, help="use only the first N decoder layers"
    )
    parser.add_argument("--sides", default="phaseprune,naive", help="comma-separated sides to run")
    parser.add_argument(
        "--objective",
        default="accuracy",
        choices=("accuracy", "margin", "prob-margin", "kl"),
        help="phaseprune's objective (naive implements accuracy only)",
    )
    parser.add_argument("--which", choices=SIDES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.which:
        from phaseprune.model.cpu import apply_threads, plan_threads

        apply_threads(plan_threads())
        print(json.dumps(child(args)))
        return
    sides = args.sides.split(",")
    if "phaseprune" not in sides or not set(sides) <= set(SIDES):
        raise SystemExit(f"--sides {args.sides}: pick from {SIDES}, phaseprune included")
    if "naive" in sides and args.objective != "accuracy":
        raise SystemExit("the naive side implements --objective accuracy only")
    argv = [a for a in sys.argv[1:]]
    results = {}
    for which in sides:
        out = subprocess.run(
            [sys.executable, __file__, *argv, "--which", which],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        results[which] = json.loads(out.strip().splitlines()[-1])
        print(f"{which}: {results[which]}", file=sys.stderr)
    print(json.dumps(summary(args, results)))


def _first_difference(a: list, b: list) -> int | None:
    return next((i + 1 for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y), None)


def summary(args, results: dict) -> dict:
    """The JSON line: every measured side, its ratio to the others, its decisions."""
    ours = results["phaseprune"]
    gflop = ours["gflop_lower_bound"]
    out = {
        "model": args.model,
        "task": args.task,
        "subjects": args.subjects,
        "shots": args.shots,
        "calib": args.calib,
        "steps": args.steps,
        "layers": args.layers,
        "objective": args.objective,
        "phaseprune_wall_s": ours["wall_s"],
        "removed_phaseprune": ours["removed"],
        "phaseprune_peak_mb": ours["peak_mb"],
        "flop_lower_bound_gflop": round(gflop, 1),
        "phaseprune_gflops_per_s": round(gflop / ours["wall_s"], 1),
    }
    if "naive" in results:
        naive = results["naive"]
        first = _first_difference(ours["removed"], naive["removed"])
        out |= {
            "naive_wall_s": naive["wall_s"],
            "speedup": round(naive["wall_s"] / ours["wall_s"], 2),
            "identical_decisions": first is None,
            "first_differing_step": first,
            "removed_naive": naive["removed"],
            "naive_peak_mb": naive["peak_mb"],
        }
    if "bfloat16" in results:
        bf16 = results["bfloat16"]
        first = _first_difference(ours["removed"], bf16["removed"])
        out |= {
            "bfloat16_wall_s": bf16["wall_s"],
            "bfloat16_speedup": round(ours["wall_s"] / bf16["wall_s"], 2),
            "bfloat16_identical_decisions": first is None,
            "bfloat16_first_differing_step": first,
            "removed_bfloat16": bf16["removed"],
            "bfloat16_peak_mb": bf16["peak_mb"],
        }
    return out


if __name__ == "__main__":
    main()
