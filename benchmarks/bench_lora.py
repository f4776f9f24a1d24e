r"""Benchmark: what LoRA healing would cost here, beside the linear map's fit, for one removal.

    .venv/bin/python benchmarks/bench_lora.py --model smollm2-135m --remove 24,26 \\
        --task mmlu --subjects high_school_geography,marketing --items 64 --steps 4

Needs ``pip install peft`` (not a phaseprune dependency). Not a phaseprune feature: the
measurement behind its decision not to offer ``--heal lora``
yet (issue 30 asks for the cost on this CPU first). The model is loaded as ``prune`` loads it,
the layers ``--remove`` are dropped (phaseprune's pruned view), and

* **linear**: one least-squares map for the removal is fitted as ``prune --heal linear`` fits
  it (:class:`~phaseprune.engine.healing.LinearHealer`: the unpruned targets and the current
  model's sources over the heal prompts, then the solve), timed once;
* **lora**: ``peft`` LoRA (rank ``--rank`` on every attention and MLP projection) is trained
  with AdamW on the same prompts as plain next-token prediction, ``--batch`` prompts a step;
  the first step is a warm-up, the next ``--steps`` are timed.

The last line printed is one JSON object: seconds for the linear fit, seconds and tokens per
second of a LoRA step, the LoRA steps one linear fit's time buys, the hours one pass over
``--budget-tokens`` (what published LoRA healing trains on: Shortened LLaMA used 50k Alpaca
samples, about 10M tokens) would take here, and peak memory.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time

import torch


def main() -> None:
    """Measure both and print them as the last line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--remove", default="24,26", help="original layer indices, comma-separated")
    parser.add_argument("--task", default="mmlu")
    parser.add_argument("--subjects", default="high_school_geography,marketing")
    parser.add_argument("--items", type=int, default=64, help="heal prompts (as --heal-items)")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--budget-tokens", type=float, default=10e6)
    args = parser.parse_args()

    from peft import LoraConfig, get_peft_model

    from phaseprune.core.prompts import build_prompts
    from phaseprune.engine.healing import HealData, LinearHealer
    from phaseprune.model.load import load_model, load_tokenizer, resolve_model
    from phaseprune.model.surgery import without_layers
    from phaseprune.tasks import load_task

    torch.manual_seed(0)
    spec = resolve_model(args.model)
    tokenizer, _ = load_tokenizer(spec)
    model, info = load_model(spec, dtype="float32", progress=False)
    task = load_task(args.task, subjects=tuple(args.subjects.split(",")), limit=args.items)
    rows = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in build_prompts(task)]
    tokens = sum(len(r) for r in rows)
    removed = [int(k) for k in args.remove.split(",")]

    healer = LinearHealer(model, HealData(rows, None, {"kind": "bench"}), max_tokens=8192)
    start = time.perf_counter()
    key = removed[-1]
    healer.fit(removed[:-1], [key])
    linear_s = time.perf_counter() - start
    healer.close()

    result = {
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "model": info.name,
        "layers": info.n_layers,
        "removed": removed,
        "heal_prompts": len(rows),
        "heal_tokens": tokens,
        "linear_fit_s": round(linear_s, 2),
    }
    with without_layers(model, removed):
        targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
        present = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
        config = LoraConfig(r=args.rank, lora_alpha=2 * args.rank,
                            target_modules=[t for t in targets if t in present])  # fmt: skip
        lora = get_peft_model(model, config)
        lora.train()
        trainable = sum(p.numel() for p in lora.parameters() if p.requires_grad)
        opt = torch.optim.AdamW([p for p in lora.parameters() if p.requires_grad], lr=1e-4)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        times, seen = [], []
        for step in range(args.steps + 1):
            batch = [rows[(step * args.batch + i) % len(rows)] for i in range(args.batch)]
            width = max(len(r) for r in batch)
            ids = torch.tensor([r + [pad] * (width - len(r)) for r in batch])
            mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in batch])
            labels = ids.masked_fill(mask == 0, -100)
            start = time.perf_counter()
            loss = lora(input_ids=ids, attention_mask=mask, labels=labels).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
            if step:  # the first is a warm-up
                times.append(time.perf_counter() - start)
                seen.append(int(mask.sum()))
    step_s = sum(times) / len(times)
    per_token = sum(times) / sum(seen)
    result |= {
        "lora_rank": args.rank,
        "lora_trainable_params": trainable,
        "lora_step_s": round(step_s, 3),
        "lora_tokens_per_s": round(1 / per_token, 1),
        "lora_steps_per_linear_fit": round(linear_s / step_s, 1),
        "lora_one_pass_over_heal_tokens_s": round(per_token * tokens, 1),
        "lora_hours_for_budget": round(per_token * args.budget_tokens / 3600, 1),
        "budget_tokens": args.budget_tokens,
        "peak_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
