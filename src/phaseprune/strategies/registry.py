"""The strategy registry: every strategy's name, rule and needs, in one table.

Everything else derives from :data:`STRATEGIES`: the config's and the CLI's choices, the
README's strategy table (a test checks it is :func:`markdown_table`'s), and what the pruning
loop prepares. Importing this module loads no torch; :func:`strategy_function` imports the
implementation when a run needs it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class StrategySpec:
    """One strategy."""

    name: str
    """The ``--strategy`` value."""
    rule: str
    """How it chooses, one line (the README's strategy table)."""
    kind: Literal["iterative", "one-shot", "fixed"]
    """``iterative``: re-scores the current model at every step; ``one-shot``: ranks layers once
    on the unpruned model and walks down that ranking; ``fixed``: an order needing no data."""
    reads: Literal["readout", "prompts", "text", "nothing"]
    """What of the calibration items it reads: the option readout (with ``--objective``), the
    prompts' hidden states, the prompts as plain text followed by the gold letter (NLL), or
    nothing."""
    gradients: bool
    """Whether it needs a backward pass (memory for gradients of every layer)."""
    impl: str
    """``module:function`` of the implementation, under :mod:`phaseprune.strategies`."""


RULES = {
    "iterative": "the paper's Iterative Pruning: try every remaining layer on the calibration "
    "items, remove the best by `--objective` (`accuracy` with margin tie-break, the "
    "default here, `margin`, `prob-margin`, `kl`)",
    "phase-aware": "the decision readout all the way down, phases re-estimated each step: the "
    "Decisive Phase's tail cut where its readout keeps the calibration accuracy with the "
    "largest margin (`--decisive tail`, the default; `objective`: Decisive layers one at a time "
    "like iterative, never the transition layer or `--guard` layers before it), then "
    "`--after-decisive`: the best by the objective that keeps the calibration transition "
    "(`transition`, the default), the best by the objective, or the lowest block influence, "
    "never the `--spare` decision builders (the step's `note` says which rule chose); "
    "candidates scored by `--objective kl` by default (the option distribution's divergence "
    "from the unpruned model's)",
    "block-influence": "ShortGPT: 1 − cos(layer input, output) over calibration tokens, one-shot",
    "angular": "Gromov et al.: arccos(cos(x_l, x_{l+n}))/π at the last token, best block of "
    "`--block-size`",
    "sleb": "iterative, lowest calibration NLL without the layer",
    "ppl": "Shortened LLaMA: one-shot perplexity with each layer removed alone",
    "taylor": "Shortened LLaMA Taylor+: one-shot sum of \\|w · ∂L/∂w\\| per block, first 4 and "
    "last 2 blocks spared",
    "logit-js": "FinerCut at block granularity: iterative, JS divergence of the last-token output "
    "distribution from the unpruned model's",
    "last": "drop the layers before the last one, deepest first",
    "random": "a seeded random order (`--seed`)",
    "order": "the layers of `--order`, in that order: another run's or a paper's removals, "
    "for instance to heal them (`--heal linear`)",
}
"""How each strategy chooses, one line each (the README's strategy table)."""

STRATEGIES: dict[str, StrategySpec] = {
    name: StrategySpec(name, RULES[name], kind, reads, gradients, impl)
    for name, kind, reads, gradients, impl in (
        ("iterative", "iterative", "readout", False, "search:iterative"),
        ("phase-aware", "iterative", "readout", False, "search:phase_aware"),
        ("block-influence", "one-shot", "prompts", False, "rankings:block_influence"),
        ("angular", "one-shot", "prompts", False, "rankings:angular"),
        ("sleb", "iterative", "text", False, "rankings:sleb"),
        ("ppl", "one-shot", "text", False, "rankings:ppl"),
        ("taylor", "one-shot", "text", True, "rankings:taylor"),
        ("logit-js", "iterative", "prompts", False, "rankings:logit_js"),
        ("last", "fixed", "nothing", False, "rankings:last"),
        ("random", "fixed", "nothing", False, "rankings:random"),
        ("order", "fixed", "nothing", False, "rankings:given"),
    )
}
"""Every strategy, in the order the README and ``--help`` list them."""

STRATEGY_NAMES: tuple[str, ...] = tuple(STRATEGIES)
"""The ``--strategy`` choices, in the registry's order."""
NEEDS_ARGUMENT = ("order",)
"""Strategies that need a setting of their own (``--order``): not offered where none is given."""


def strategy_function(name: str) -> Callable:
    """The implementation of strategy ``name``: ``(ctx, removed) -> Choice``."""
    module, function = STRATEGIES[name].impl.split(":")
    return getattr(importlib.import_module(f"phaseprune.strategies.{module}"), function)


def markdown_table() -> str:
    """The README's strategy table."""
    rows = ["| strategy | kind | reads | rule |", "|---|---|---|---|"]
    rows += [
        f"| `{s.name}` | {s.kind} | {s.reads}{' + gradients' if s.gradients else ''} | {s.rule} |"
        for s in STRATEGIES.values()
    ]
    return "\n".join(rows)
