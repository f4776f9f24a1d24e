r"""Benchmark: what a held model's identity costs (the sha256 of its config and tensors).

    .venv/bin/python benchmarks/bench_identity.py --model smollm2-135m
    .venv/bin/python benchmarks/bench_identity.py --model PATH.gguf --device cuda

A model passed to the Python API is hashed once per run
(:func:`~phaseprune.model.identity.tensors_sha256`). The model is loaded as ``prune`` loads it,
hashed ``--repeat`` times, and the last line printed is one JSON object: bytes hashed, seconds
per hash (the fastest), GB/s, and the seconds a 7B model (``--scale-to`` parameters, in the
same dtype) would take at that rate, against one unpruned readout of ``--items`` items for
scale (``readout_s``, measured here too).
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch


def main() -> None:
    """Time the hash and print the last line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default=None)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--scale-to", type=float, default=7e9)
    parser.add_argument("--items", type=int, default=40)
    args = parser.parse_args()

    from phaseprune.core.prompts import build_prompts
    from phaseprune.engine.readout import read_options
    from phaseprune.model.arch import decoder_parts
    from phaseprune.model.identity import tensors_sha256
    from phaseprune.model.load import load_model, load_tokenizer, resolve_model
    from phaseprune.tasks import load_task

    spec = resolve_model(args.model)
    model, info = load_model(spec, dtype=args.dtype, device=args.device, progress=False)
    tensors = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    nbytes = sum(t.numel() * t.element_size() for t in tensors.values())
    params = sum(t.numel() for t in model.parameters())
    times = []
    for _ in range(args.repeat):
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        tensors_sha256(model)
        times.append(time.perf_counter() - start)
    best = min(times)
    tokenizer, _ = load_tokenizer(spec)
    task = load_task("mmlu", subjects=("marketing",), limit=args.items)
    ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in build_prompts(task)]
    option_ids = [tokenizer(f" {c}", add_special_tokens=False)["input_ids"][-1] for c in "ABCD"]
    start = time.perf_counter()
    read_options(decoder_parts(model), ids, option_ids, progress=False)
    readout_s = time.perf_counter() - start
    print(json.dumps({
        "cpu": platform.processor() or platform.machine(), "device": info.device,
        "model": info.name, "dtype": info.dtype, "params": params, "bytes": nbytes,
        "hash_s": round(best, 3), "gb_per_s": round(nbytes / best / 1e9, 3),
        "scaled_params": args.scale_to,
        "scaled_hash_s": round(best * args.scale_to / params, 1),
        "readout_items": args.items, "readout_s": round(readout_s, 2),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
