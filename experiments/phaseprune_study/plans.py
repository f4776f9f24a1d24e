"""What the study runs: one :class:`Plan` per model or setting, in :data:`PLANS`.

The plans are the experiment's design (items, strategies, the head-to-head's runs and the
ablation of phase-aware's variants); :mod:`phaseprune_study.stages` runs their stages and
:mod:`phaseprune_study.document` renders the document from them. Changing a plan's items or a
run's settings changes the runs' fingerprints, so finished runs are not resumed under the new
plan: add a run instead.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from phaseprune.runs.resume import LATER_PRUNE_DEFAULTS

ROOT = Path(__file__).resolve().parents[2]
"""The repository: experiments/phaseprune_study/ is two folders below it."""
SHARED_MODELS = ROOT.parent / "shared" / "models"
# the five subjects of ../shared/models/README.md's accuracy table
SUBJECTS = (
    "high_school_geography",
    "marketing",
    "us_foreign_policy",
    "high_school_psychology",
    "sociology",
)


@dataclass(frozen=True)
class Plan:
    """What is run for one model; every number in the document comes from these runs."""

    name: str
    model: str  # as passed to --model (alias, or how to fetch it: see resolve())
    fetch: str | None = None  # get-model.sh name, when the model is fetched by that script
    subjects: tuple[str, ...] = SUBJECTS
    shots: int = 0
    mmlu_items: int = 200
    other_task: str = "arc_challenge"
    other_items: int = 100
    calib: int = 32
    eval: int = 100
    # the issue asks for 8 removals or collapse; 12 lets runs still standing at 8 show theirs
    steps: int = 12
    seed: int = 0
    # (b), (c): every layer removed alone from the unpruned model (one iterative step), on more
    # items than pruning calibrates on; 0 reads step 1 of the iterative run instead
    single_items: int = 0
    # fewer removals for some strategies (CPU time), e.g. {"iterative": 8}
    steps_by_strategy: dict = field(default_factory=dict)
    # cheapest first, so a partial run already answers most questions
    strategies: tuple[str, ...] = (
        "phase-aware",
        "block-influence",
        "last",
        "angular",
        "iterative",
    )
    notes: dict = field(default_factory=dict)
    # the head-to-head (issue 13): every variant pruned to `steps` removals on the same items
    # (not stopping at collapse), then, where one has not collapsed, on to `extend_to` or its
    # collapse; stage "h2h-<label>" with these settings over the plan's
    h2h: dict = field(default_factory=dict)
    extend_to: int = 20
    # the phase-aware variant compared against every other run (claim (d)), and how it came
    # to be the one (said in the document when it was chosen after seeing results)
    reference: str = "phase-aware-kl"
    reference_note: str = ""
    # the head-to-head's task: MMLU over `subjects`, or another built-in task
    h2h_task: str = "mmlu"
    # stages this plan skips (a second setting needs only its head-to-head and its readout)
    skip: tuple[str, ...] = ()
    # healed runs, stage "heal-<label>", each paired with the unhealed "h2h-<label>" of its
    # removal rule (issue 30: --heal-when search against after); run after the head-to-head
    heal: dict = field(default_factory=dict)
    # where the plan's test was pre-registered before any of its pruning runs: (commit, file)
    preregistered: tuple[str, str] | None = None
    # that file's predictions, as keys of phaseprune_study.predictions.PREDICTIONS
    predictions: tuple[str, ...] = ()

    @property
    def analyze_stage(self) -> str:
        """The decision readout the document reads phases from: on the head-to-head's task."""
        return f"analyze-{self.h2h_task}"

    @property
    def other_stage(self) -> str:
        """The readout on a second task (MMLU's plans: ``other_task``; ARC's: MMLU)."""
        other = self.other_task if self.h2h_task == "mmlu" else "mmlu"
        return f"analyze-{other}"


FIRST_VERSION = {
    **{k: LATER_PRUNE_DEFAULTS[k] for k in ("spare", "after_decisive", "decisive")},
    "objective": "accuracy",
}
"""Phase-aware's first version as settings: its defaults before the head-to-head (the values
old runs' fingerprints leave out, ``pruning.LATER_PRUNE_DEFAULTS``) and the accuracy objective,
its default until the ablation. The plans' ``strategies`` runs keep it, so their records
resume."""

HEAD_TO_HEAD = {
    # cheapest and most telling first, so a partial run already answers most; phase-aware's
    # settings are all given (its defaults changed once: runs keep theirs)
    "last": {"strategy": "last"},
    "angular": {"strategy": "angular"},
    "phase-aware-transition": {"strategy": "phase-aware", "decisive": "objective",
                               "after_decisive": "transition", "spare": 7,
                               "objective": "accuracy"},
    # the Decisive tail cut where the calibration readout scores best (a free step each: the
    # readout at an index is the model without the layers after it), then as the transition
    # variant (spare: a quarter of 28 layers): the reference until the ablation was in
    "phase-aware-tail": {"strategy": "phase-aware", "decisive": "tail",
                         "after_decisive": "transition", "spare": 7, "objective": "accuracy"},
    # the tail with the kl objective: the ablation's best on MMLU, phase-aware's defaults and
    # the reference since (run to 8 removals first as a variant, then on like every strategy)
    "phase-aware-kl": {"strategy": "phase-aware", "decisive": "tail",
                       "after_decisive": "transition", "spare": 7, "objective": "kl"},
    # the other baselines by their time on MMLU (block influence 34 min, taylor 21, ppl 19,
    # random 36; sleb 2 h 12 min, logit-js scans as sleb does); iterative needs hours
    "block-influence": {"strategy": "block-influence"},
    "taylor": {"strategy": "taylor"},
    "ppl": {"strategy": "ppl"},
    "random": {"strategy": "random"},
    # the ablation, each variant phase-aware-tail with one thing changed (transition: the tail),
    # and the first version; the issue lets variants stop earlier (8 removals), and any of them
    # can be resumed deeper with more steps (stopping settings keep the fingerprint)
    "phase-aware-no-spare": {"strategy": "phase-aware", "decisive": "tail",
                             "after_decisive": "transition", "spare": 0,
                             "objective": "accuracy", "steps": 8},
    "phase-aware-after-objective": {"strategy": "phase-aware", "decisive": "tail",
                                    "after_decisive": "objective", "spare": 7,
                                    "objective": "accuracy", "steps": 8},
    "phase-aware-first": {"strategy": "phase-aware", **FIRST_VERSION, "steps": 8},
    "sleb": {"strategy": "sleb"},
    "logit-js": {"strategy": "logit-js"},
    "iterative": {"strategy": "iterative"},
}  # fmt: skip
"""The head-to-head's runs: every strategy, and phase-aware's variants (the ablation). The
spared decision builders are a quarter of Qwen2.5-Coder-1.5B's 28 layers."""
ABLATION = (
    "phase-aware-transition",
    "phase-aware-tail",
    "phase-aware-no-spare",
    "phase-aware-after-objective",
    "phase-aware-first",
)
"""Phase-aware's variants beside the reference (``phase-aware-kl``): the ablation. Each but the
first version changes one setting of ``phase-aware-tail``, itself the reference with the
accuracy objective."""
SECOND_SETTING = ("phase-aware-tail",)
"""The ablation's runs a second setting also makes: the objective's two values, side by side."""
SECOND_SETTING_H2H = {label: s for label, s in HEAD_TO_HEAD.items()
                      if label not in ABLATION or label in SECOND_SETTING}  # fmt: skip
"""A setting beyond MMLU: every strategy, the reference and its accuracy-objective twin."""
HEALING = {
    # one-shot rankings stay unhealed, so angular's search and after are the same run
    "angular": {**HEAD_TO_HEAD["angular"], "heal": "linear", "steps": 8},
    "phase-aware-kl-after": {**HEAD_TO_HEAD["phase-aware-kl"], "heal": "linear",
                             "heal_when": "after", "steps": 8},
    "phase-aware-kl-search": {**HEAD_TO_HEAD["phase-aware-kl"], "heal": "linear",
                              "heal_when": "search", "steps": 8},
}  # fmt: skip
"""Healed runs to 8 removals with ``--heal-items`` at its default (128): choose-then-heal
(``after``) against healing inside the search (``search``), each paired with its unhealed
head-to-head run (``h2h-angular``, ``h2h-phase-aware-kl``)."""
HEAL_WHEN = "after"
"""The ``--heal-when`` of the healed baselines of the held-out verdict (issue 32): the
library's default, which the MMLU comparison above decides."""
HEALED_BASELINES = ("last", "block-influence", "taylor", "ppl", "random", "logit-js", "iterative")
"""Every strategy healed besides angular and phase-aware (issue 32), one-shot rankings first
(a fit and a readout a step), then the iterative kind. SLEB is left out: unhealed it kept 90%
only to 1 removal on both plans and collapsed at 5 (MMLU) and 6 (ARC-Challenge), and healed it
scans as logit-js does (hours a run)."""


HEALED_EXTEND_TO = 12
"""Removals a healed run goes on to when it still keeps 90% of the unpruned accuracy at its 8
(experiments/preregistration-openbookqa.md's rule, on every plan): its 90% depth is then
known beyond 8, not only bounded."""


HEALED_ABLATION = ABLATION[:4]
"""Phase-aware's variants healed on MMLU (issue 32: does healing change which settings are
best?), after every baseline: each but the first version (the defaults before the
head-to-head, superseded on every count)."""


def healed(labels: tuple[str, ...], heal_when: str = HEAL_WHEN) -> dict:
    """Healed twins of head-to-head runs, to 8 removals (stage ``heal-<label>``)."""
    return {label: {**HEAD_TO_HEAD[label], "heal": "linear", "heal_when": heal_when, "steps": 8}
            for label in labels}  # fmt: skip


REFERENCE_CHOSEN_ON_MMLU = (
    "The reference was chosen after seeing these items: the head-to-head was first judged "
    "against `phase-aware-transition` (it kept 90% to depth 3); `phase-aware-tail` was added "
    "afterwards and its cut rule revised once (by calibration accuracy alone, 32 items put "
    "readout 27 first by one item and the cut stopped after one layer; the margin among the "
    "readouts that keep the unpruned calibration accuracy cuts at 24). Both decide their cuts "
    "on the 32 calibration items only, but choosing between them on these 200 evaluation items "
    "favours the one chosen: the ARC-Challenge plan (other items, another task, the rule "
    "unchanged) is the test that was not looked at. `phase-aware-tail` was then ARC's reference "
    "(it kept 90% to 1 removal there against 2 for the best baselines). The ablation at 8 "
    "removals on these items named `phase-aware-kl` (the tail with the kl objective) best by "
    "its stated rule, so it became phase-aware's default and the reference here and on ARC, "
    "where it had not been run: ARC's `phase-aware-kl` is the test of that choice."
)


def another_task(name: str, task: str, single_items: int = 0, **changes) -> Plan:
    """Qwen2.5-Coder-1.5B's head-to-head on another task: 32 calibration, 150 evaluation items.

    Every strategy and the reference's accuracy-objective twin; its own decision readout on 200
    items (the phases of claims a-c), every layer removed alone on ``single_items`` of the
    task's items (claims b, c; 0: none) and no MMLU readout (the MMLU plan has it).
    ``changes``: other :class:`Plan` fields.
    """
    settings = dict(calib=32, eval=150, strategies=(), h2h=SECOND_SETTING_H2H, h2h_task=task,
                    other_task=task, other_items=200, single_items=single_items,
                    skip=("analyze-mmlu",))  # fmt: skip
    return Plan(name, "", fetch="qwen2.5-coder-1.5b", **{**settings, **changes})


HELD_OUT_H2H = {label: s for label, s in SECOND_SETTING_H2H.items() if label != "phase-aware-tail"}
"""OpenBookQA's unhealed runs (issue 32's pre-registration): every strategy and the reference."""
EVERY_HEALED = healed(("phase-aware-kl", "angular", *HEALED_BASELINES))
"""The healed runs of ARC-Challenge and OpenBookQA (issue 32): the reference (phase-aware-kl
healed, the default ``--heal-when``) and every baseline but SLEB."""


PLANS = {
    # about 2 s per 0-shot item per full pass on 2 CPU cores: fewer pruning items than SmolLM2
    "qwen2.5-coder-1.5b": Plan(
        "qwen2.5-coder-1.5b",
        "",
        fetch="qwen2.5-coder-1.5b",
        calib=32,
        eval=200,
        strategies=(),  # the earlier 24/60-item runs are replaced by the head-to-head
        h2h=HEAD_TO_HEAD,
        single_items=120,
        reference_note=REFERENCE_CHOSEN_ON_MMLU,
        heal={**HEALING, **healed(HEALED_BASELINES), **healed(HEALED_ABLATION)},
    ),
    # the second setting (issue 13): the same model on ARC-Challenge (it decides there too:
    # 64% on 100 items, transition at readout layer 24), fewer evaluation items (stated), and
    # every strategy but not the ablation (phase-aware's variants are compared on MMLU)
    # (its single-removal scan came after the head-to-head, ~35 min on 2 CPU cores: claims b
    # and c on 120 items as on MMLU, and whether a larger scan than the 32 calibration items
    # puts layer 2 among the decision builders phase-aware spares)
    "qwen2.5-coder-1.5b-arc": another_task(
        "qwen2.5-coder-1.5b-arc", "arc_challenge", 120, heal=EVERY_HEALED
    ),
    # the third setting (after ARC-Challenge's result): the same model on OpenBookQA, chosen
    # before any of its runs to test the pattern the first two settings suggest (phase-aware
    # wins where its readout's Decisive tail is free); the readout first, the prediction it
    # implies stated in the document before the head-to-head, cheapest runs first
    # (issue 32: 200 evaluation items as on MMLU, to 8 removals, and on to 12 or the collapse
    # for an unhealed run without one; the pre-registration: experiments/preregistration-*.md)
    "qwen2.5-coder-1.5b-obqa": another_task(
        "qwen2.5-coder-1.5b-obqa",
        "openbookqa",
        eval=200,
        steps=8,
        extend_to=12,
        h2h=HELD_OUT_H2H,
        heal=EVERY_HEALED,
        preregistered=("422d740", "experiments/preregistration-openbookqa.md"),
        predictions=("unhealed-not-deeper", "healed-not-supported", "healed-short-of-7"),
    ),  # fmt: skip
    # never decides, so nothing can collapse: 8 removals show it
    "smollm2-135m": Plan("smollm2-135m", "smollm2-135m", steps=8, single_items=100),
}


def resolve(plan: Plan) -> str:
    """The --model argument: the alias, or the GGUF fetched by get-model.sh.

    ../shared/models/get-model.sh verifies the file by checksum and returns at once when it is
    already there.
    """
    if not plan.fetch:
        return plan.model
    script = SHARED_MODELS / "get-model.sh"
    if not script.exists():
        raise SystemExit(f"{plan.name}: needs {script} (the shared folder beside the repo)")
    out = subprocess.run(["bash", str(script), plan.fetch], capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"{plan.name}: get-model.sh failed: {out.stderr.strip()[-500:]}")
    return out.stdout.strip().splitlines()[-1]
