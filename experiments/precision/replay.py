"""Replay --precision fast's decision offline on logits saved by dump_logits.py.

    .venv/bin/python experiments/precision/replay.py runs/qwen24.npz

Prints the bfloat16 errors (rows, means), each objective's float32 and bfloat16 best, and what
score_removals_fast re-scores in float32 on those logits (README, Precision and threads).
"""

import sys

import numpy as np
import torch

from phaseprune.core.metrics import item_metrics
from phaseprune.core.objectives import (
    OBJECTIVES,
    best_candidate,
    candidate_metrics,
    difference_error,
    objective_key,
)
from phaseprune.engine.precision import Rescoring, score_removals_fast

d = np.load(sys.argv[1])
SAFETY = float(sys.argv[2]) if len(sys.argv) > 2 else 3.0
gold = d["gold"]
a16, a32 = d["all_bf16"], d["all_fp32"]
c16, c32 = d["cand_bf16"], d["cand_fp32"]
L = c16.shape[0]
print("times", {k: float(d[k]) for k in d.files if k.startswith("t_")})
ref = a32[:, -1]
per_item = difference_error(a16, a32)  # items, idx
print(
    f"per-item err: final {per_item[:, -1].max():.3f}, max over idx {per_item[:, 1:].max():.3f}; "
    f"candidates max {difference_error(c16, c32).max():.3f}"
)


def means(x):  # x (..., n, opts) -> margin, pm, kl means
    """Return the item metrics of logits ``x`` against ``gold`` (2-D ``x`` as one readout)."""
    m = item_metrics(x.reshape(-1, 1, x.shape[-1]) if x.ndim == 2 else x, gold)
    return m


mm = []
for index in range(1, a16.shape[1]):
    k16 = candidate_metrics(a16[:, index], gold, ref)
    k32 = candidate_metrics(a32[:, index], gold, ref)
    mm.append({k: abs(k16[k] - k32[k]) for k in ("margin", "prob_margin", "kl")})
mean_meas = {k: max(x[k] for x in mm) for k in ("margin", "prob_margin", "kl")}
cand_mean_err = {
    k: max(
        abs(candidate_metrics(c16[j], gold, ref)[k] - candidate_metrics(c32[j], gold, ref)[k])
        for j in range(L)
    )
    for k in mean_meas
}
print("mean err measured on all-layer readout:", {k: round(v, 4) for k, v in mean_meas.items()})
print("mean err of candidates (true):       ", {k: round(v, 4) for k, v in cand_mean_err.items()})
beta = SAFETY * per_item[:, 1:].max()
for obj in OBJECTIVES:
    keys16 = {j: objective_key(obj, candidate_metrics(c16[j], gold, ref)) for j in range(L)}
    keys32 = {j: objective_key(obj, candidate_metrics(c32[j], gold, ref)) for j in range(L)}
    b32 = best_candidate(keys32)
    b16 = best_candidate(keys16)
    srt = sorted(keys32.values(), reverse=True)
    top32 = [tuple(round(x, 3) for x in k) for k in srt[:4]]
    print(f"{obj:12s} best32 {b32} best16 {b16} top keys32 {top32}")

# replicate the decision with the fake scorer on dumped arrays
A16 = np.concatenate([a16, c16[0][:, None]], 1)
A32 = np.concatenate([a32, c32[0][:, None]], 1)
fast0 = Rescoring.measure("bf16", A16, A32, gold, ref)
mean_measured = {k: round(v, 4) for k, v in fast0.mean_measured.items()}
print(f"measured rows {fast0.measured:.3f} means {mean_measured}")
n = len(gold)
for obj in OBJECTIVES:
    fast = Rescoring.measure("bf16", A16, A32, gold, ref)
    calls = []

    def score(model, removed, cands, rows, groups, calls=calls):
        """Fake scorer: the dumped bf16 or fp32 candidate logits of ``rows``; logs the call."""
        src = c16 if model == "bf16" else c32
        idx = [r[0] for r in rows]
        calls.append((model, len(cands), len(idx)))
        return {k: torch.from_numpy(src[k][idx]) for k in cands}

    got = score_removals_fast(
        score,
        "fp32",
        fast,
        (),
        list(range(L)),
        [[i] for i in range(n)],
        None,
        objective=obj,
        gold=gold,
        ref_logits=ref,
    )
    keys = {k: objective_key(obj, candidate_metrics(v.numpy(), gold, ref)) for k, v in got.items()}
    keys32 = {j: objective_key(obj, candidate_metrics(c32[j], gold, ref)) for j in range(L)}
    ok = best_candidate(keys) == best_candidate(keys32)
    fp32_calls = [c for c in calls if c[0] == "fp32"]
    print(f"{obj:12s} ok={ok} {fast.step} widened={fast.widened} fp32 calls={fp32_calls}")
