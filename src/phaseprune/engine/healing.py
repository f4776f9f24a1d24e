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
from phaseprune.engine.layer_cache import SharedPrefix, capture, group_batches
from phaseprune.engine.readout import common_prefix, pad_batch
from phaseprune.model.arch import layer_output
from phaseprune.model.healing import check_model, fold, swapped
from phaseprune.model.surgery import kept_layers, without_layers

RIDGES = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)
"""Ridge values tried, relative to the mean eigenvalue of ``X^T X`` (plus no map at all)."""
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


class _Stats:
    """Float64 sums of one site's fit: fitting and held-out parts."""

    def __init__(self, d: int, device):
        zeros = lambda: torch.zeros(d, d, dtype=torch.float64, device=device)  # noqa: E731
        self.a, self.b, self.a_held, self.b_held = zeros(), zeros(), zeros(), zeros()
        self.e_held = 0.0
        self.tokens = self.held_tokens = 0

    def add(self, x: torch.Tensor, e: torch.Tensor, held: torch.Tensor) -> None:
        """Add tokens ``x`` (source) and ``e`` (gap), ``(n, d)``; ``held`` marks held-out ones."""
        x, e = x.double(), e.double()
        a, b = x.T @ x, x.T @ e
        self.a += a
        self.b += b
        self.tokens += x.shape[0]
        if bool(held.any()):
            xh, eh = x[held], e[held]
            self.a_held += xh.T @ xh
            self.b_held += xh.T @ eh
            self.e_held += float((eh * eh).sum())
            self.held_tokens += xh.shape[0]


def _solve(stats: _Stats, site: HealSite) -> HealFit:
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
        self.maps: dict[int, torch.Tensor] = {}
        self._params: dict[int, tuple] = {}
        self._active: dict[int, tuple] = {}
        self._stack = ExitStack()
        # the unpruned model's states on the heal prompts never change: kept while they fit
        self.target_budget = target_budget
        self._targets: dict[tuple, _Pass] = {}
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

    def apply(self, removed: Sequence[int], fit: HealFit | None) -> None:
        """The model after a step: maps of removed layers dropped, ``fit``'s folded in."""
        for k in [k for k in self.maps if k in set(removed)]:
            del self.maps[k], self._params[k]
        if fit is not None:
            self.maps.pop(fit.site.layer, None)
            self._params.pop(fit.site.layer, None)
            if fit.map is not None:
                self.maps[fit.site.layer] = fit.map
                self._params[fit.site.layer] = fold(self.modules[fit.site.layer], fit.map)
        self._enter(self._params)

    def original(self):
        """Context: the model with every layer's own weights, inside the block."""
        return self._holding({})

    def trying(self, fit: HealFit):
        """Context: the current maps with ``fit``'s in place of its layer's."""
        params = {k: v for k, v in self._params.items() if k != fit.site.layer}
        if fit.map is not None:
            params[fit.site.layer] = fold(self.modules[fit.site.layer], fit.map)
        return self._holding(params)

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
        stats: dict[int, _Stats] = {}
        d = self.modules[0].weight.shape[0 if isinstance(self.modules[0], torch.nn.Linear) else 1]
        device = self.modules[0].weight.device
        for k in candidates:
            stats[k] = _Stats(d, device)
        views: dict[tuple, list[int]] = {}
        for k, site in sites.items():
            views.setdefault(site.view, []).append(k)
        rows, groups = self.data.rows, self.data.groups
        for g, group in enumerate(groups or [list(range(len(rows)))]):
            group = list(group)
            n = common_prefix([rows[i] for i in group]) if groups and len(group) > 1 else 0
            head = [rows[group[0]][:n]]
            target_prefix = None
            if n:
                target_prefix = self._unpruned(
                    ("prefix", g), lambda p, head=head: _run(p, head, None, shared=True)
                )
            prefixes = {}
            for view, keys in views.items():
                if n:
                    with without_layers(self.model, view) as parts:
                        hooks = _Hooks(self, parts, [(sites[k], stats[k]) for k in keys])
                        with hooks.on(target_prefix, None, [False]):
                            prefixes[view] = _run(parts, [rows[group[0]][:n]], None, shared=True)
            for b, sub in enumerate(group_batches(rows, group, n, self.max_tokens)):
                own = [rows[group[j]][n:] for j in sub]
                held = [group[j] % HELD_EVERY == HELD_EVERY - 1 for j in sub]
                targets = self._unpruned(
                    ("batch", g, b), lambda p, own=own, t=target_prefix: _run(p, own, t)
                )
                for view, keys in views.items():
                    with without_layers(self.model, view) as parts:
                        hooks = _Hooks(self, parts, [(sites[k], stats[k]) for k in keys])
                        with hooks.on(targets, targets.mask, held):
                            _run(parts, own, prefixes.get(view))
        return {k: _solve(stats[k], sites[k]) for k in candidates}

    def _unpruned(self, key: tuple, run) -> _Pass:
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


@dataclass
class _Pass:
    """One forward pass's states: every layer's input and the last output, plus its mask."""

    states: list[torch.Tensor]
    mask: torch.Tensor | None
    prefix: SharedPrefix | None


def _run(parts, own: list[list[int]], prefix: _Pass | None, *, shared: bool = False) -> _Pass:
    """Run the rows (after ``prefix``'s shared tokens, if any) keeping every layer's input.

    ``shared``: the one row is a group's shared prefix; its KV cache is kept for the rows.
    """
    device = parts.embed.weight.device
    tokens, mask, _ = pad_batch(own, range(len(own)))
    tokens, mask = tokens.to(device), mask.to(device)
    if prefix is not None:
        forward = prefix.prefix.forward_args(mask)
    elif shared:
        forward = {"use_cache": True}
    else:
        forward = {"attention_mask": mask, "use_cache": False}
    inputs, final, cache = capture(parts, tokens, **forward)
    keep = SharedPrefix(tokens.shape[1], tokens, inputs, cache) if shared else None
    return _Pass([*inputs, final], mask, keep)


class _Hooks:
    """Hooks reading each site's source in one pass and adding to its sums."""

    def __init__(self, healer: LinearHealer, parts, sites: list[tuple[HealSite, _Stats]]):
        self.healer, self.parts, self.sites = healer, parts, sites
        self.mlp_out: dict[int, torch.Tensor] = {}

    @contextmanager
    def on(self, targets: _Pass, mask, held: list[bool]) -> Iterator[None]:
        layers = list(self.parts.layers)
        handles = []
        for site, stats in self.sites:
            module = self.healer.modules[site.layer]
            block = next(m for m in layers if module in m.modules())
            handles.append(module.register_forward_hook(self._projection(site.layer)))
            handles.append(
                block.register_forward_hook(self._layer(site, stats, targets, mask, held))
            )
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def _projection(self, k: int):
        def hook(module, args, output):
            current = output.detach().clone()
            own_w, own_b = self.healer.originals[k]
            if module.weight is own_w:
                self.mlp_out[k] = (current, current)
            else:  # a map is folded in: the layer's own output projection, as it computes it
                x = args[0]
                if isinstance(module, torch.nn.Linear):
                    own = torch.nn.functional.linear(x, own_w, own_b)
                else:  # GPT-2 Conv1D: addmm(bias, x, weight)
                    flat = torch.addmm(own_b, x.reshape(-1, x.shape[-1]), own_w)
                    own = flat.reshape(*x.shape[:-1], own_w.shape[1])
                self.mlp_out[k] = (current, own)

        return hook

    def _layer(self, site: HealSite, stats: _Stats, targets: _Pass, mask, held: list[bool]):
        def hook(module, args, output):
            current, own = self.mlp_out.pop(site.layer)
            hidden = layer_output(output)
            # OPT runs its MLP on (batch * seq, d) rows
            current, own = current.reshape(hidden.shape), own.reshape(hidden.shape)
            unhealed = hidden if own is current else hidden - current + own
            gap = targets.states[site.boundary + 1] - unhealed  # (batch, seq, d)
            real = torch.ones(gap.shape[:2], dtype=torch.bool, device=gap.device)
            if mask is not None:
                real = mask.bool()
            rows = torch.tensor(held, device=gap.device)[:, None].expand_as(real)
            stats.add(own[real], gap[real], rows[real])

        return hook
