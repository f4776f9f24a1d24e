"""Command-line entry point: ``phaseprune COMMAND``.

Commands: analyze, prune, compare, export, report, demo, tasks. Thin by design: parse
arguments into a typed config, call the library, print a short report. A
:class:`~phaseprune.errors.UsageError` becomes one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from phaseprune import __version__
from phaseprune.config import AnalyzeConfig, PruneConfig, add_arguments, from_args
from phaseprune.demo import DemoConfig
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


def cmd_prune(args: argparse.Namespace) -> int:
    """Run ``prune``."""
    from phaseprune.prune import run_prune

    cfg = from_args(PruneConfig, args)
    traj = run_prune(cfg)
    s0 = traj["step0"]
    print(
        f"{traj['model']['name']} · {traj['strategy']}: "
        f"unpruned eval accuracy {s0['eval_accuracy']:.1%}"
    )
    for s in traj["steps"]:
        print(
            f"  step {s['step']}: removed layer {s['removed_layer']} ({s['phase_of_removed']}) -> "
            f"accuracy {s['eval_accuracy']:.1%}, transition {s['transition_layer']}"
            + (f"  [{s['note']}]" if s["note"] else "")
        )
    print(traj["collapse"]["statement"])
    print(f"wrote {cfg.out}/trajectory.json, {cfg.out}/candidates.parquet")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    """Run ``compare``."""
    from phaseprune.compare import run_compare

    table = run_compare(args.runs, args.out)
    print(table.to_string(index=False))
    print(f"wrote {args.out}/compare.png, {args.out}/compare.csv")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Run ``export``."""
    from phaseprune.export import run_export

    record = run_export(args.run, args.step, args.out, overwrite=args.overwrite)
    print(
        f"exported step {record['step']} ({record['num_hidden_layers']} layers, removed "
        f"{record['removed_layers']}) to {args.out}; "
        f"reload matches to {record['max_abs_logit_diff']:.1e}"
    )
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """Run ``report``."""
    from phaseprune.report import build_report

    report = build_report(args.runs, out=args.out)
    print(f"wrote {report.html} ({report.n_figures} figures; PNGs in {report.files_dir}/)")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Run ``demo``: analyze, prune with several strategies, compare, report."""
    from phaseprune.demo import DemoConfig, run_demo

    cfg = from_args(DemoConfig, args)
    result = run_demo(cfg)
    summary = result["analyze"]
    print(
        f"analyze: {summary['model']['name']}, {summary['task']['n_items']} items "
        f"{summary['task']['shots']}-shot: accuracy {summary['accuracy']:.1%} "
        f"(chance {summary['chance']:.0%}). {summary['phases']['statement']}"
    )
    for strategy, traj in result["prune"].items():
        accs = ", ".join(f"{s['eval_accuracy']:.0%}" for s in traj["steps"])
        removed = ", ".join(str(s["removed_layer"]) for s in traj["steps"])
        print(f"prune {strategy}: removed {removed} -> accuracy {accs}")
    print(f"demo finished in {result['wall_s']:.0f} s; runs in {cfg.out}/")
    print(f"report: {result['report'].html}")
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
    prune = sub.add_parser("prune", help=PruneConfig.__doc__.splitlines()[0])
    add_arguments(prune, PruneConfig)
    prune.set_defaults(func=cmd_prune)
    compare = sub.add_parser("compare", help="Several pruning runs on one figure and one table.")
    compare.add_argument("runs", nargs="+", help="Run directories made by `phaseprune prune`.")
    compare.add_argument("--out", required=True, help="Directory for compare.png/.csv/.md.")
    compare.set_defaults(func=cmd_compare)
    export = sub.add_parser("export", help="Save the pruned model of one step as an HF checkpoint.")
    export.add_argument("run", help="A run directory made by `phaseprune prune`.")
    export.add_argument("--step", type=int, required=True, help="Step to export (0 = unpruned).")
    export.add_argument("--out", required=True, help="Output directory for the checkpoint.")
    export.add_argument("--overwrite", action="store_true", help="Write into a non-empty --out.")
    export.set_defaults(func=cmd_export)
    report = sub.add_parser("report", help="One self-contained HTML report of runs.")
    report.add_argument("runs", nargs="+", help="Run directories made by analyze or prune.")
    report.add_argument(
        "--out",
        default=None,
        help="HTML file to write (default RUN/report.html; FIRST_RUN/compare_report.html "
        "for several runs).",
    )
    report.set_defaults(func=cmd_report)
    demo = sub.add_parser("demo", help=DemoConfig.__doc__.splitlines()[0])
    add_arguments(demo, DemoConfig)
    demo.set_defaults(func=cmd_demo)
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
