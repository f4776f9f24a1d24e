"""What one forward pass over the heal prompts adds to each healing map's sums.

:mod:`phaseprune.engine.healing` fits a map per removal from float64 sums of ``X^T X`` and
``X^T E`` (:class:`Sums`): ``X`` is the healed layer's MLP output with its own weights, ``E``
the gap between the unpruned model's state at the boundary and that layer's unhealed output.
:func:`run_pass` runs a batch (or a group's shared prefix) keeping every layer's state;
:class:`SourceHooks` read ``X`` and ``E`` while the current model runs, and add them up.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from phaseprune.engine.layer_cache import SharedPrefix, capture, resume
from phaseprune.engine.readout import pad_batch
from phaseprune.model.arch import layer_output


class Sums:
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


@dataclass
class Pass:
    """One forward pass's states: every layer's input and the last output, plus its mask."""

    states: list[torch.Tensor]
    mask: torch.Tensor | None
    prefix: SharedPrefix | None


def run_pass(parts, own: list[list[int]], prefix: Pass | None, *, shared: bool = False) -> Pass:
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
    return Pass([*inputs, final], mask, keep)


def source_pass(
    parts, start: int, own: list[list[int]], targets: Pass, prefix: SharedPrefix | None
) -> None:
    """Run the rows through ``parts`` from layer ``start``, from the unpruned states there.

    ``targets`` is the unpruned model's pass over the same rows (same padding): its input to
    layer ``start`` is the current model's while no layer before ``start`` differs. ``prefix``
    is the group's shared prefix in ``parts`` (from :func:`~.layer_cache.resume_prefix`).
    The hooks read what they need on the way; nothing is kept.
    """
    device = parts.embed.weight.device
    tokens, mask, _ = pad_batch(own, range(len(own)))
    tokens, mask = tokens.to(device), mask.to(device)
    forward = (prefix or SharedPrefix(0)).forward_args(mask)
    resume(parts, start, targets.states[start], tokens, keep_inputs=False, **forward)


class SourceHooks:
    """Hooks reading each site's source in one pass and adding to its sums.

    ``modules``, ``originals`` and ``layers`` are the unpruned model's output projections,
    their own ``(weight, bias)`` and its decoder layers, by original index; ``sites`` pairs
    each :class:`~phaseprune.engine.healing.HealSite` with its :class:`Sums`.
    """

    def __init__(self, modules: dict, originals: dict, layers: list, sites: list[tuple]):
        self.modules, self.originals, self.layers, self.sites = modules, originals, layers, sites
        self.mlp_out: dict[int, torch.Tensor] = {}

    @contextmanager
    def on(self, targets: Pass, mask, held: list[bool]) -> Iterator[None]:
        """Hooks on while the current model runs one batch.

        ``targets`` are the unpruned states on that batch, ``mask`` its padding and ``held``
        its held-out rows.
        """
        handles = []
        for site, stats in self.sites:
            module = self.modules[site.layer]
            block = self.layers[site.layer]
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
            own_w, own_b = self.originals[k]
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

    def _layer(self, site, stats: Sums, targets: Pass, mask, held: list[bool]):
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
