"""Which pruning run a ``--resume`` may continue: the recipe's fingerprint and what differs.

A trajectory records the fingerprint of its recipe: the settings that decide its numbers (not
where it is written, how it prints, or where it stops), the model's identity, the items and
their answers, and phaseprune's version. A resume continues a trajectory only under the same
fingerprint, or under the same one with other stopping rules (a run extended or cut short);
otherwise the refusal names what differs.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

from phaseprune import __version__
from phaseprune.core.objectives import objective_of
from phaseprune.model.load import model_change
from phaseprune.runs.config import PHASE_AWARE_ONLY, ModelConfig, PruneConfig, TaskConfig
from phaseprune.runs.files import load_candidates, load_trajectory
from phaseprune.runs.outdir import fingerprint
from phaseprune.runs.records import Trajectory, settings_record

VOLATILE = ("out", "resume", "overwrite", "quiet", "log_json", "plots", "cache_budget",
            "score_cache", "lm_eval_tasks", "lm_eval_steps", "lm_eval_limit",
            "lm_eval_batch_size")  # fmt: skip
"""Settings that change where a run is written or how it prints, never its numbers."""
STOPPING = ("steps", "stop_at_collapse", "min_accuracy")
"""Settings that only decide where a run stops: a resume may change them."""
HEAL_ONLY = ("heal_when", "heal_items", "heal_data")
"""Settings read only with ``--heal linear`` (left out of unhealed runs' fingerprints)."""
LATER_DEFAULTS = {"revision": None, "lm_eval_include": None}
"""Model and task settings added after runs were made, left out of the fingerprint at these
values so those runs resume."""
LATER_PRUNE_DEFAULTS = {"spare": 0, "after_decisive": "block-influence", "decisive": "objective",
                        "heal": "none", "order": ()}  # fmt: skip
"""phase-aware's settings added later, left out at their first version's values (its defaults
until the head-to-head picked others), so runs of that version resume."""


@dataclasses.dataclass(frozen=True)
class Recipe:
    """What a pruning run's numbers depend on, besides its settings."""

    info: dict
    """The model's identity (``ModelInfo`` as a dict)."""
    task: dict
    """``trajectory["task"]``: the items and how they were tokenised."""
    answers: list[tuple[str, int]]
    """Each item's id and gold answer (the prompts' hash does not cover the answer key)."""


def recipe_key(cfg: PruneConfig, recipe: Recipe, **stopping) -> str:
    """Fingerprint of a trajectory's recipe; ``stopping`` overrides :data:`STOPPING`."""
    objective = objective_of(cfg.strategy, cfg.objective)
    cfg = dataclasses.replace(cfg, objective=objective, **stopping)
    settings = {
        k: v
        for k, v in settings_record(cfg).items()
        if k not in VOLATILE
        and LATER_PRUNE_DEFAULTS.get(k, ...) != v
        and (k not in PHASE_AWARE_ONLY or cfg.strategy == "phase-aware")
        and (k not in HEAL_ONLY or cfg.heal != "none")
    }
    if cfg.heal != "none":  # the ridge grid decides the maps (it grew once: 1.0 -> 100)
        from phaseprune.engine.healing import RIDGES

        settings["heal_ridges"] = list(RIDGES)
    for section in ("model", "task"):  # settings added later, at their defaults: left out
        settings[section] = {
            k: v for k, v in settings[section].items() if LATER_DEFAULTS.get(k, ...) != v
        }
    info = dict(recipe.info)
    if info["weights_sha256"] in (None, info["revision"]):  # a GGUF file's hash is its revision
        del info["weights_sha256"]
    return fingerprint(settings, info, recipe.task, recipe.answers, __version__)


def _flat(settings: dict) -> dict:
    """A run's settings with the model and task sections merged in (their names are distinct)."""
    flat = {}
    for key, value in settings.items():
        flat.update(value if isinstance(value, dict) else {key: value})
    return flat


def differences(cfg: PruneConfig, recipe: Recipe, traj: Trajectory) -> str:
    """What a trajectory was made with that this run differs in, for the refusal message."""
    now = _flat(json.loads(json.dumps(dataclasses.asdict(cfg))))  # tuples as JSON lists
    then = _flat(traj["settings"])
    flags = [
        f"--{k.replace('_', '-')}"
        for k, v in now.items()
        if k not in VOLATILE and k not in STOPPING and then.get(k) != v
    ]
    if flags:
        return "settings (" + ", ".join(flags) + ")"
    if traj["phaseprune_version"] != __version__:
        return f"phaseprune ({traj['phaseprune_version']})"
    changed = model_change(traj["model"], json.loads(json.dumps(recipe.info)))
    if changed:
        return changed
    if traj["task"] != recipe.task:
        return "items or prompts"
    return "items: the answer key differs"


def load_previous(
    out: Path | None, cfg: PruneConfig, key: Callable[..., str], recipe: Recipe
) -> tuple[Trajectory | None, list[dict]]:
    """The run in ``out`` to resume (None for a fresh one) and its completed steps' candidates."""
    if out is None or not (cfg.resume and (out / "trajectory.json").exists()):
        return None, []

    def differs(traj: Trajectory) -> str | None:
        # the same run made with other stopping rules (e.g. a smaller --steps) continues
        made = {k: traj["settings"].get(k) for k in STOPPING}
        same = traj["fingerprint"] in (key(), key(**made))
        return None if same else differences(cfg, recipe, traj)

    traj = load_trajectory(out, differs=differs, rerun=True)
    if traj["fingerprint"] != key():  # continued under the new stopping rules, recorded
        traj["fingerprint"] = key()
        traj["settings"] = settings_record(cfg)
    return traj, load_candidates(out, {s["step"] for s in traj["steps"]})


def config_of(settings: dict) -> PruneConfig:
    """The config a trajectory's ``settings`` were recorded from (``settings_record`` inverted).

    Fields a run recorded that phaseprune no longer has (``model.precision``) are dropped;
    fields added since take their defaults; JSON lists become tuples again.
    """

    def build(cls, values: dict):
        names = {f.name for f in dataclasses.fields(cls)}
        return {k: tuple(v) if isinstance(v, list) else v for k, v in values.items() if k in names}

    own = build(PruneConfig, settings)
    own["model"] = ModelConfig(**build(ModelConfig, settings["model"]))
    own["task"] = TaskConfig(**build(TaskConfig, settings["task"]))
    return PruneConfig(**own)
