"""CPU features, cores under cgroup quotas, thread plans and the busy-CPU check."""

import os
import subprocess
import sys
import time
import warnings

import pytest

from phaseprune.model.cpu import (
    ThreadPlan,
    apply_threads,
    available_cores,
    bf16_units,
    busy_cores,
    busy_warning,
    describe,
    plan_threads,
)


def cpuinfo(flags):
    return f"processor\t: 0\nmodel name\t: Fake CPU\nflags\t\t: fpu sse2 avx2 {flags}\n\n"


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ("avx512f amx_bf16 amx_tile amx_int8 avx512_bf16", "amx_bf16"),
        ("avx512f avx512_bf16", "avx512_bf16"),
        ("avx512f avx512_vnni", None),
        ("amx_bf16", None),  # AMX without tile support is not usable
        ("amx_bf16 avx512_bf16", "avx512_bf16"),
    ],
)
def test_bf16_units_reads_the_flags_line(flags, expected):
    assert bf16_units(cpuinfo(flags)) == expected


def test_bf16_units_without_a_flags_line_is_none():
    assert bf16_units("") is None
    assert bf16_units("processor\t: 0\nfeatures\t: amx_bf16 amx_tile\n") is None


@pytest.fixture
def eight_cpus(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)


def cgroup_v2(root, text):
    path = root / "sys/fs/cgroup"
    path.mkdir(parents=True)
    (path / "cpu.max").write_text(text)
    return str(root)


def cgroup_v1(root, quota, period=100000):
    path = root / "sys/fs/cgroup/cpu"
    path.mkdir(parents=True)
    (path / "cpu.cfs_quota_us").write_text(f"{quota}\n")
    (path / "cpu.cfs_period_us").write_text(f"{period}\n")
    return str(root)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("200000 100000\n", 2),
        ("150000 100000\n", 2),  # 1.5 cores rounds up
        ("50000 100000\n", 1),
        ("max 100000\n", 8),
        ("1600000 100000\n", 8),  # never above the affinity mask
    ],
)
def test_available_cores_under_cgroup_v2(tmp_path, eight_cpus, text, expected):
    assert available_cores(cgroup_v2(tmp_path, text)) == expected


@pytest.mark.parametrize(("quota", "expected"), [(200000, 2), (150000, 2), (-1, 8), (1600000, 8)])
def test_available_cores_under_cgroup_v1(tmp_path, eight_cpus, quota, expected):
    assert available_cores(cgroup_v1(tmp_path, quota)) == expected


def test_available_cores_without_cgroup_files_is_the_affinity_count(tmp_path, eight_cpus):
    assert available_cores(str(tmp_path)) == 8


def test_available_cores_here_is_within_the_affinity_mask():
    assert 1 <= available_cores() <= len(os.sched_getaffinity(0))


def test_omp_num_threads_wins(tmp_path, eight_cpus):
    plan = plan_threads({"OMP_NUM_THREADS": "1"}, root=str(tmp_path))
    assert (plan.threads, plan.source, plan.cores) == (1, "OMP_NUM_THREADS", 8)


def test_without_omp_num_threads_every_available_core_is_used(tmp_path, eight_cpus):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plan = plan_threads({}, root=cgroup_v2(tmp_path, "300000 100000"))
    assert (plan.threads, plan.source, plan.cores) == (3, "cores available", 3)
    assert plan.bf16 == bf16_units()


@pytest.mark.parametrize("value", ["abc", "0", "-2", "1.5"])
def test_invalid_omp_num_threads_warns_and_uses_the_cores(tmp_path, eight_cpus, value):
    with pytest.warns(UserWarning, match=f"OMP_NUM_THREADS='{value}'.*using 8 threads"):
        plan = plan_threads({"OMP_NUM_THREADS": value}, root=str(tmp_path))
    assert (plan.threads, plan.source) == (8, "cores available")


def test_apply_threads_sets_torch_threads():
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    try:
        apply_threads(ThreadPlan(1, "OMP_NUM_THREADS", 2, None))
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="needs Linux /proc/stat")
def test_busy_cores_sees_another_process_spinning():
    child = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        assert busy_cores(sample_s=0.5) >= 0.5
    finally:
        child.kill()
        child.wait()


def test_busy_cores_on_an_unreadable_stat_file_is_none(tmp_path):
    assert busy_cores(sample_s=0.0, stat_path=str(tmp_path / "missing")) is None


def test_busy_warning_when_another_process_holds_a_core():
    message = busy_warning(ThreadPlan(2, "cores available", 2, None), 1.0)
    assert message is not None and "\n" not in message
    assert "about 1.0 of the 2 cores busy" in message
    assert "with 2 threads" in message and "OMP_NUM_THREADS=1" in message


@pytest.mark.parametrize("busy", [0.1, 0.4, None])
def test_no_busy_warning_on_an_idle_machine(busy):
    assert busy_warning(ThreadPlan(2, "cores available", 2, None), busy) is None


def test_no_busy_warning_when_the_plan_leaves_the_busy_core_free():
    assert busy_warning(ThreadPlan(1, "OMP_NUM_THREADS", 2, None), 1.0) is None


def test_describe_names_threads_source_and_units():
    plan = ThreadPlan(2, "cores available", 2, "amx_bf16")
    assert describe(plan) == "2 threads (cores available), bfloat16 units: amx_bf16"
    assert "none" in describe(ThreadPlan(1, "OMP_NUM_THREADS", 2, None))
