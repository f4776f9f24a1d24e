"""Data parallel over items on ``torch.distributed``: shards, gathers, and one writer.

Launched as the ecosystem launches evaluation (lm-evaluation-harness does the same):
``torchrun --nproc_per_node N -m phaseprune prune ...`` (multi-node through torchrun's
``--nnodes``/``--rdzv-*`` flags), or on GPUs ``accelerate launch --multi_gpu --num_processes N
-m phaseprune ...``.
The launcher sets ``WORLD_SIZE``, ``RANK`` and the rendezvous; without one, or with one
process, nothing here changes anything.

Every process holds the whole model and runs the same run. The item-wise work, the only
costly part, is split: :func:`item_shard` gives each process a share of the items balanced by
token count, a few-shot subject group kept whole where the balance allows (its shared prefix
then runs on one process only). :func:`phaseprune.engine.readout.read_options`,
:func:`phaseprune.engine.candidates.score_removals`,
:func:`phaseprune.engine.candidates.final_readout` and
:class:`phaseprune.engine.incremental.IncrementalReadout` run on the process's shard and gather
every process's per-item rows (:meth:`Shard.gather`), so each process holds the same full arrays,
reaches the same decisions from the same numbers, and process 0 alone writes the run.
Work that is not per item (the one-shot hidden-state rankings, lm-eval's scores) runs whole on
every process, or on process 0 and is broadcast. Collectives time out after
``PHASEPRUNE_DIST_TIMEOUT`` seconds (1800 by default), so a process left alone stops with a
message instead of waiting forever; torchrun itself stops the others when one dies.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import timedelta

import torch

from phaseprune.core.errors import UsageError

_LOCAL: ContextVar[bool] = ContextVar("phaseprune_local", default=False)
DEFAULT_TIMEOUT_S = 1800.0
COMMUNICATION = {"seconds": 0.0, "bytes_sent": 0, "gathers": 0}
"""This process's time in gathers (waiting for the slowest process included), the bytes of
rows it sent, and the gathers made, since the process started."""


def launched() -> bool:
    """Whether a launcher started this process as one of several (``WORLD_SIZE`` > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def _dist():
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


def world() -> int:
    """Processes in the run (1 without a launcher)."""
    dist = _dist()
    return dist.get_world_size() if dist else 1


def rank() -> int:
    """This process's rank (0 without a launcher)."""
    dist = _dist()
    return dist.get_rank() if dist else 0


def is_main() -> bool:
    """Whether this process writes the run and prints (rank 0)."""
    return rank() == 0


def launched_as_main() -> bool:
    """Whether the launcher made this process rank 0 (its ``RANK``): known before :func:`join`."""
    return int(os.environ.get("RANK", "0")) == 0


def same_everywhere(value, what: str) -> None:
    """Refuse, on every process at once, a launch whose processes were given other ``value``s.

    Each process's ``value`` (its settings) is gathered; where one differs from process 0's,
    every process raises the same one-line error before any work, instead of a traceback
    at the end of the run.
    """
    dist = _dist()
    if not dist:
        return
    values = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    odd = [i for i, v in enumerate(values) if v != values[0]]
    if odd:
        raise UsageError(
            f"process {odd[0]} of the launch was given other {what} than process 0: start "
            "every process with the same command"
        )


def timeout_s() -> float:
    """Seconds a collective waits for the other processes (``PHASEPRUNE_DIST_TIMEOUT``)."""
    return float(os.environ.get("PHASEPRUNE_DIST_TIMEOUT", DEFAULT_TIMEOUT_S))


def local_device(device: str) -> str:
    """``--device cuda`` means this process's GPU (``cuda:LOCAL_RANK``) when launched."""
    if device == "cuda" and launched():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return device


def gpu_share() -> list[int] | None:
    """``--device auto`` with several processes on a machine: this process's GPUs.

    A machine's GPUs are dealt out in equal consecutive blocks by ``LOCAL_RANK`` (8 GPUs and
    4 processes: 2 each); None when one process has the machine (it takes every GPU).
    """
    per_machine = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if not launched() or per_machine <= 1 or not torch.cuda.is_available():
        return None
    n = torch.cuda.device_count()
    k = n // per_machine
    if k == 0:
        raise UsageError(
            f"--device auto: {per_machine} processes share this machine's {n} GPU(s); launch "
            f"at most {n} per machine (--nproc_per_node)"
        )
    first = int(os.environ.get("LOCAL_RANK", "0")) * k
    return list(range(first, first + k))


def join(device: str) -> int:
    """Join the launcher's process group (once); return the number of processes.

    The backend is NCCL for CUDA devices and gloo otherwise. With ``--device auto`` each
    process spreads its model over its share of the machine's GPUs (:func:`gpu_share`).
    """
    import torch.distributed as dist

    if not launched():
        return 1
    if not dist.is_initialized():
        cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
        if cuda and device != "auto":
            torch.cuda.set_device(torch.device(local_device(device)))
        elif cuda and (share := gpu_share()):
            torch.cuda.set_device(share[0])  # NCCL's collectives run on the share's first GPU
        dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(seconds=timeout_s()))
    return dist.get_world_size()


def leave() -> None:
    """Leave the process group (at the end of a command)."""
    dist = _dist()
    if dist:
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for every process (nothing without a launcher)."""
    dist = _dist()
    if dist:
        dist.barrier()


def broadcast(value):
    """Process 0's ``value`` on every process (pickled)."""
    dist = _dist()
    if not dist:
        return value
    box = [value if is_main() else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def on_main(fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` computed by process 0 and handed to every process.

    For what only process 0 can read (the run directory, which other machines may not see).
    An exception raised there is raised on every process, so none waits for an answer.
    """
    if not _dist():
        return fn(*args, **kwargs)
    outcome = None
    if is_main():
        try:
            outcome = (True, fn(*args, **kwargs))
        except Exception as err:  # re-raised below, here and on the other processes
            outcome = (False, err)
    ok, value = broadcast(outcome)
    if not ok:
        raise value
    return value


@contextmanager
def local_only() -> Iterator[None]:
    """Inside, the item-wise functions run on the items they are given, without sharding.

    For a caller that already holds its shard, and for work whose per-item rows are too large
    to gather (full-vocabulary distributions): it then runs whole on every process.
    """
    token = _LOCAL.set(True)
    try:
        yield
    finally:
        _LOCAL.reset(token)


def plan_shards(
    lengths: Sequence[int], groups: Sequence[Sequence[int]] | None, n_shards: int
) -> list[list[int]]:
    """Split items into ``n_shards`` lists of indices balanced by token count.

    Units start as the groups (items sharing a few-shot prefix; each item alone without
    groups) and go, largest first, to the least loaded shard (ties: the lower index). While the
    most loaded shard holds more than 10% above an even share (or its longest item), its
    largest unit is halved in item order and the units are dealt again; so groups stay whole
    where the balance allows. Every process computes the same plan; each shard's indices are
    ascending.
    """
    units = [list(g) for g in groups] if groups is not None else [[i] for i in range(len(lengths))]
    units = [u for u in units if u]
    limit = max(1.1 * sum(lengths) / n_shards, max(lengths, default=0))

    def cost(unit: list[int]) -> int:
        return sum(lengths[i] for i in unit)

    while True:
        shards: list[list[list[int]]] = [[] for _ in range(n_shards)]
        loads = [0] * n_shards
        for unit in sorted(units, key=lambda u: (-cost(u), u[0])):
            s = min(range(n_shards), key=lambda j: (loads[j], j))
            shards[s].append(unit)
            loads[s] += cost(unit)
        heavy = max(range(n_shards), key=lambda j: (loads[j], -j))
        splittable = [u for u in shards[heavy] if len(u) > 1]
        if loads[heavy] <= limit or not splittable:
            return [sorted(i for u in shard for i in u) for shard in shards]
        big = max(splittable, key=lambda u: (cost(u), -u[0]))
        units.remove(big)
        units += [big[: len(big) // 2], big[len(big) // 2 :]]


@dataclass(frozen=True)
class Shard:
    """This process's items of one item-wise call, and how to gather everyone's rows."""

    items: list[int]
    """Global indices of this process's items, ascending."""
    groups: list[list[int]] | None
    """Its items' prefix groups, as indices into ``items`` (None: the call had none)."""
    n: int
    """Items of the whole call."""

    def take(self, rows: Sequence) -> list:
        """This process's entries of a per-item sequence."""
        return [rows[i] for i in self.items]

    def gather(self, local):
        """Every process's rows in global item order: a tensor, or a dict of tensors.

        ``local`` holds this process's rows (None for an empty shard), first dimension in
        ``items`` order; every process gets the same full result.
        """
        dist = _dist()
        parts: list = [None] * dist.get_world_size()
        started = time.perf_counter()
        local = _to_cpu(local)
        dist.all_gather_object(parts, (self.items, local))
        COMMUNICATION["seconds"] += time.perf_counter() - started
        COMMUNICATION["bytes_sent"] += _nbytes(local)
        COMMUNICATION["gathers"] += 1
        present = [(items, rows) for items, rows in parts if rows is not None]
        if isinstance(present[0][1], dict):
            return {k: _assemble([(i, r[k]) for i, r in present], self.n) for k in present[0][1]}
        return _assemble(present, self.n)


def _nbytes(local) -> int:
    if local is None:
        return 0
    values = local.values() if isinstance(local, dict) else [local]
    return sum(v.numel() * v.element_size() for v in values)


def _to_cpu(local):
    if local is None:
        return None
    if isinstance(local, dict):
        return {k: v.cpu() for k, v in local.items()}
    return local.cpu()


def _assemble(present: list[tuple[list[int], torch.Tensor]], n: int) -> torch.Tensor:
    first = present[0][1]
    out = torch.empty((n, *first.shape[1:]), dtype=first.dtype)
    for items, rows in present:
        out[items] = rows
    return out


def sharding() -> bool:
    """Whether item-wise calls here are split among processes.

    True when launched as several processes, except inside :func:`local_only`.
    """
    return not _LOCAL.get() and world() > 1


def item_shard(
    input_ids: Sequence[Sequence[int]], groups: Sequence[Sequence[int]] | None
) -> Shard | None:
    """This process's shard of an item-wise call, or None to run it whole here.

    None without a launcher, with one process, and inside :func:`local_only`.
    """
    if not sharding():
        return None
    plan = plan_shards([len(ids) for ids in input_ids], groups, world())
    mine = plan[rank()]
    local_groups = None
    if groups is not None:
        where = {g: p for p, g in enumerate(mine)}
        local_groups = [[where[i] for i in g if i in where] for g in groups]
        local_groups = [g for g in local_groups if g]
    return Shard(mine, local_groups, len(input_ids))
