"""A naive reference for Iterative Pruning, kept apart from the library on purpose.

For every step and every remaining layer it builds the pruned model (the library's view,
which equals an edited-and-reloaded checkpoint; tested in tests/test_surgery.py), runs a plain
full forward over each full prompt, computes the full-vocabulary logits and reads the option
tokens at the last position. It is what SLEB- or lm-eval-per-candidate-style scripts do, and
what `bench_prune.py` compares phaseprune's decisions and time against.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from phaseprune.core.objectives import best_candidate, candidate_metrics, objective_key
from phaseprune.model.surgery import kept_layers, without_layers


@torch.inference_mode()
def option_logits(
    model, input_ids: Sequence[Sequence[int]], option_ids: Sequence[int]
) -> np.ndarray:
    """Full forward per prompt, full-vocabulary logits, option columns at the last position."""
    rows = []
    for row in input_ids:
        logits = model(torch.tensor([list(row)]), use_cache=False).logits  # (1, seq, vocab)
        rows.append(logits[0, -1, list(option_ids)].float().numpy())
    return np.stack(rows)


def naive_iterative(
    model, n_layers: int, input_ids, option_ids, gold, steps: int, objective: str = "accuracy"
) -> list[int]:
    """Remove ``steps`` layers one at a time by ``objective``; return the removed layers."""
    ref = option_logits(model, input_ids, option_ids)
    removed: list[int] = []
    for _ in range(steps):
        keys = {}
        for k in kept_layers(n_layers, removed):
            with without_layers(model, [*removed, k]):
                metrics = candidate_metrics(option_logits(model, input_ids, option_ids), gold, ref)
            keys[k] = objective_key(objective, metrics)
        removed.append(best_candidate(keys))
    return removed
