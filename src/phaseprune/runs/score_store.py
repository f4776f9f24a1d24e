"""Option logits of pruned models kept on disk by removed set, shared by every run that needs them.

Strategies compared on the same model and items meet the same pruned models again and again:
every run reads the unpruned model first, the phase-aware variants remove the same
Decisive-Phase layers before they part, and iterative pruning's first step scores every single
removal that phase-aware's ``--spare`` scan scores too. The logits of "the model without
layers R" on a fixed set of items depend only on R (the order of removal does not change the
model), so ``prune --score-cache DIR`` keeps them, and a later run (or a resumed one) reads
them instead of running the model:

- ``eval``: the all-layer evaluation readout of the model without R;
- ``calib``: the all-layer calibration readout of the model without R (phase-aware's phases);
- ``candidates``: each candidate ``k``'s final calibration option logits without R + {k};
- ``nll``: each candidate's calibration-text NLL and token count per item (SLEB, PPL);
- ``js``: each candidate's per-item JS divergence from the unpruned output (logit-js);
- ``unhealed``: a healed run's evaluation readout of the same removals without any map.

A healed run's models depend on the order of removal (each map is fitted on the model the
earlier steps left) and on which maps its objective kept, so its store is keyed by the heal
settings, the objective and the block size too (``heal_run.heal_key``) and its entries by the
removed layers in order.

Candidates are stored one by one as they finish, so an interrupted scan keeps them. A scan
over items in groups (the subjects of few-shot calibration items) keeps each group's values as
a part (kind ``<kind>.parts/<group>``) until the candidate has every group; then the whole
entry is written and its parts dropped.

Entries are keyed by a digest of everything else that determines the numbers (model identity,
the items' token ids and groups, the option tokens, dtype, batch size, the number of processes,
phaseprune's version), so a store can be shared by runs of different strategies, objectives and
stopping rules, and never serves logits computed from other items or another model. Values are
float32 ``.npy`` files (float64 where computed so) written atomically; a half-written entry is
never read.
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from phaseprune.model.distributed import is_main, on_main
from phaseprune.runs.outdir import atomic_write_bytes, fingerprint


class ScoreStore:
    """One folder of cached option logits for one model, item set and setting digest."""

    def __init__(self, root: str | Path, *key_parts, ordered: bool = False):
        self.key = fingerprint(*key_parts)[:24]
        self.ordered = ordered  # healed models: the order of removal changes the model
        self.root = Path(root) / self.key
        self.hits = 0
        self.misses = 0

    def _path(self, kind: str, removed: Iterable[int], candidate: int | None = None) -> Path:
        name = "-".join(str(k) for k in (removed if self.ordered else sorted(removed))) or "none"
        leaf = name if candidate is None else f"{name}+{candidate}"
        return self.root / kind / f"{leaf}.npy"

    def get(self, kind: str, removed: Iterable[int], candidate: int | None = None):
        """The stored array, or None."""
        path = self._path(kind, removed, candidate)
        if not path.exists():
            self.misses += 1
            return None
        self.hits += 1
        return np.load(path)

    def put(self, kind: str, removed: Iterable[int], array, candidate: int | None = None) -> None:
        """Store ``array`` (float64 stays float64, anything else as float32)."""
        path = self._path(kind, removed, candidate)
        path.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        array = np.asarray(array)
        np.save(buffer, array.astype(np.float64 if array.dtype == np.float64 else np.float32))
        atomic_write_bytes(path, buffer.getvalue())

    def fetch(self, kind: str, removed, compute, candidate: int | None = None) -> torch.Tensor:
        """The stored logits, or ``compute()``'s (then stored).

        Under several processes, process 0 reads the store and hands its answer to the others
        (machines need not share the folder), and only process 0 writes.
        """
        found = self.lookup(kind, removed, candidate)
        if found is not None:
            return found
        value = compute()
        self.save(kind, removed, value, candidate)
        return value

    def lookup(self, kind: str, removed, candidate: int | None = None) -> torch.Tensor | None:
        """The stored logits as a tensor (process 0 reads, every process gets them), or None."""
        found = on_main(self.get, kind, list(removed), candidate)
        return None if found is None else torch.from_numpy(found)

    def save(self, kind: str, removed, value: torch.Tensor, candidate: int | None = None) -> None:
        """Keep ``value`` (process 0 writes)."""
        if is_main():
            self.put(kind, removed, value.numpy(), candidate)

    def drop(self, kind: str, removed, candidate: int | None = None) -> None:
        """Forget one entry, if kept (process 0 writes)."""
        if is_main():
            self._path(kind, removed, candidate).unlink(missing_ok=True)

    def record(self, unhealed: ScoreStore | None = None) -> dict:
        """What this process read from and added to the store (for the run's timing record).

        ``unhealed``: a healed run's store of unhealed values, recorded beside.
        """
        out = {"key": self.key, "hits": self.hits, "misses": self.misses}
        return out | ({"unhealed": unhealed.record()} if unhealed else {})
