"""Command-line entry point: ``phaseprune analyze | tasks``.

Thin by design: parse arguments into a typed config, call the library, print a short
report. A :class:`~phaseprune.errors.UsageError` becomes one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from phaseprune import __version__
from phaseprune.config import AnalyzeConfig, add_arguments, from_args
from phaseprune.errors import UsageError


def _print_analyze(summary: dict, out: str) -> None:
    task = summary["task"]
    print(
        f"{summary['model']['name']} on {task['name']} "
        f"({task['n_items']} items, {task['shots']}-shot): "
        f"accuracy {summary['accuracy']:.1%} (chance {summary['chance']:.0%}), "
        f"{summary['n_layers']} layers"
    )
    print(summary["phases"]["statement"])
    print(
        f"wrote {out}/summary.json, {out}/items.parquet"
        + (f", {out}/plots/" if summary["settings"]["plots"] else "")
    )


def cmd_analyze(args: argparse.Namespace) -> int:
    """Run ``analyze``."""
    from phaseprune.analyze import run_analyze

    cfg = from_args(AnalyzeConfig, args)
    summary = run_analyze(cfg)
    _print_analyze(summary, cfg.out)
    return 0


def cmd_tasks(args: argparse.Namespace) -> int:
    """List the tasks and where their data would come from."""
    from phaseprune.tasks import available_tasks

    for source in available_tasks(args.data_dir):
        print(source.describe() if hasattr(source, "describe") else source)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser, generated from the config dataclasses."""
    parser = argparse.ArgumentParser(prog="phaseprune", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"phaseprune {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    analyze = sub.add_parser("analyze", help=AnalyzeConfig.__doc__.splitlines()[0])
    add_arguments(analyze, AnalyzeConfig)
    analyze.set_defaults(func=cmd_analyze)
    tasks = sub.add_parser("tasks", help="List tasks and their data sources.")
    tasks.add_argument("--data-dir", default=None, help="Directory to look in first.")
    tasks.set_defaults(func=cmd_tasks)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (2 for usage errors)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except UsageError as err:
        print(f"phaseprune: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "phaseprune: interrupted; finished batches are kept: rerun the same command to resume",
            file=sys.stderr,
        )
        return 130


if __name__ == "__main__":
    sys.exit(main())
