r"""Benchmark: what ``--heal linear`` costs per step against the same run unhealed.

    .venv/bin/python benchmarks/bench_heal.py --model smollm2-135m --task mmlu \\
        --subjects high_school_geography,marketing --shots 5 --calib 32 --eval 40 --steps 3

Each side is one ``phaseprune prune`` in its own child process (so each peak RSS is its own),
with the same model, items and settings: ``none`` (unhealed), ``after`` (``--heal linear``,
only the chosen removal healed) and ``search`` (``--heal linear --heal-when search``: every
candidate healed). A step's cost is read from the trajectory's cumulative ``timing``
(``step_N_s``), so model loading and the unpruned readout are left out: the mean over steps 2..N
(step 1 also pays for what a run computes once). The last line printed is one JSON object:
each side's per-step seconds, mean step cost, the ratio to ``none`` (the target is at most 1.5
for ``after``), peak memory, the layers removed and the healed accuracies.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

SIDES = {"none": [], "after": ["--heal", "linear"],
         "search": ["--heal", "linear", "--heal-when", "search"]}  # fmt: skip


def child(args, rest: list[str]) -> dict:
    """Run one side's prune in this process and return its record."""
    from phaseprune.cli import main as cli

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        code = cli(["prune", *rest, *SIDES[args.which], "--out", str(out), "--quiet",
                    "--no-plots", "--score-cache", str(Path(tmp) / "store")])  # fmt: skip
        if code != 0:
            raise SystemExit(code)
        traj = json.loads((out / "trajectory.json").read_text())
    timing = traj["timing"]
    marks = [timing[f"step_{s['step']}_s"] for s in traj["steps"]]
    steps = [round(b - a, 2) for a, b in zip(marks, marks[1:], strict=False)]
    return {
        "step_s": steps,
        "mean_step_s": round(sum(steps) / len(steps), 2) if steps else None,
        "peak_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "removed": [s["removed_layer"] for s in traj["steps"]],
        "accuracy": [s["eval_accuracy"] for s in traj["steps"]],
        "unhealed_accuracy": [s.get("unhealed", {}).get("eval_accuracy") for s in traj["steps"]],
    }


def main() -> None:
    """Run every side in its own child process and print the comparison as the last line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sides", default="none,after,search")
    parser.add_argument("--which", help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args()
    if "--steps" not in rest:
        raise SystemExit("give --steps 3 or more: steps 2.. are measured")
    if args.which:
        print(json.dumps(child(args, rest)))
        return
    sides = args.sides.split(",")
    if "none" not in sides or not set(sides) <= set(SIDES):
        raise SystemExit(f"--sides {args.sides}: pick from {tuple(SIDES)}, none included")
    results = {}
    for which in sides:
        done = subprocess.run(
            [sys.executable, __file__, "--which", which, *rest],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise SystemExit(f"side {which} failed:\n{done.stderr[-3000:]}")
        results[which] = json.loads(done.stdout.strip().splitlines()[-1])
        print(which, results[which], flush=True)
    base = results["none"]["mean_step_s"]
    summary = {"args": rest, **{f"{k}": v for k, v in results.items()}}
    for which in sides:
        if which != "none":
            summary[f"{which}_step_ratio"] = round(results[which]["mean_step_s"] / base, 2)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
