"""Training-free healing: a least-squares map per removed run of layers, fitted by streaming.

ReplaceMe (Shopkhoev et al., arXiv 2505.02819) replaces a run of removed blocks by one linear
map on the MLP output of the kept layer before them, folded into that layer's output
projection (:mod:`phaseprune.model.healing`). phaseprune fits it so that healing composes:

* **Where.** Removing layer ``k`` re-fits the kept layer ``p`` just before it (original
  indices), whose output must match the *unpruned* hidden state after the removed run that
  now follows ``p`` (the ``boundary``). With no kept layer before ``k``, the first kept layer
  after it takes the map (an embedding may be tied to the unembedding).
* **Source.** ``p``'s MLP output with its original weights, read in the *current* model
  (already pruned and healed), so each map corrects what the earlier steps left.
* **Fit.** With ``X`` that output and ``E`` the gap between the target and ``p``'s unhealed
  output, ``T = I + (X^T X + lambda I)^-1 X^T E``: the ridge shrinks towards the unhealed
  layer, and no map at all is always a candidate. The sums are float64, batch by batch:
  O(d_model^2) memory per map, never O(tokens x d_model).
* **Passes.** The unpruned model runs once over the heal prompts (its states are kept within
  a budget: every fit's targets); a source pass resumes from those states at the current
  model's first changed layer and stops at the healed layer (``LinearHealer._span``).
* **Ridge.** Every fourth heal prompt is held out; ``lambda`` has the smallest held-out
  squared error (from held-out sums, in the eigenbasis of the fitting part), then the map is
  refitted on all tokens.

Every token of every heal prompt counts (a shared few-shot prefix once, padding never): the
map must keep the whole residual stream the later layers read, not only the answer position.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch

from phaseprune.core.errors import UsageError
from phaseprune.engine.heal_sums import Pass, SourceHooks, Sums, run_pass, source_pass
from phaseprune.engine.layer_cache import group_batches, resume_prefix
from phaseprune.engine.readout import common_prefix
from phaseprune.model.arch import decoder_parts
from phaseprune.model.healing import check_model, fold, swapped
from phaseprune.model.surgery import kept_layers, without_layers

RIDGES = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)
"""Ridge values tried, relative to the mean eigenvalue of ``X^T X`` (plus no map at all).

The grid reaches 100 because Qwen2.5-Coder-1.5B chose 1.0, the old edge, at every kept map
(3.8k and 9.7k heal tokens); a large ridge is a short step from the unhealed layer."""
HELD_EVERY = 4
"""Every ``HELD_EVERY``-th heal prompt (the last of each four) is held out to choose the ridge."""


@dataclass(frozen=True)
class HealSite:
    """Which kept layer a removal's map goes into, what it must match, and where to read it."""

    layer: int
    """Original index of the kept layer whose output projection takes the map."""
    boundary: int
    """Original index of the layer whose unpruned output the healed layer's output matches."""
    view: tuple[int, ...]
    """Removed layers of the model the source is read in (the current model, or with the
    removal too when the healed layer comes after it)."""


def heal_site(n_layers: int, removed: Sequence[int], k: int | Sequence[int]) -> HealSite:
    """Where the map for removing ``k`` (a layer or a block) after ``removed`` goes.

    See the module docstring for the rules.
    """
    block = [k] if isinstance(k, int) else list(k)
    after = kept_layers(n_layers, [*removed, *block])
    before = [j for j in after if j < min(block)]
    if before:
        layer, view = before[-1], tuple(removed)  # the removal is after it: its input is unchanged
    else:
        layer, view = after[0], (*removed, *block)
    later = [j for j in after if j > layer]
    return HealSite(layer, (later[0] - 1) if later else n_layers - 1, view)


@dataclass(frozen=True)
class HealData:
    """Token ids of the prompts maps are fitted on."""

    rows: list[list[int]]
    """One token list per prompt."""
    groups: list[list[int]] | None = None
    """Prompts sharing a few-shot prefix (run once per group); None: no sharing."""
    source: dict = field(default_factory=dict)
    """What the prompts are, for the run's record."""

    def __post_init__(self):
        if len(self.rows) < HELD_EVERY:
            raise UsageError(
                f"--heal linear needs at least {HELD_EVERY} heal prompts (one in {HELD_EVERY} "
                f"is held out to choose the ridge); got {len(self.rows)}: add --heal-items"
            )

    def record(self) -> dict:
        """The heal data's size and digest, for the trajectory."""
        digest = hashlib.sha256()
        for row in self.rows:
            digest.update(np.asarray(row, dtype=np.int64).tobytes() + b"|")
        held = sum(1 for i in range(len(self.rows)) if i % HELD_EVERY == HELD_EVERY - 1)
        return {**self.source, "prompts": len(self.rows), "held_out_prompts": held,
                "tokens_sha256": digest.hexdigest()}  # fmt: skip


@dataclass
class HealFit:
    """One fitted map and what its fit measured."""

    site: HealSite
    map: torch.Tensor | None
    """``(d_model, d_model)`` float64 map, or None where no map beat the unhealed layer on the
    held-out tokens."""
    record: dict


def _solve(stats: Sums, site: HealSite) -> HealFit:
    """Choose the ridge on the held-out part, then fit on every token (module docstring)."""
    d = stats.a.shape[0]
    a_fit, b_fit = stats.a - stats.a_held, stats.b - stats.b_held
    s, q = torch.linalg.eigh(a_fit)
    c = q.T @ b_fit  # D(lam) = q diag(1 / (s + lam)) c
    g = q.T @ stats.b_held
    h = q.T @ stats.a_held @ q
    k = c @ c.T
    cg = (c * g).sum(1)
    mean = float(a_fit.diagonal().sum()) / d
    errors = {None: stats.e_held}
    for rel in RIDGES:
        inv = 1.0 / (s.clamp_min(0) + rel * mean)
        errors[rel] = (
            stats.e_held
            - 2 * float((inv * cg).sum())
            + float((h * k * inv[:, None] * inv[None, :]).sum())
        )
    best = min(errors, key=lambda r: (errors[r], -math.inf if r is None else -r))
    n_held = max(stats.held_tokens * d, 1)
    record = {
        "layer": site.layer,
        "boundary": site.boundary,
        "ridge": best,
        "tokens": stats.tokens,
        "held_out_tokens": stats.held_tokens,
        "held_out_mse_unhealed": stats.e_held / n_held,
        "held_out_mse": errors[best] / n_held,
    }
    if best is None:
        return HealFit(site, None, record)
    lam = best * float(stats.a.diagonal().sum()) / d
    eye = torch.eye(d, dtype=torch.float64, device=stats.a.device)
    delta = torch.linalg.solve(stats.a + lam * eye, stats.b)
    t = (eye + delta).cpu()
    record["map_sha256"] = hashlib.sha256(t.numpy().tobytes()).hexdigest()
    return HealFit(site, t, record)


def maps_after(
    maps: dict[int, torch.Tensor], removed: Sequence[int], fit: HealFit | None
) -> dict[int, torch.Tensor]:
    """The maps a model holds after a step.

    The removed layers' maps are dropped, then ``fit``'s layer gets ``fit``'s map (or none,
    where the fit kept no map).
    """
    gone = set(removed)
    out = {k: t for k, t in maps.items() if k not in gone}
    if fit is not None:
        out.pop(fit.site.layer, None)
        if fit.map is not None:
            out[fit.site.layer] = fit.map
    return out


class LinearHealer:
    """The maps of one pruning run: fitted, folded into the model, and taken out again.

    While a run holds it, the model's output projections carry the current maps
    (:meth:`apply`); :meth:`original` shows the unhealed weights for a while (the unpruned
    targets, one-shot rankings), :meth:`trying` one candidate's map. :meth:`close` restores
    the model.
    """

    def __init__(
        self, model, data: HealData, *, max_tokens: int = 8192, target_budget: int | None = None
    ):
        self.model = model
        self.modules = check_model(model)
        self.n_layers = len(self.modules)
        self.originals = {k: (m.weight, m.bias) for k, m in self.modules.items()}
        self.data = data
        self.max_tokens = max_tokens
        self.layers = list(decoder_parts(model).layers)  # by original index
        self.maps: dict[int, torch.Tensor] = {}
        self._folds: dict[int, tuple] = {}  # layer -> (map, its folded parameters)
        self._active: dict[int, tuple] = {}
        self._stack = ExitStack()
        # the unpruned model's states on the heal prompts never change: kept while they fit
        self.target_budget = target_budget
        self._targets: dict[tuple, Pass] = {}
        self._target_bytes = 0

    def _enter(self, params: dict) -> None:
        self._stack.close()
        self._stack = ExitStack()
        self._stack.enter_context(swapped(self.modules, params))
        self._active = params

    @contextmanager
    def _holding(self, params: dict) -> Iterator[None]:
        outer = self._active
        self._enter(params)
        try:
            yield
        finally:
            self._enter(outer)

    def _params(self, maps: dict[int, torch.Tensor]) -> dict[int, tuple]:
        """The folded parameters of ``maps``, each map folded once.

        Search mode tries every candidate's map on every group of items, and the chosen one
        is folded in again at :meth:`apply`; until then each candidate's fold is kept.
        """
        params = {}
        for k, t in maps.items():
            if k not in self._folds or self._folds[k][0] is not t:
                self._folds[k] = (t, fold(self.modules[k], t, self.originals[k]))
            params[k] = self._folds[k][1]
        return params

    def apply(self, removed: Sequence[int], fit: HealFit | None) -> None:
        """The model after a step: maps of removed layers dropped, ``fit``'s folded in."""
        self.maps = maps_after(self.maps, removed, fit)
        self._enter(self._params(self.maps))
        self._folds = {k: v for k, v in self._folds.items() if k in self.maps}  # the step's

    def reweighted(self) -> tuple[int, ...]:
        """The layers whose output projections hold a map now (none inside :meth:`original`)."""
        return tuple(sorted(self._active))

    def original(self):
        """Context: the model with every layer's own weights, inside the block."""
        return self._holding({})

    def trying(self, fit: HealFit):
        """Context: the current maps with ``fit``'s in place of its layer's."""
        return self._holding(self._params(maps_after(self.maps, (), fit)))

    def close(self) -> None:
        """Give the model its own weights back."""
        self._stack.close()

    @torch.inference_mode()
    def fit(self, removed: Sequence[int], candidates: Sequence) -> dict:
        """The map each candidate removal (after ``removed``) would get, fitted together.

        The unpruned model runs once over the heal prompts, the current model once, and the
        model without a candidate once more only when that candidate is the first kept
        layer; every map's sums accumulate from those passes. A candidate is a layer or a
        block (a tuple of layers removed together); the result is keyed by it.
        """
        sites = {k: heal_site(self.n_layers, removed, k) for k in candidates}
        stats: dict[int, Sums] = {}
        d = self.modules[0].weight.shape[0 if isinstance(self.modules[0], torch.nn.Linear) else 1]
        device = self.modules[0].weight.device
        for k in candidates:
            stats[k] = Sums(d, device)
        views: dict[tuple, list[int]] = {}
        for k, site in sites.items():
            views.setdefault(site.view, []).append(k)
        spans = {v: self._span(v, [sites[k].layer for k in keys]) for v, keys in views.items()}
        rows, groups = self.data.rows, self.data.groups
        for g, group in enumerate(groups or [list(range(len(rows)))]):
            group = list(group)
            n = common_prefix([rows[i] for i in group]) if groups and len(group) > 1 else 0
            head = [rows[group[0]][:n]]
            target_prefix = None
            if n:
                target_prefix = self._unpruned(
                    ("prefix", g), lambda p, head=head: run_pass(p, head, None, shared=True)
                )
            prefixes = {}
            for view, keys in views.items():
                if n:
                    start, cut = spans[view]
                    with without_layers(self.model, cut) as parts:
                        hooks = self._hooks([(sites[k], stats[k]) for k in keys])
                        with hooks.on(target_prefix, None, [False]):
                            prefixes[view] = resume_prefix(parts, start, target_prefix.prefix)
            for b, sub in enumerate(group_batches(rows, group, n, self.max_tokens)):
                own = [rows[group[j]][n:] for j in sub]
                held = [group[j] % HELD_EVERY == HELD_EVERY - 1 for j in sub]
                targets = self._unpruned(
                    ("batch", g, b), lambda p, own=own, t=target_prefix: run_pass(p, own, t)
                )
                for view, keys in views.items():
                    start, cut = spans[view]
                    with without_layers(self.model, cut) as parts:
                        hooks = self._hooks([(sites[k], stats[k]) for k in keys])
                        with hooks.on(targets, targets.mask, held):
                            source_pass(parts, start, own, targets, prefixes.get(view))
        return {k: _solve(stats[k], sites[k]) for k in candidates}

    def _span(self, view: tuple[int, ...], layers: list[int]) -> tuple[int, list[int]]:
        """Where a source pass in the model without ``view`` starts, and the layers it drops.

        The current model's layers before its first removed or re-weighted layer compute what
        the unpruned model computes, so the pass resumes there from the unpruned states (the
        fit's targets, run anyway); the sources are read at ``layers`` (the healed layers), so
        the layers after the last of them are dropped. A tail cut healed at layer 24 of 28
        runs one layer instead of 28. ``start`` is also the position in the cut model (no
        layer before it is removed).
        """
        start = min([*view, *self._active, *layers])
        return start, sorted({*view, *range(max(layers) + 1, self.n_layers)})

    def _hooks(self, sites: list) -> SourceHooks:
        return SourceHooks(self.modules, self.originals, self.layers, sites)

    def _unpruned(self, key: tuple, run) -> Pass:
        """``run(parts)`` on the unpruned, unhealed model, kept while ``target_budget`` allows.

        What is kept is every layer's state: ``(L + 1) x tokens x d_model`` values in all.
        """
        if key in self._targets:
            return self._targets[key]
        with self.original(), without_layers(self.model, []) as parts:
            value = run(parts)
        size = sum(t.numel() * t.element_size() for t in value.states)
        if self.target_budget is None or self._target_bytes + size <= self.target_budget:
            self._targets[key] = value
            self._target_bytes += size
        return value
