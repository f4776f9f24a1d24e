"""Command-line entry point: ``phaseprune COMMAND``.

Commands: analyze, prune, compare, export, report, demo, tasks. Thin by design: every
command's arguments are generated from its config dataclass (:mod:`phaseprune.runs.config`),
parsed into that config, handed to the library, and a short report is printed. A usage
mistake, whether argparse's or a :class:`~phaseprune.core.errors.UsageError`, becomes one line on
stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import inspect
import io
import json
import sys
import textwrap
import typing
from collections.abc import Callable, Sequence

from phaseprune import __version__
from phaseprune.core.errors import UsageError, first_line
from phaseprune.core.phases import tail_statement
from phaseprune.runs.config import (
    AnalyzeConfig,
    CompareConfig,
    DemoConfig,
    ExportConfig,
    PruneConfig,
    ReportConfig,
    TasksConfig,
)
from phaseprune.runs.flags import add_arguments, from_args, plain_text

DESCRIPTION = (
    "Where does a language model decide a multiple-choice answer, layer by layer, and which "
    "layers can be pruned without breaking that decision?"
)


def _analyze_line(summary: dict) -> str:
    """Model, task, items, accuracy against chance and depth, in one line."""
    task = summary["task"]
    return (
        f"{summary['model']['name']} on {task['name']} ({task['n_items']} items, "
        f"{task['shots']}-shot): accuracy {summary['accuracy']:.1%} (chance "
        f"{summary['chance']:.0%}), {summary['n_layers']} layers"
    )


def _print_analyze(summary: dict, out: str) -> None:
    print(_analyze_line(summary))
    print(summary["phases"]["statement"])
    if tail := tail_statement(
        [r["accuracy"] for r in summary["layers"]],
        [r["margin_mean"] for r in summary["layers"]],
        summary["transition_layer"],
    ):
        print(tail)
    plots = f", {out}/plots/" if summary["settings"]["plots"] else ""
    print(f"wrote {out}/summary.json, {out}/items.parquet{plots}")


def cmd_analyze(cfg: AnalyzeConfig) -> int:
    """Run ``analyze``."""
    from phaseprune.api import analyze

    summary = analyze(config=cfg).summary
    _print_analyze(summary, cfg.out)
    return 0


def cmd_prune(cfg: PruneConfig) -> int:
    """Run ``prune``: each step's line (or JSON object) printed as the step completes."""
    from phaseprune.api import prune
    from phaseprune.cli.lines import StepPrinter, step_line

    printer = StepPrinter(json_lines=cfg.log_json, quiet=cfg.quiet)
    traj = prune(config=cfg, on_step=printer).trajectory
    if cfg.log_json:
        print(json.dumps(printer.end(traj)))
        return 0
    if cfg.quiet:  # nothing was printed while running: the steps now, as the result
        print(f"{traj['model']['name']} · {traj['strategy']}:")
        for record in [traj["step0"], *traj["steps"]]:
            print(step_line(record))
    print(traj["collapse"]["statement"])
    print(f"wrote {cfg.out}/trajectory.json, {cfg.out}/candidates.parquet")
    return 0


def cmd_compare(cfg: CompareConfig) -> int:
    """Run ``compare``."""
    from phaseprune.compare import run_compare

    table = run_compare(cfg.runs, cfg.out, reference=cfg.reference, depth=cfg.depth,
                        n_boot=cfg.n_boot, seed=cfg.seed)  # fmt: skip
    print(table.to_string(index=False))
    wrote = f"{cfg.out}/compare.png, {cfg.out}/compare.csv, {cfg.out}/compare.md"
    h = table.attrs.get("headtohead")
    if h:
        with open(f"{cfg.out}/headtohead.md") as fh:
            print(fh.read().rstrip())
        wrote += f", {cfg.out}/headtohead.md, {cfg.out}/headtohead.json"
    print(f"wrote {wrote}")
    return 0


def cmd_export(cfg: ExportConfig) -> int:
    """Run ``export``."""
    from phaseprune.export import run_export

    record = run_export(cfg.run, cfg.step, cfg.out, overwrite=cfg.overwrite, heal=cfg.heal)
    print(
        f"exported step {record['step']} ({record['num_hidden_layers']} layers, removed "
        f"{record['removed_layers']}) to {cfg.out}; reload matches to "
        f"{record['max_abs_logit_diff']:.1e} on {record['check_prompts']} prompt(s); "
        f"needs transformers {record['requires_transformers']}; model card {cfg.out}/README.md"
    )
    return 0


def cmd_report(cfg: ReportConfig) -> int:
    """Run ``report``."""
    from phaseprune.presentation.report import build_report

    report = build_report(list(cfg.runs), out=cfg.out)
    print(f"wrote {report.html} ({report.n_figures} figures; PNGs in {report.files_dir}/)")
    return 0


def cmd_demo(cfg: DemoConfig) -> int:
    """Run ``demo``: analyze, prune with several strategies, compare, report."""
    from phaseprune.demo import run_demo

    result = run_demo(cfg)
    summary = result["analyze"]
    print(f"analyze: {_analyze_line(summary)}. {summary['phases']['statement']}")
    for strategy, traj in result["prune"].items():
        accs = ", ".join(f"{s['eval_accuracy']:.0%}" for s in traj["steps"])
        removed = ", ".join(str(s["removed_layer"]) for s in traj["steps"])
        print(f"prune {strategy}: removed {removed} -> accuracy {accs}")
    h = result["compare"].attrs.get("headtohead")
    if h:
        rows = ", ".join(f"{r['run'].split(' (')[0]} {r['depth_90']}" for r in h["rows"])
        print(f"keeps 90% of the unpruned accuracy to depth: {rows} ({cfg.out}/compare/"
              "headtohead.md: paired intervals over items)")  # fmt: skip
    if "decider" in result:
        story = result["decider"]
        print(f"decider: {_analyze_line(story['analyze'])}. "
              f"{story['analyze']['phases']['statement']}")  # fmt: skip
        for strategy, traj in story["prune"].items():
            accs = ", ".join(f"{s['eval_accuracy']:.0%}" for s in traj["steps"])
            removed = ", ".join(f"{s['removed_layer']} ({s['phase_of_removed']})"
                                for s in traj["steps"])  # fmt: skip
            print(f"decider prune {strategy}: removed {removed} -> accuracy {accs}")
        for strategy, traj in story["healed"].items():
            accs = ", ".join(f"{s['eval_accuracy']:.0%}" for s in traj["steps"])
            plain = ", ".join(f"{s['unhealed']['eval_accuracy']:.0%}" for s in traj["steps"])
            removed = ", ".join(str(s["removed_layer"]) for s in traj["steps"])
            kept = sum(bool(s["heal"].get("map_sha256")) for s in traj["steps"])
            print(f"decider prune {strategy} --heal linear: removed {removed} -> accuracy "
                  f"{accs} healed, {plain} without the maps ({kept} of {len(traj['steps'])} "
                  "maps kept by the calibration readout)")  # fmt: skip
        print(f"decider report: {story['report'].html}")
    print(f"demo finished in {result['wall_s']:.0f} s; runs in {cfg.out}/")
    print(f"report: {result['report'].html}")
    return 0


def cmd_tasks(cfg: TasksConfig) -> int:
    """List the tasks and where their data would come from."""
    from phaseprune.tasks import available_tasks

    for source in available_tasks(cfg.data_dir):
        print(source.describe() if hasattr(source, "describe") else source)
    return 0


COMMANDS: dict[str, tuple[type, Callable[..., int]]] = {
    "analyze": (AnalyzeConfig, cmd_analyze),
    "prune": (PruneConfig, cmd_prune),
    "compare": (CompareConfig, cmd_compare),
    "export": (ExportConfig, cmd_export),
    "report": (ReportConfig, cmd_report),
    "demo": (DemoConfig, cmd_demo),
    "tasks": (TasksConfig, cmd_tasks),
}
"""Each command's config dataclass (its arguments) and the function that runs it."""


class HelpFormatter(argparse.HelpFormatter):
    """Wraps help without breaking hyphenated words (flags, strategy names); keeps paragraphs."""

    def _split_lines(self, text: str, width: int) -> list[str]:
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        paragraphs = (" ".join(p.split()) for p in text.split("\n\n"))
        wrap = textwrap.TextWrapper(
            width, initial_indent=indent, subsequent_indent=indent, break_on_hyphens=False
        )
        return "\n\n".join(wrap.fill(p) for p in paragraphs if p)


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line on stderr (exit code 2), like UsageError."""

    def error(self, message: str) -> typing.NoReturn:
        """Print ``PROG: error: MESSAGE`` and where to read the usage; exit with code 2."""
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


USER_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS,
                         errno.ENOTDIR, errno.EEXIST, errno.EISDIR})  # fmt: skip
"""Failures of the user's files or disk (full, read-only, a file where a folder should be)."""

RESUME = {
    "analyze": "rerun the same command to resume from the finished batches",
    "prune": "rerun the same command with --resume to continue from the last completed step",
    "demo": "rerun the same command to resume the unfinished stages",
}
"""How to continue each command after Ctrl-C."""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser: one subcommand per entry of :data:`COMMANDS`."""
    parser = Parser(prog="phaseprune", description=DESCRIPTION, formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version", version=f"phaseprune {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (cls, func) in COMMANDS.items():
        doc = plain_text(inspect.getdoc(cls))
        command = sub.add_parser(
            name, help=doc.splitlines()[0], description=doc, formatter_class=HelpFormatter
        )
        add_arguments(command, cls)
        command.set_defaults(config=cls, func=func)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 for --help, 2 for usage errors)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as stop:  # --help, --version and argparse's errors: keep main() returning
        return stop.code if isinstance(stop.code, int) else 1
    try:
        with one_voice(args.command) as quiet:
            cfg = from_args(args.config, args)
            if quiet and "quiet" in {f.name for f in dataclasses.fields(cfg)}:
                cfg = dataclasses.replace(cfg, quiet=True)
            return args.func(cfg)
    except UsageError as err:
        print(f"phaseprune: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        if err.errno not in USER_ERRNOS:
            raise
        where = f"{err.filename}: " if err.filename else ""
        print(
            f"phaseprune: error: {where}{err.strerror or err} ({errno.errorcode[err.errno]}); "
            "what was finished is kept: free space, fix the permission or pass another path, "
            "then rerun",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        how = RESUME.get(args.command, "rerun the same command to resume")
        print(f"phaseprune: interrupted; what was finished is kept: {how}", file=sys.stderr)
        return 130
    except Exception as err:
        if not _lost_peer(err):
            raise
        how = RESUME.get(args.command, "rerun the same command to resume")
        print(
            f"phaseprune: error: process {_rank()} lost the other processes of this run "
            f"({first_line(err)}); what was finished is kept: {how}, with any number of "
            "processes",
            file=sys.stderr,
        )
        return 1


def _rank() -> str:
    import os

    return f"{os.environ.get('RANK', '0')} of {os.environ.get('WORLD_SIZE', '1')}"


def _lost_peer(err: BaseException) -> bool:
    """Whether ``err`` is a collective that failed: a process died, or did not answer in time."""
    if "torch" not in sys.modules:
        return False
    import torch.distributed as dist

    from phaseprune.model.distributed import launched

    return isinstance(err, getattr(dist, "DistError", ())) or (
        isinstance(err, RuntimeError) and launched()
        and any(w in str(err) for w in ("Connection closed", "Connection reset", "Timed out",
                                        "timed out", "peer"))
    )  # fmt: skip


@contextlib.contextmanager
def one_voice(command: str):
    """Launched as several processes (torchrun), only process 0 prints and draws bars.

    Yields whether this process should be quiet. On exit the process group is left.
    """
    import os

    quiet = int(os.environ.get("WORLD_SIZE", "1")) > 1 and os.environ.get("RANK", "0") != "0"
    try:
        with contextlib.redirect_stdout(io.StringIO()) if quiet else contextlib.nullcontext():
            yield quiet
    finally:
        if "torch.distributed" in sys.modules:
            from phaseprune.model.distributed import leave

            leave()


if __name__ == "__main__":
    sys.exit(main())
