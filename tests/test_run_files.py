"""Run files as a user's own: the umask decides their mode; machine-specific refusals come first."""

from __future__ import annotations

import os
import stat

import pytest
import torch

import phaseprune.runs.loading as loading_module
from phaseprune.cli import main
from phaseprune.runs.outdir import atomic_write_bytes, atomic_write_json


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_follow_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        atomic_write_bytes(tmp_path / "a.bin", b"x")
        atomic_write_json(tmp_path / "b.json", {"k": 1})
        after = os.umask(umask)  # reading the umask means setting it: set the same value
    finally:
        os.umask(old)
    assert after == umask  # the writes read the umask and put it back as they found it
    for name in ("a.bin", "b.json"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "b.json"]  # no temp files


def test_a_run_directory_is_readable_by_the_group(decider, tmp_path, capsys):
    old = os.umask(0o022)
    try:
        argv = ["analyze", "--model", str(decider.path), "--task",
                f"jsonl:{decider.path / 'eval.jsonl'}", "--limit", "8", "--n-boot", "20",
                "--quiet", "--no-plots", "--out", str(tmp_path / "r")]  # fmt: skip
        assert main(argv) == 0
    finally:
        os.umask(old)
    for name in ("summary.json", "items.parquet"):
        assert stat.S_IMODE((tmp_path / "r" / name).stat().st_mode) == 0o644


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
@pytest.mark.parametrize("command", ["analyze", "prune"])
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_cuda_without_a_gpu_is_refused_before_anything_loads(
    command, device, tmp_path, capsys, monkeypatch
):
    def nothing_may_load(*args, **kwargs):
        raise AssertionError("the task was read before the device was checked")

    monkeypatch.setattr(loading_module, "load_task", nothing_may_load)  # what both read through
    code = main([command, "--device", device, "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip() == (
        f"phaseprune: error: --device {device} but no CUDA device is visible; use --device cpu"
    )
