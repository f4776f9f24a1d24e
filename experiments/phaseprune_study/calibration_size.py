"""How many calibration items phase-aware's readout decisions need: resampling an analyze run.

Phase-aware pruning places the transition (:func:`phaseprune.core.phases.find_transition`) and cuts
the Decisive tail (:func:`phaseprune.core.phases.tail_cut_index`) from the readout of its
calibration items alone, without scanning candidates. On a few dozen items both can move by
several layers. An ``analyze`` run on more items than the calibration set shows how far:
draw ``n_calib`` of its items without replacement, many times, apply both rules to each draw
exactly as ``prune --strategy phase-aware --decisive tail`` does at its first step, and score
the cut on the items left out of the draw. Removing the last ``n - r`` layers leaves exactly
the readout at index ``r``, so the held-out accuracy of every cut is already in the analyze
run's ``items.parquet``: no forward pass is needed.

The draws describe the rule's variance at a calibration size; they are not a second test of
the pruning (the held-out items come from the same analyze run).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from phaseprune.core.metrics import wilson_interval
from phaseprune.core.phases import find_transition, tail_cut_index


@dataclass(frozen=True)
class TailCutDraws:
    """Phase-aware's first decisions on ``len(cut)`` random calibration sets of one size."""

    n_calib: int
    """Calibration items per draw."""
    n_items: int
    """Items of the analyze run the draws come from."""
    n_readout: int
    """Readout indices (``n_layers + 1``)."""
    transition: np.ndarray
    """``(draws,)`` the transition index found on each draw's items; -1 where none is."""
    cut: np.ndarray
    """``(draws,)`` the readout index the tail rule ends the model at (``n_layers``: no cut,
    also where the draw finds no transition)."""
    held_out: np.ndarray
    """``(draws,)`` accuracy of the readout at ``cut`` on the items outside the draw."""
    held_out_unpruned: np.ndarray
    """``(draws,)`` the whole model's accuracy (the last readout index) on the same items."""

    @property
    def n_layers(self) -> int:
        """Decoder layers of the model (the last readout index)."""
        return self.n_readout - 1

    def summary(self) -> dict:
        """The numbers a reader needs: where the transition and the cut land, what the cut keeps.

        ``layers_cut``: share of draws by layers removed (``n_layers - cut``);
        ``retention``: held-out accuracy at the cut over the whole model's, averaged over draws;
        ``kept_90``: share of draws whose cut keeps at least 90% of it on the held-out items.
        """
        found = self.transition[self.transition >= 0]
        removed = self.n_layers - self.cut
        values, counts = np.unique(removed, return_counts=True)
        retention = np.divide(
            self.held_out,
            self.held_out_unpruned,
            out=np.ones_like(self.held_out),
            where=self.held_out_unpruned > 0,
        )
        return {
            "n_calib": self.n_calib,
            "n_items": self.n_items,
            "draws": int(self.cut.size),
            "p_no_transition": float((self.transition < 0).mean()),
            "transition_median": float(np.median(found)) if found.size else None,
            "transition_range": _range(found),
            "layers_cut": {
                int(v): float(c / self.cut.size) for v, c in zip(values, counts, strict=True)
            },
            "mean_layers_cut": float(removed.mean()),
            "retention": float(retention.mean()),
            "kept_90": float((retention >= 0.9).mean()),
        }


def _range(found: np.ndarray) -> tuple[int, int] | None:
    """The 5th to 95th percentile of the transitions found (None: no draw found one)."""
    if not found.size:
        return None
    lo, hi = np.percentile(found, 5, method="lower"), np.percentile(found, 95, method="higher")
    return int(lo), int(hi)


def readout_arrays(items: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, int]:
    """``items.parquet`` of an analyze run as ``(correct, margin, n_options)``.

    ``correct`` and ``margin`` are ``(n_items, n_readout)``, items in the table's order.
    """
    table = items.sort_values(["item_id", "layer"], kind="stable")
    order = pd.unique(items["item_id"])  # the run's item order
    correct = table.pivot(index="item_id", columns="layer", values="correct").loc[order]
    margin = table.pivot(index="item_id", columns="layer", values="margin").loc[order]
    n_options = sum(c.startswith("logit_") for c in items.columns)
    return correct.to_numpy(bool), margin.to_numpy(np.float64), n_options


def draw_indices(n_items: int, n_calib: int, draws: int, seed: int) -> np.ndarray:
    """``(draws, n_items)``: each row a permutation; its first ``n_calib`` are the draw."""
    rng = np.random.default_rng(seed)
    return np.stack([rng.permutation(n_items) for _ in range(draws)])


def tail_cut_draws(
    correct: np.ndarray,
    margin: np.ndarray,
    n_options: int,
    n_calib: int,
    *,
    draws: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> TailCutDraws:
    """Apply phase-aware's transition and tail rules to ``draws`` random calibration sets.

    Args:
        correct: ``(n_items, n_readout)`` bool, each readout index's pick is gold.
        margin: ``(n_items, n_readout)`` Decision Margins in logits.
        n_options: options per item (chance = 1 / n_options).
        n_calib: items per calibration set; fewer than ``n_items`` (the rest are held out).
        draws: calibration sets drawn (without replacement within a set).
        seed: seed of the draws.
        confidence: level of the accuracy interval of the transition rule (prune's default).
    """
    correct = np.asarray(correct, dtype=bool)
    margin = np.asarray(margin, dtype=np.float64)
    n_items, n_readout = correct.shape
    if not 0 < n_calib < n_items:
        raise ValueError(
            f"n_calib={n_calib}: must be between 1 and {n_items - 1} (the analyze run has "
            f"{n_items} items; some must be left out to score the cut)"
        )
    n = n_readout - 1
    perm = draw_indices(n_items, n_calib, draws, seed)
    transition = np.empty(draws, dtype=int)
    cut = np.empty(draws, dtype=int)
    held_out = np.empty(draws)
    held_out_unpruned = np.empty(draws)
    for d, row in enumerate(perm):
        calib, rest = row[:n_calib], row[n_calib:]
        acc = correct[calib].mean(axis=0)
        low, _ = wilson_interval(correct[calib].sum(axis=0), n_calib, confidence)
        mean_margin = margin[calib].mean(axis=0)
        t = int(find_transition(low, mean_margin, 1.0 / n_options))
        transition[d] = t
        cut[d] = n if t < 0 else tail_cut_index(acc, mean_margin, acc[n], t)
        held_out[d] = correct[rest, cut[d]].mean()
        held_out_unpruned[d] = correct[rest, n].mean()
    return TailCutDraws(
        n_calib=n_calib,
        n_items=n_items,
        n_readout=n_readout,
        transition=transition,
        cut=cut,
        held_out=held_out,
        held_out_unpruned=held_out_unpruned,
    )
