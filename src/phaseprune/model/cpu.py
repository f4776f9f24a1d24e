"""What this CPU offers torch, and how many threads to give it.

Two facts decide a CPU run's speed: bfloat16 matrix units (AMX, AVX512-BF16), which torch
drives through oneDNN (without them bfloat16 is emulated and slower than float32), and free
cores: the affinity mask and a cgroup quota cap them, and other processes' load shares them.
Oversubscribing is costly: torch threads that wait on each other for a shared core slow every
forward several-fold (see docs/dtypes-and-threads.md), hence :func:`busy_cores` and
:func:`busy_warning`.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path


def bf16_units(cpuinfo: str | None = None) -> str | None:
    """The bfloat16 matrix units named in ``cpuinfo`` (read from /proc/cpuinfo when None).

    ``"amx_bf16"`` needs both the ``amx_bf16`` and ``amx_tile`` flags; else ``"avx512_bf16"``;
    else None, also when there is no /proc/cpuinfo (off Linux).
    """
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return None
    lines = (line.partition(":") for line in cpuinfo.splitlines())
    flags = set(next((value for key, _, value in lines if key.strip() == "flags"), "").split())
    if {"amx_bf16", "amx_tile"} <= flags:
        return "amx_bf16"
    return "avx512_bf16" if "avx512_bf16" in flags else None


def _cgroup_quota(root: Path) -> float | None:
    """The cgroup CPU quota in cores (v2 ``cpu.max``, else v1 CFS), or None for no limit."""
    try:
        quota, period = (root / "sys/fs/cgroup/cpu.max").read_text().split()[:2]
        return int(quota) / int(period) if quota != "max" and int(period) > 0 else None
    except (OSError, ValueError):
        pass
    v1 = root / "sys/fs/cgroup/cpu"
    try:
        us = [int((v1 / f"cpu.cfs_{name}_us").read_text()) for name in ("quota", "period")]
    except (OSError, ValueError):
        return None
    return us[0] / us[1] if us[0] > 0 and us[1] > 0 else None  # quota -1: no limit


def available_cores(root: str = "/") -> int:
    """Cores this process may use: its affinity mask, capped by a cgroup quota rounded up.

    ``root`` holds ``sys/fs/cgroup``; tests point it at a fake tree.
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    quota = _cgroup_quota(Path(root))
    if quota is not None:
        cores = min(cores, math.ceil(quota))
    return max(1, cores)


@dataclass(frozen=True)
class ThreadPlan:
    """How many threads torch gets, and why."""

    threads: int
    """Threads for ``torch.set_num_threads``."""
    source: str
    """Where ``threads`` came from: ``"OMP_NUM_THREADS"`` or ``"cores available"``."""
    cores: int
    """Cores this process may use (:func:`available_cores`)."""
    bf16: str | None
    """bfloat16 matrix units (:func:`bf16_units`), None when bfloat16 is emulated."""


def plan_threads(env: Mapping[str, str] = os.environ, root: str = "/") -> ThreadPlan:
    """Honour a positive integer ``OMP_NUM_THREADS``, else use every available core.

    An invalid ``OMP_NUM_THREADS`` ("abc", "0") is ignored with a warning; an empty one is unset.
    """
    cores, bf16 = available_cores(root), bf16_units()
    raw = env.get("OMP_NUM_THREADS", "").strip()
    if raw:
        if raw.isdigit() and int(raw) > 0:
            return ThreadPlan(int(raw), "OMP_NUM_THREADS", cores, bf16)
        msg = f"ignoring OMP_NUM_THREADS={raw!r} (not a positive integer); using {cores} threads"
        warnings.warn(f"{msg}, the cores available", stacklevel=2)
    return ThreadPlan(cores, "cores available", cores, bf16)


def apply_threads(plan: ThreadPlan) -> None:
    """Give torch ``plan.threads`` intra-op threads."""
    import torch  # here, so that importing this module stays light

    torch.set_num_threads(plan.threads)


def _cpu_jiffies(stat_path: str) -> int | None:
    """Busy jiffies of all CPUs: user..steal from the ``cpu`` line, less idle and iowait."""
    try:
        with open(stat_path) as f:
            name, *values = f.readline().split()
        fields = [int(x) for x in values[:8]]  # guest time is already counted in user
    except (OSError, ValueError):
        return None
    return sum(fields) - fields[3] - fields[4] if name == "cpu" and len(fields) >= 5 else None


def busy_cores(sample_s: float = 0.25, stat_path: str = "/proc/stat") -> float | None:
    """Cores kept busy by other processes over ``sample_s`` s (this one's CPU time subtracted).

    None when ``stat_path`` cannot be read.
    """
    first, wall0, own0 = _cpu_jiffies(stat_path), time.monotonic(), time.process_time()
    if first is None:
        return None
    time.sleep(sample_s)
    second, wall = _cpu_jiffies(stat_path), time.monotonic() - wall0
    own = time.process_time() - own0  # all of this process's threads
    if second is None or wall <= 0:
        return None
    others_s = (second - first) / os.sysconf("SC_CLK_TCK") - own
    return max(0.0, others_s / wall)


def busy_warning(plan: ThreadPlan, busy: float | None) -> str | None:
    """One line when other processes' load would oversubscribe ``plan``'s cores, else None."""
    if busy is None or busy < 0.5 or busy + plan.threads <= plan.cores + 0.25:
        return None
    idle = max(1, math.floor(plan.cores - busy + 0.25))
    return (
        f"other processes keep about {busy:.1f} of the {plan.cores} cores busy: torch with "
        f"{plan.threads} threads will run several times slower (two 2-thread torch processes "
        "on 2 cores slowed candidate scoring 7x); wait for them to finish, or set "
        f"OMP_NUM_THREADS={idle} to use only the idle cores"
    )


def describe(plan: ThreadPlan) -> str:
    """One short line for logs, e.g. ``"2 threads (cores available), bfloat16 units: amx_bf16"``."""
    units = plan.bf16 or "none (emulated, slower than float32)"
    return f"{plan.threads} threads ({plan.source}), bfloat16 units: {units}"


def use_cores(*, check_busy: bool) -> None:
    """Give torch one thread per core this process may use (``OMP_NUM_THREADS`` wins).

    With ``check_busy``, warn when other processes already keep those cores busy: torch
    processes sharing cores slow each other several times over (docs/benchmarks.md).
    """
    plan = plan_threads()
    apply_threads(plan)
    message = busy_warning(plan, busy_cores()) if check_busy else None
    if message:
        warnings.warn(message, stacklevel=3)
