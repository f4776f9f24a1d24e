"""The all-layer readout of a model that loses layers step by step, recomputing only what changed.

Iterative pruning reads the same items after every removal (the evaluation readout, and
phase-aware's calibration phases). Removing layers whose first position in the current model
is ``p`` leaves every layer input before ``p`` unchanged, so :class:`IncrementalReadout` keeps
the current model's input of every layer at every position of its items (and each group's
shared-prefix KV cache), and the next readout resumes at ``p`` with the layers before it
replaced by stand-ins (:mod:`phaseprune.engine.layer_cache`, shared with candidate scoring).
Removing late layers (``last``, block influence, Decisive-Phase layers) then costs a few
layer passes instead of a full pass; the first readout, or one after layers came back, is a
full pass.

The readout is :func:`~phaseprune.engine.readout.read_options`'s, taken from the cache: index
``l`` is the input of layer ``l`` (the embeddings for 0, the output of layer ``l - 1`` after),
the last index the last layer's output, each through the final norm and the option rows at the
last real position. The batches are read_options' batches, so the values are the same (tested
against it, bit for bit on CPU).

Memory: ``(L + 1) x padded own tokens x d_model`` values for all items at once, growing with
the model's depth and width and the items' length. Past ``cache_budget`` it keeps nothing and
runs a plain :func:`~phaseprune.engine.readout.read_options` per call.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from phaseprune.core.progress import bar as progress_bar
from phaseprune.engine.layer_cache import (
    CachedBatch,
    SharedPrefix,
    group_batches,
    model_layers,
    resume_batch,
    resume_prefix,
    run_batch,
    run_prefix,
    tokens_budget,
)
from phaseprune.engine.readout import read_options
from phaseprune.model.distributed import item_shard, local_only
from phaseprune.model.healing import heal_tags
from phaseprune.model.load import hold_loaded
from phaseprune.model.surgery import kept_layers, without_layers


@dataclass
class _Group:
    """One group's shared prefix and batches, as the current model left them."""

    prefix: SharedPrefix
    batches: list[CachedBatch]


_UNPRUNED: dict | None = None
"""Inside :func:`share_unpruned`: the unpruned model's state per (model, items), shared."""
SHARED_STATES = 4
"""How many unpruned states :func:`share_unpruned` keeps (the oldest goes first)."""


@contextmanager
def share_unpruned() -> Iterator[None]:
    """Let every readout of the same model and items start from one unpruned state.

    Several pruning runs in one process (``hold_models``: the demo, the findings script) read
    the same evaluation items; each run's first readout of a pruned model then resumes from the
    unpruned model's layer inputs, computed once, instead of a full pass. The states are
    never changed in place (a resumed readout builds new lists), so sharing them is safe; they
    stay in memory until the block ends.
    """
    global _UNPRUNED
    outer, _UNPRUNED = _UNPRUNED, ({} if _UNPRUNED is None else _UNPRUNED)
    try:
        yield
    finally:
        _UNPRUNED = outer


class IncrementalReadout:
    """Option logits at every readout index of "model without ``removed``" for fixed items.

    Call it with the removed original indices; a call whose removed set contains the previous
    one's recomputes only from the first newly removed layer.

    Args:
        model: the full (unpruned) causal LM.
        input_ids: one token list per item.
        option_ids: token id of each option.
        groups: item indices sharing a prompt prefix (one per subject), as in read_options.
        max_tokens: padded tokens per forward batch.
        cache_budget: bytes the cached layer inputs may take (None: no limit); past it every
            call is a plain read_options.
        progress: show a progress bar over items.
    """

    def __init__(
        self,
        model,
        input_ids: Sequence[Sequence[int]],
        option_ids: Sequence[int],
        *,
        groups: Sequence[Sequence[int]] | None = None,
        max_tokens: int = 8192,
        cache_budget: int | None = None,
        progress: bool = False,
    ):
        self.model = model
        # launched as several processes, each keeps its shard's state and gathers the rows
        self.shard = item_shard(input_ids, groups)
        if self.shard is not None:
            input_ids, groups = self.shard.take(input_ids), self.shard.groups
        self.ids = list(input_ids)
        self.option_ids = list(option_ids)
        self.groups = [list(g) for g in groups] if groups is not None else None
        self.max_tokens = max_tokens
        self.cache_budget = cache_budget
        self.progress = progress
        self.removed: frozenset[int] | None = None
        self.tags: list[int] = []  # which layers held a healing map when the state was made
        self.state: list[_Group] = []
        self.full_passes = 0  # how many calls ran every layer (for tests and benchmarks)

    def _fits(self, n_kept: int) -> bool:
        budget = tokens_budget(self.model, n_kept, self.cache_budget)
        if budget is None:
            return True
        padded = 0
        for group in self.groups or [range(len(self.ids))]:
            lengths = [len(self.ids[i]) for i in group]
            padded += len(lengths) * max(lengths)  # an upper bound of the batches' padding
        return padded <= budget

    def __call__(self, removed: Sequence[int]) -> torch.Tensor:
        """``(n_items, n_kept + 1, n_options)`` float32 option logits on the CPU."""
        if self.shard is None:
            return self._call(removed)
        local = None
        if self.ids:
            with local_only():
                local = self._call(removed)
        return self.shard.gather(local)

    def probe(self, removed: Sequence[int]) -> torch.Tensor:
        """The readout of ``removed`` without keeping its state.

        The next call resumes from the set before the probe: a probe of a superset of it costs
        only the layers after the newly removed ones, and leaves the cache as it was.
        """
        saved = (self.removed, self.state, self.full_passes, self.tags)
        try:
            return self(removed)
        finally:
            self.removed, self.state, self.full_passes, self.tags = saved

    @torch.inference_mode()
    def _call(self, removed: Sequence[int]) -> torch.Tensor:
        n_layers = len(model_layers(self.model))
        new = frozenset(removed)
        if not self._fits(n_layers - len(new)):
            self.removed, self.state = None, []
            self.full_passes += 1
            with without_layers(self.model, sorted(new)) as parts:
                return read_options(
                    parts,
                    self.ids,
                    self.option_ids,
                    max_tokens=self.max_tokens,
                    progress=self.progress,
                    groups=self.groups,
                )
        tags = heal_tags(self.model)
        stale = self.removed is None or not self.removed <= new
        if stale and new and _UNPRUNED is not None:
            # shared by every run of this process: the unpruned state first (once), then resume
            if self._shared() is None and self._fits(n_layers) and not any(tags):
                self._call(())
            if (shared := self._shared()) is not None:
                self.removed, self.state, stale = frozenset(), shared, False
                self.tags = [0] * n_layers
        bar = progress_bar(len(self.ids), "readout", enabled=self.progress)
        with without_layers(self.model, sorted(new)) as parts:
            if stale:
                self.state = self._full(parts, bar)
                self.full_passes += 1
                if not new and not any(tags):
                    self._share()
            elif (start := self._start(n_layers, new, tags)) is not None:
                self.state = [self._advance(parts, g, start, bar) for g in self.state]
            else:
                bar.update(len(self.ids))
            self.removed, self.tags = new, tags
            out = self._read(parts)
        bar.close()
        return out

    def _start(self, n_layers: int, new: frozenset[int], tags: list[int]) -> int | None:
        """The first position of the model without ``new`` that differs from the cached one.

        A newly removed layer changes everything from its position on; so does a kept layer
        that holds another healing map than when the state was made
        (:func:`~phaseprune.model.healing.heal_tags`). None: nothing changed.
        """
        kept = kept_layers(n_layers, sorted(self.removed))
        changed = [kept.index(k) for k in new - self.removed]
        now = kept_layers(n_layers, sorted(new))
        changed += [p for p, k in enumerate(now) if tags[k] != self.tags[k]]
        return min(changed) if changed else None

    def _key(self) -> str:
        digest = hashlib.sha256(
            repr((self.ids, self.option_ids, self.groups, self.max_tokens)).encode()
        )
        return f"{id(self.model)}:{digest.hexdigest()}"

    def _shared(self) -> list[_Group] | None:
        return None if _UNPRUNED is None else _UNPRUNED.get(self._key())

    def _share(self) -> None:
        if _UNPRUNED is None:
            return
        while len(_UNPRUNED) >= SHARED_STATES:
            del _UNPRUNED[next(iter(_UNPRUNED))]
        _UNPRUNED[self._key()] = self.state

    def _full(self, parts, bar) -> list[_Group]:
        state = []
        for group in self.groups or [list(range(len(self.ids)))]:
            prefix = run_prefix(parts, self.ids, group, self.groups is not None)
            batches = []
            for sub in group_batches(self.ids, group, prefix.n, self.max_tokens):
                batches.append(run_batch(parts, prefix, self.ids, group, sub))
                bar.update(len(sub))
            state.append(_Group(prefix, batches))
        return state

    def _advance(self, parts, old: _Group, start: int, bar) -> _Group:
        """The group's state in ``parts`` (old model minus layers from position ``start`` on)."""
        prefix = resume_prefix(parts, start, old.prefix) if old.prefix.n else old.prefix
        batches = []
        for b in old.batches:
            batches.append(resume_batch(parts, start, b, prefix))
            bar.update(len(b.items))
        return _Group(prefix, batches)

    def _read(self, parts) -> torch.Tensor:
        ids = torch.tensor(self.option_ids, device=parts.unembed.weight.device)
        out = torch.empty(len(self.ids), len(parts.layers) + 1, len(self.option_ids))
        for group in self.state:
            for b in group.batches:
                rows = torch.arange(len(b.items))
                logits = []
                for hidden in [*b.inputs, b.final]:
                    last = hidden[rows.to(hidden.device), b.positions.to(hidden.device)]
                    logits.append(parts.option_logits(last, ids).float().cpu())
                out[b.items] = torch.stack(logits, dim=1)
        return out


@contextmanager
def hold_models() -> Iterator[None]:
    """Load each model once for every command in the block, and share its unpruned readouts.

    Inside the block ``phaseprune demo`` (or a script) runs several commands on one model:
    every load of the same file, dtype and device gets the model loaded first
    (:func:`~phaseprune.model.load.hold_loaded`), and each run's first pruned readout starts
    from the unpruned state (:func:`share_unpruned`).
    """
    with hold_loaded(), share_unpruned():
        yield
