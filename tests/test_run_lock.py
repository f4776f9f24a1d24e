"""One writer per run directory: an OS lock taken before anything loads, released however the
holder ends; --overwrite never follows a symlink; figures get temporary names of their own."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from phaseprune.cli import main
from phaseprune.core.errors import UsageError
from phaseprune.runs.outdir import LOCK_FILE, one_writer, prepare_out_dir

HOLD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from phaseprune.runs.outdir import one_writer
    with one_writer(Path(sys.argv[1])):
        print("held", flush=True)
        time.sleep(120)
""")


def _prune_args(decider, out) -> list[str]:
    return ["prune", "--model", str(decider.path), "--task", f"jsonl:{decider.path / 'eval.jsonl'}",
            "--quiet", "--no-plots", "--n-boot", "20", "--calib", "16", "--eval", "24",
            "--strategy", "last", "--steps", "1", "--out", str(out)]  # fmt: skip


def test_a_second_writer_is_refused_in_one_line(tmp_path):
    out = tmp_path / "run"
    with one_writer(out):
        assert (out / LOCK_FILE).read_text().strip() == str(os.getpid())
        with pytest.raises(UsageError, match=rf"pid {os.getpid()}\); wait for it"), one_writer(out):
            pass
    with one_writer(out):  # released on exit
        pass
    assert not out.exists()  # made here, held nothing but the lock: gone again


def test_another_process_holds_it_until_killed(decider, tmp_path, capsys):
    """A real second process: refused while it holds the lock, free once it is killed (-9)."""
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE,
                              text=True)  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        assert main(_prune_args(decider, out)) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"pid {holder.pid}" in err[0]
        assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE]  # nothing written
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert main(_prune_args(decider, out)) == 0  # the kernel released the dead holder's lock
    assert json.loads((out / "trajectory.json").read_text())["complete"]


def test_two_runs_started_together_leave_one_run(decider, tmp_path):
    out = tmp_path / "run"
    code = "import sys; from phaseprune.cli import main; sys.exit(main(sys.argv[1:]))"
    procs = [subprocess.Popen([sys.executable, "-c", code, *_prune_args(decider, out)],
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]  # fmt: skip
    results = sorted((p.wait(), p.stderr.read()) for p in procs)
    assert [r[0] for r in results] == [0, 2], results
    refusal = results[1][1].strip().splitlines()
    assert len(refusal) == 1 and ("another phaseprune process" in refusal[0]
                                  or "already holds a run" in refusal[0])  # fmt: skip
    traj = json.loads((out / "trajectory.json").read_text())
    assert traj["complete"] and len(traj["steps"]) == 1


def test_overwrite_unlinks_a_symlink_never_its_target(tmp_path):
    out, elsewhere = tmp_path / "run", tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.png").write_bytes(b"mine")
    out.mkdir()
    (out / "summary.json").write_text("{}")
    (out / "plots").symlink_to(elsewhere, target_is_directory=True)
    prepare_out_dir(out, "analyze", overwrite=True)
    assert not (out / "plots").exists() and (elsewhere / "keep.png").read_bytes() == b"mine"


def test_figures_have_temporary_names_of_their_own(tmp_path, monkeypatch):
    """Two writers of one figure never share a temporary file (one crashed with
    FileNotFoundError when both used `.NAME.tmp.png`)."""
    import matplotlib.pyplot as plt

    from phaseprune.presentation.figures import png

    names = []
    real = plt.Figure.savefig

    def spy(fig, path, **kw):
        names.append(str(path))
        return real(fig, path, **kw)

    monkeypatch.setattr(plt.Figure, "savefig", spy)
    for _ in range(2):
        png._save(plt.figure(), tmp_path / "a.png")
    assert len(set(names)) == 2 and all(n.endswith(".tmp.png") for n in names)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]
