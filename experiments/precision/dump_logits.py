"""Save one step's candidate logits and the all-layer readout, in float32 and bfloat16.

    .venv/bin/python experiments/precision/dump_logits.py MODEL SHOTS N OUT.npz SUBJECT,...

Reads MMLU from ../shared/data/mmlu. The Qwen2.5-Coder-1.5B numbers in the README came from
N=24, 0-shot, five subjects (high_school_geography, marketing, us_foreign_policy,
high_school_psychology, sociology): about 13 min on 2 cores.
"""

import sys
import time
from pathlib import Path

import numpy as np
import torch

from phaseprune.core.prompts import build_prompts
from phaseprune.engine.candidates import option_reduce, score_removals
from phaseprune.engine.encoding import encode_prompts
from phaseprune.engine.precision import bfloat16_copy
from phaseprune.engine.readout import read_options
from phaseprune.model.arch import decoder_parts
from phaseprune.model.load import load_model, load_tokenizer, resolve_model
from phaseprune.runs.loading import subject_groups
from phaseprune.tasks import load_task

torch.set_num_threads(2)
model_name, shots, n, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
subjects = sys.argv[5].split(",")
task = load_task(
    "mmlu",
    subjects=subjects,
    data_dir=str(Path(__file__).resolve().parents[3] / "shared/data/mmlu"),
    shots=shots,
    limit=n,
)
spec = resolve_model(model_name)
tok, cfg = load_tokenizer(spec)
enc = encode_prompts(tok, build_prompts(task), task.n_options, family=cfg.model_type)
m32, info = load_model(spec, progress=False)
m16 = bfloat16_copy(m32)
groups = subject_groups([it.subject for it in task.items]) if shots else None
gold = np.array([it.answer for it in task.items])
res = {"gold": gold}
for name, m in (("bf16", m16), ("fp32", m32)):
    t = time.perf_counter()
    res[f"all_{name}"] = read_options(
        decoder_parts(m),
        enc.input_ids,
        enc.options.ids,
        max_tokens=512,
        progress=False,
        groups=groups,
    ).numpy()
    t1 = time.perf_counter()
    sc = score_removals(
        m,
        (),
        list(range(info.n_layers)),
        enc.input_ids,
        option_reduce(enc.options.ids),
        max_tokens=512,
        groups=groups,
    )
    t2 = time.perf_counter()
    res[f"cand_{name}"] = np.stack([sc[k].numpy() for k in range(info.n_layers)])
    res[f"t_read_{name}"] = t1 - t
    res[f"t_cand_{name}"] = t2 - t1
    print(name, f"readout {t1 - t:.1f}s candidates {t2 - t1:.1f}s", flush=True)
np.savez(out, **res)
