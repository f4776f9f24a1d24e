"""bf16 vs fp32 candidate scoring time at several padded-token batch sizes (SmolLM2, one step).

.venv/bin/python experiments/precision/batch_sweep.py 5 16 256,512,1024,2048
"""

import sys
import time
from pathlib import Path

import torch

from phaseprune.core.prompts import build_prompts
from phaseprune.engine.candidates import option_reduce, score_removals
from phaseprune.engine.encoding import encode_prompts
from phaseprune.engine.precision import bfloat16_copy
from phaseprune.model.load import load_model, load_tokenizer, resolve_model
from phaseprune.runs.loading import subject_groups
from phaseprune.tasks import load_task

torch.set_num_threads(2)
shots, n = int(sys.argv[1]), int(sys.argv[2])
task = load_task(
    "mmlu",
    subjects=["high_school_geography"],
    data_dir=str(Path(__file__).resolve().parents[3] / "shared/data/mmlu"),
    shots=shots,
    limit=n,
)
spec = resolve_model("smollm2-135m")
tok, cfg = load_tokenizer(spec)
enc = encode_prompts(tok, build_prompts(task), task.n_options, family=cfg.model_type)
m32, info = load_model(spec, progress=False)
m16 = bfloat16_copy(m32)
groups = subject_groups([it.subject for it in task.items]) if shots else None
red = option_reduce(enc.options.ids)
for mt in [int(x) for x in sys.argv[3].split(",")]:
    for name, m in (("bf16", m16), ("fp32", m32)):
        if name == "fp32" and mt != 512:
            continue
        t = time.perf_counter()
        score_removals(
            m, (), list(range(info.n_layers)), enc.input_ids, red, max_tokens=mt, groups=groups
        )
        print(
            f"shots {shots} n {n} max_tokens {mt} {name}: {time.perf_counter() - t:.1f}s",
            flush=True,
        )
