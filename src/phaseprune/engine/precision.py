"""``--precision fast``: bfloat16 forward passes whose decisions equal float32's.

CPUs with bfloat16 matrix units (AMX, avx512_bf16; :mod:`phaseprune.model.cpu`) run bfloat16
matrix products several times faster than float32 through oneDNN, but bfloat16 moves option
logits by a few tenths (SmolLM2: up to 0.44, enough to swap 1 final pick in 20). The fast
mode keeps the float32 model as the judge and a bfloat16 copy as the workhorse:

* **The bound.** Picks, margins and probabilities depend on option logits only through their
  differences, so the error that matters is :func:`~phaseprune.core.objectives.difference_error`.
  It is measured on the run's own items (prune: every calibration item, at the final readout;
  analyze: a sample of :data:`SAMPLE` items, per readout index, as a running maximum over
  depth since the error grows with it), and the bound is :data:`SAFETY` times the largest
  error seen. The error has a tail: on the 22 tiny test families the largest error of 200
  items was up to 2.5 times that of their first 16 (2.35 with the running maximum); on
  SmolLM2 (64 MMLU items, 31 readout indices) a bound of 1.5 x the largest of 16 items was
  exceeded in 4 of 1488 cells of the other 48 items, and 2 x in none.
* **Analyze** (:func:`read_options_fast`): every item is read in bfloat16; an item whose top
  two options are within the bound at any readout index is read again in float32, and its
  float32 row replaces the bfloat16 one. Every pick then equals float32's; margins of the other
  items are bfloat16's, and the run records which items are which.
* **Pruning** (:func:`score_removals_fast`): every candidate is scored in bfloat16; the
  interval of its exact objective (:func:`~phaseprune.core.objectives.key_interval`) tells which
  candidates may still be the float32 best (:func:`~phaseprune.core.objectives.contenders`).
  Those are re-scored in float32, first on the items whose pick could flip, then, while more
  than one remains, on all items: the float32 scores decide. Every re-scored row also checks
  the bound: a row whose error exceeds it widens the bound to :data:`SAFETY` times that
  error and the step is decided again.

The evaluation readout of pruning and phase-aware's calibration phases stay float32: they are
incremental (a few layer passes per step), and a near tie at some readout index is the rule
there (55 of 64 SmolLM2 items have one), so a bfloat16 pass plus float32 re-reads would cost
more than float32 alone.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from phaseprune.core.objectives import (
    MEANS,
    contenders,
    difference_error,
    key_interval,
    mean_errors,
    top_gap,
)
from phaseprune.engine.readout import read_options

SAFETY = 3.0
"""The bound is this many times the largest bfloat16 difference error measured."""

SAMPLE = 32
"""Analyze: items read in both precisions to measure the bound (fewer for small runs)."""


def sample_size(n_items: int) -> int:
    """Items analyze reads in both precisions: :data:`SAMPLE`, a quarter of small runs, >= 8."""
    return min(n_items, max(8, min(SAMPLE, -(-n_items // 4))))


def bfloat16_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A bfloat16 copy of ``model`` (the float32 original stays untouched)."""
    return copy.deepcopy(model).to(torch.bfloat16)


def subset_groups(groups: Sequence[Sequence[int]] | None, items: Sequence[int]):
    """``groups`` restricted to ``items``, re-indexed to positions in ``items`` (None stays)."""
    if groups is None:
        return None
    where = {item: pos for pos, item in enumerate(items)}
    kept = [[where[i] for i in g if i in where] for g in groups]
    return [g for g in kept if g]


@dataclass
class Rescoring:
    """What the fast mode of one pruning run knows and did; ``record()`` goes into each step."""

    model: torch.nn.Module
    """The bfloat16 copy."""
    measured: float
    """Largest difference error of one row (item) on the calibration items, unpruned model,
    over every readout index after the embeddings (each is the output of some shallower model,
    as a candidate's is)."""
    mean_measured: dict[str, float] = field(default_factory=lambda: dict.fromkeys(MEANS, 0.0))
    """Largest error of each mean over the calibration items (:data:`~phaseprune.core.objectives.
    MEANS`), over the same readout indices."""
    bound: float = 0.0
    """Current bound on one row (SAFETY x the largest error seen so far)."""
    mean_bound: dict[str, float] = field(default_factory=dict)
    """Current bound on each mean (SAFETY x the largest error seen so far)."""
    observed: float = 0.0
    """Largest row error seen on re-scored rows of pruned models."""
    mean_observed: dict[str, float] = field(default_factory=lambda: dict.fromkeys(MEANS, 0.0))
    """Largest mean error seen on candidates re-scored on every item."""
    widened: int = 0
    """How often a re-scored row or mean exceeded its bound (each time the step was decided
    again with the bound widened)."""
    step: dict = field(default_factory=dict)
    """Counts of the current step."""

    def __post_init__(self):
        self.bound = self.bound or SAFETY * self.measured
        self.mean_bound = self.mean_bound or {m: SAFETY * v for m, v in self.mean_measured.items()}

    @classmethod
    def measure(
        cls, model16, approx: np.ndarray, exact: np.ndarray, gold: np.ndarray, ref: np.ndarray
    ) -> Rescoring:
        """Start from the errors of ``approx`` (bfloat16) against ``exact`` (float32) readouts.

        Both are ``(n_items, n_readout, n_options)`` all-layer readouts of the calibration items
        (or ``(n_items, n_options)`` final ones); ``ref`` is the exact final readout.
        """
        if approx.ndim == 2:
            approx, exact = approx[:, None], exact[:, None]
        later = range(min(1, approx.shape[1] - 1), approx.shape[1])
        rows = float(difference_error(approx[:, later], exact[:, later]).max())
        means = dict.fromkeys(MEANS, 0.0)
        for index in later:
            for m, v in mean_errors(approx[:, index], exact[:, index], gold, ref).items():
                means[m] = max(means[m], v)
        return cls(model16, rows, means)

    def run_record(self) -> dict:
        """``trajectory["precision"]``: what ran in which precision, and the measured bounds."""
        return {
            "mode": "fast",
            "forward": "bfloat16 (candidate scoring)",
            "decided_by": "float32",
            "float32": "evaluation readout, calibration phases, baselines' rankings",
            "safety": SAFETY,
            "measured_error": round(self.measured, 6),
            "bound": round(SAFETY * self.measured, 6),
            "measured_mean_error": _rounded(self.mean_measured),
        }

    def record(self) -> dict:
        """The fast-mode record of the last step (see docs/schema.md)."""
        return {
            "forward": "bfloat16",
            "decided_by": "float32",
            "bound": round(self.bound, 6),
            "mean_bound": _rounded(self.mean_bound),
            "observed_error": round(self.observed, 6),
            "observed_mean_error": _rounded(self.mean_observed),
            "bound_widened": self.widened,
            **self.step,
        }

    def check(self, approx: np.ndarray, exact: np.ndarray, full: bool, gold, ref) -> bool:
        """Record the errors of re-scored rows (``full``: all rows); False if one broke a bound."""
        self.observed = max(self.observed, float(difference_error(approx, exact).max()))
        held = self.observed <= self.bound
        if full:
            for m, v in mean_errors(approx, exact, gold, ref).items():
                self.mean_observed[m] = max(self.mean_observed[m], v)
                held &= self.mean_observed[m] <= self.mean_bound[m]
        return held

    def widen(self) -> None:
        """Widen every bound to SAFETY x the largest error observed, if that is larger."""
        self.bound = max(self.bound, SAFETY * self.observed)
        for m, v in self.mean_observed.items():
            self.mean_bound[m] = max(self.mean_bound[m], SAFETY * v)
        self.widened += 1


def start_rescoring(
    model32, model16, input_ids, option_ids, groups, gold, ref, *, max_tokens: int
) -> Rescoring:
    """Measure the bounds on the calibration items, from readouts in both precisions.

    The all-layer readout, and the final readout without the first layer: a model far from
    any readout index, and the largest errors of all candidates came from dropping the first
    layer (Qwen2.5-Coder-1.5B, 24 MMLU items: 0.96, against at most 0.58 over the readout
    indices; also on the tiny test families).
    """
    from phaseprune.model.arch import decoder_parts
    from phaseprune.model.surgery import without_layers

    read = {"groups": groups, "max_tokens": max_tokens, "progress": False}
    both = []
    for model in (model16, model32):
        readout = read_options(decoder_parts(model), input_ids, option_ids, **read)
        if len(decoder_parts(model).layers) > 1:
            with without_layers(model, [0]) as parts:
                final = read_options(parts, input_ids, option_ids, **read)[:, -1:]
            readout = torch.cat([readout, final], dim=1)
        both.append(readout.numpy())
    return Rescoring.measure(model16, both[0], both[1], gold, ref)


def _rounded(values: dict[str, float]) -> dict[str, float]:
    return {k: round(float(v), 6) for k, v in values.items()}


Score = Callable[..., dict[int, torch.Tensor]]


def score_removals_fast(
    score: Score,
    model32: torch.nn.Module,
    fast: Rescoring,
    removed: Sequence[int],
    candidates: Sequence[int],
    input_ids: Sequence[Sequence[int]],
    groups,
    *,
    objective: str,
    gold: np.ndarray,
    ref_logits: np.ndarray,
) -> dict[int, torch.Tensor]:
    """Candidates' final option logits, re-scored in float32 wherever the decision needs it.

    ``score(model, removed, candidates, input_ids, groups)`` is the scorer
    (:func:`~phaseprune.engine.candidates.score_removals` with its settings). Returns what it returns;
    the best candidate by ``objective`` over these logits is the one float32 scores choose.
    Contenders are re-scored first on the items whose pick could flip, then, while more than
    one remains, on every item; the one left is then re-scored on every item it was not, so
    its own errors are checked against the bounds.
    """
    logits = {k: v.numpy().astype(np.float32) for k, v in
              score(fast.model, removed, candidates, input_ids, groups).items()}  # fmt: skip
    approx = {k: v.copy() for k, v in logits.items()}
    n = len(input_ids)
    exact = {k: np.zeros(n, dtype=bool) for k in candidates}
    passes, first, held = 0, None, False

    def rescore(alive: list[int], todo: list[int]) -> bool:
        nonlocal passes
        rows = score(
            model32, removed, alive, [input_ids[i] for i in todo], subset_groups(groups, todo)
        )
        ok = True
        for k in alive:
            logits[k][todo] = rows[k].numpy()
            exact[k][todo] = True
            ok &= fast.check(approx[k][todo], logits[k][todo], False, gold, ref_logits)
            if exact[k].all():
                ok &= fast.check(approx[k], logits[k], True, gold, ref_logits)
        passes += len(todo) * len(alive)
        return ok

    while not held:
        held = True
        for full in (False, True):
            alive = contenders(
                {
                    k: key_interval(
                        objective,
                        logits[k],
                        gold,
                        ref_logits,
                        exact[k],
                        fast.bound,
                        fast.mean_bound,
                    )
                    for k in candidates
                }  # fmt: skip
            )
            first = first or len(alive)
            if len(alive) == 1:
                break
            todo = sorted({int(i) for k in alive for i in np.flatnonzero(
                ~exact[k] & (full | (top_gap(logits[k]) <= fast.bound)))})  # fmt: skip
            if todo:
                held &= rescore(alive, todo)
        # a single contender is the winner, checked on every item: the likeliest failure is a
        # candidate whose own error (beyond its bounds) made it look best. Several contenders
        # were all re-scored on every item above, so they are checked already.
        if held and len(alive) == 1 and not exact[alive[0]].all():
            winner = alive[0]
            held &= rescore([winner], [int(i) for i in np.flatnonzero(~exact[winner])])
        if not held:  # a bound did not hold: widen it and decide the step again
            fast.widen()
    fast.step = {
        "contenders": first,
        "rescored_candidates": int(sum(exact[k].any() for k in candidates)),
        "rescored_item_passes": passes,
    }
    return {k: torch.from_numpy(v) for k, v in logits.items()}


@dataclass(frozen=True)
class FastReadout:
    """Analyze's fast readout: the logits and where each row came from."""

    logits: np.ndarray
    """``(n_items, n_readout, n_options)``; float32 rows where ``exact``."""
    exact: np.ndarray
    """``(n_items,)`` rows read in float32."""
    bound: np.ndarray
    """``(n_readout,)`` the bound per readout index."""
    measured: np.ndarray
    """``(n_readout,)`` the largest difference error on the sample, at this index or before."""
    sample: list[int]
    """The items read in both precisions."""


def read_options_fast(
    parts32,
    parts16,
    input_ids: Sequence[Sequence[int]],
    option_ids: Sequence[int],
    *,
    sample: Sequence[int],
    groups=None,
    on_rows: Callable[[list[int], np.ndarray, bool], None] | None = None,
    **read,
) -> FastReadout:
    """All-layer option logits whose every pick equals float32's (see the module docstring).

    Args:
        parts32: the float32 model's decoder parts.
        parts16: the bfloat16 copy's.
        input_ids: one token list per item.
        option_ids: token id of each option.
        sample: item indices read in both precisions to measure the bound.
        groups: items sharing a prompt prefix, as in read_options.
        on_rows: called with ``(items, their logits, exact)`` as rows become final.
        **read: read_options' other settings (max_tokens, progress).
    """

    def run(parts, items):
        rows = read_options(
            parts,
            [input_ids[i] for i in items],
            option_ids,
            groups=subset_groups(groups, items),
            **read,
        )
        return rows.numpy()

    sample = list(sample)
    exact_rows = run(parts32, sample)
    measured = np.maximum.accumulate(difference_error(run(parts16, sample), exact_rows).max(0))
    bound = SAFETY * measured
    shape = (len(input_ids), *exact_rows.shape[1:])
    logits = np.zeros(shape, dtype=np.float32)
    exact = np.zeros(len(input_ids), dtype=bool)
    logits[sample], exact[sample] = exact_rows, True
    if on_rows:
        on_rows(sample, exact_rows, True)
    rest = [i for i in range(len(input_ids)) if not exact[i]]
    if rest:
        approx = run(parts16, rest)
        near = (top_gap(approx) <= bound).any(axis=1)
        final = [i for i, n in zip(rest, near, strict=True) if not n]
        logits[final] = approx[~near]
        if on_rows and final:
            on_rows(final, approx[~near], False)
        again = [i for i, n in zip(rest, near, strict=True) if n]
        if again:
            logits[again], exact[again] = run(parts32, again), True
            if on_rows:
                on_rows(again, logits[again], True)
    return FastReadout(logits, exact, bound, measured, sample)
