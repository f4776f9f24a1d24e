r"""Several processes against one on the same pruning run: wall time, communication, decisions.

    .venv/bin/python benchmarks/bench_distributed.py --procs 2 -- --model smollm2-135m \
        --task mmlu --subjects marketing,astronomy,virology --strategy iterative --steps 1 \
        --calib 24 --eval 48

runs ``phaseprune prune ARGS`` once as ``torchrun --standalone --nproc_per_node P`` with one
thread per process, and once as one process with P threads (the same cores), then prints one
JSON line: both wall times (the command's, model load included, and the run's own
``timing.total_s``), the time process 0 spent in gathers (``communication_s``, waiting for the
slowest process included), and whether the two runs removed the same layers with the same
accuracies and picks (``identical_decisions``) and their largest margin difference.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _run(cmd: list[str], threads: int) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    started = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
    return time.perf_counter() - started


def _margins(traj: dict) -> list[float]:
    return [layer["margin_mean"] for rec in [traj["step0"], *traj["steps"]]
            for layer in rec["layers"]]  # fmt: skip


def main() -> None:
    """Run both ways and print the JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--procs", type=int, default=2)
    parser.add_argument("args", nargs=argparse.REMAINDER, help="phaseprune prune's arguments")
    opts = parser.parse_args()
    args = [a for a in opts.args if a != "--"]
    with tempfile.TemporaryDirectory() as tmp:
        many, one = Path(tmp) / "many", Path(tmp) / "one"
        launch = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                  f"--nproc_per_node={opts.procs}", "-m", "phaseprune", "prune", *args,
                  "--quiet", "--no-plots", "--out", str(many)]  # fmt: skip
        alone = [sys.executable, "-m", "phaseprune", "prune", *args, "--quiet", "--no-plots",
                 "--out", str(one)]  # fmt: skip
        wall_many = _run(launch, 1)
        wall_one = _run(alone, opts.procs)
        a = json.loads((many / "trajectory.json").read_text())
        b = json.loads((one / "trajectory.json").read_text())
    same = [s["removed_layers"] for s in a["steps"]] == [s["removed_layers"] for s in b["steps"]]
    accs = [s["eval_accuracy"] for s in [a["step0"], *a["steps"]]]
    same = same and accs == [s["eval_accuracy"] for s in [b["step0"], *b["steps"]]]
    diff = max(abs(x - y) for x, y in zip(_margins(a), _margins(b), strict=True))
    print(json.dumps({
        "procs": opts.procs,
        "wall_s_processes": round(wall_many, 1),
        "wall_s_threads": round(wall_one, 1),
        "run_s_processes": a["timing"]["total_s"],
        "run_s_threads": b["timing"]["total_s"],
        "communication_s": a["timing"].get("communication_s"),
        "speedup": round(b["timing"]["total_s"] / a["timing"]["total_s"], 3),
        "identical_decisions": same,
        "removed_layers": [s["removed_layers"] for s in a["steps"]],
        "max_margin_diff": diff,
    }))  # fmt: skip


if __name__ == "__main__":
    main()
