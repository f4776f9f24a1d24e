"""Model-side settings that need no weights: --cache-budget parsing and free memory."""

import pytest
import torch

from phaseprune.core.errors import UsageError
from phaseprune.model import load
from phaseprune.model.load import cache_budget_bytes, free_memory

GB = 1 << 30


@pytest.mark.parametrize(
    ("value", "expected"),
    [("2GB", 2 << 30), ("500MB", 500 << 20), ("1.5GiB", int(1.5 * (1 << 30))), ("4096", 4096)],
)
def test_cache_budget_sizes(value, expected):
    assert cache_budget_bytes(value, "cpu") == expected


def test_cache_budget_share_of_free_memory(monkeypatch):
    asked = []

    def free(device):
        asked.append(device)
        return 8 * GB

    monkeypatch.setattr(load, "free_memory", free)
    assert cache_budget_bytes("0.25", "cpu") == 2 * GB
    assert cache_budget_bytes(".5", "cuda:1") == 4 * GB
    assert cache_budget_bytes("1", "cpu") == 8 * GB
    assert asked == ["cpu", "cuda:1", "cpu"]  # the share is of the run's own device
    assert cache_budget_bytes("2GB", "cpu") == 2 * GB
    assert len(asked) == 3  # a size never reads free memory


def test_free_memory_on_cpu_is_mem_available(monkeypatch):
    meminfo = "MemTotal:  16000000 kB\nMemFree:  1000 kB\nMemAvailable:  123456 kB\n"

    class ProcFile:
        def __init__(self, path):
            assert str(path) == "/proc/meminfo"

        def read_text(self):
            return meminfo

    monkeypatch.setattr(load, "Path", ProcFile)
    assert free_memory("cpu") == 123456 * 1024


def test_free_memory_on_cuda_is_the_least_free_gpu_or_the_one_named(monkeypatch):
    free = [5 * GB, 3 * GB, 7 * GB]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: len(free))
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda i: (free[i], 16 * GB))
    assert free_memory("cuda") == 3 * GB
    assert free_memory("cuda:2") == 7 * GB
    assert free_memory("cuda:0") == 5 * GB


@pytest.mark.parametrize("value", ["lots", "-1GB", "0", "2XB", "1.5"])
def test_cache_budget_bad_values_name_the_fix(value):
    with pytest.raises(UsageError, match="--cache-budget.*2GB"):
        cache_budget_bytes(value, "cpu")
