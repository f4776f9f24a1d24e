"""The study's command line: run the stages of the plans, then render docs/findings.md.

``experiments/findings.py`` calls :func:`main`; its docstring lists the usual invocations.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from phaseprune.model.distributed import is_main, join
from phaseprune_study.document import collect, render
from phaseprune_study.plans import PLANS, ROOT
from phaseprune_study.records import keep_all
from phaseprune_study.stages import run_plan, stage_status

DESCRIPTION = "Reproduce docs/findings.md: the paper's phenomenon tested on real models."


def main(argv: list[str] | None = None) -> None:
    """Run the stages, then write the document.

    Args:
        argv: the command's arguments (default: the command line's).
    """
    parser = argparse.ArgumentParser(description=DESCRIPTION)
    parser.add_argument("--models", default=",".join(PLANS), help="comma-separated plan names")
    parser.add_argument("--stages", default="", help="only these stages (e.g. analyze-mmlu)")
    parser.add_argument("--doc-only", action="store_true", help="only re-render the document")
    parser.add_argument(
        "--keep-records",
        action="store_true",
        help="with --doc-only: first copy the records of every stage under --runs (finished or "
        "not, e.g. a run still going in another process) into experiments/records/, to commit "
        "a long run's progress",
    )
    parser.add_argument(
        "--status",
        action="store_true",
        help="print where each stage stands (steps done of those asked, from --runs or else the "
        "committed records) and exit",
    )
    parser.add_argument("--runs", default=str(ROOT / "runs" / "findings"))
    parser.add_argument(
        "--device",
        default="cpu",
        help="cpu, cuda or auto; runs made on another device or dtype have another fingerprint, "
        "so give them their own --runs folder",
    )
    parser.add_argument("--dtype", default=None, help="default: float32 on CPU, bfloat16 on GPU")
    args = parser.parse_args(argv)
    names = [m for m in args.models.split(",") if m]
    unknown = [m for m in names if m not in PLANS]
    if unknown:
        raise SystemExit(f"unknown model plan {unknown}; choose from {', '.join(PLANS)}")
    only = set(args.stages.split(",")) - {""} or None
    if args.status:
        for name in names:
            for stage, state in stage_status(PLANS[name], Path(args.runs) / name):
                print(f"{name:24s} {stage:34s} {state}")
        return
    join(args.device)  # under torchrun / accelerate launch: every run shares the items out
    # `kill` (SIGTERM) unwinds like Ctrl-C, so the stage's time is logged before exiting
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if not args.doc_only:
        for name in names:
            run_plan(PLANS[name], Path(args.runs) / name, only, args.device, args.dtype)
    elif args.keep_records and is_main():
        for name in names:
            keep_all(PLANS[name], Path(args.runs) / name)
    if not is_main():  # launched by torchrun: process 0 writes the document
        return
    docs = ROOT / "docs" / "findings"
    numbers = {n: collect(PLANS[n], Path(args.runs) / n, docs) for n in PLANS}
    render(numbers, ROOT / "docs" / "findings.md")
    print(f"wrote {ROOT / 'docs' / 'findings.md'}")
