"""The ``README.md`` of an exported checkpoint: what it is, how it was made, how to evaluate it.

Built from the run's trajectory and the export's record only (no model is loaded here): the
base model and the hash of its weights, the layers removed, the strategy and step, evaluation
accuracy before and after, the phaseprune and transformers versions, and the
lm-evaluation-harness command that evaluates the export on the run's task.
"""

from __future__ import annotations

import shlex

from phaseprune.model.identity import MEMORY

# phaseprune's built-in task names that lm-evaluation-harness 0.4 also uses
_LM_EVAL_TASKS = ("arc_easy", "arc_challenge", "openbookqa", "commonsense_qa", "sciq",
                  "hellaswag", "piqa", "social_iqa", "winogrande")  # fmt: skip


MMLU_SUBJECTS = 57


def lm_eval_tasks(task: dict, scored: list[str] | None = None) -> str | None:
    """lm-evaluation-harness's ``--tasks`` for a run's task settings; None for user files.

    Args:
        task: The run's task settings (``settings["task"]``).
        scored: The subjects the run scored (its task record's), used for MMLU when the
            settings name none (every subject in the data: all 57 are lm-eval's ``mmlu``).
    """
    name = task.get("task", "")
    if name.startswith("lm_eval:"):
        return name.removeprefix("lm_eval:")
    if name == "mmlu":
        subjects = task.get("subjects") or scored or []
        if not subjects or len(subjects) >= MMLU_SUBJECTS:
            return "mmlu"
        return ",".join(f"mmlu_{s}" for s in subjects)
    return name if name in _LM_EVAL_TASKS else None


def lm_eval_command(out_dir: str, task: dict, dtype: str, scored: list[str] | None = None) -> str:
    """The ``lm_eval`` command line that scores the export on the run's task."""
    tasks = lm_eval_tasks(task, scored) or "YOUR_TASK"
    args = ["lm_eval", "--model", "hf", "--model_args", f"pretrained={out_dir},dtype={dtype}",
            "--tasks", tasks, "--num_fewshot", str(task.get("shots", 0)),
            "--batch_size", "8"]  # fmt: skip
    if task.get("lm_eval_include"):
        args += ["--include_path", task["lm_eval_include"]]
    if task.get("chat"):
        args.append("--apply_chat_template")
    return shlex.join(args)


def _accuracy(readout: dict) -> str:
    lo, hi = readout["eval_accuracy_ci"]
    return f"{readout['eval_accuracy']:.1%} (95% CI {lo:.1%}–{hi:.1%})"


def _identity(model: dict) -> str:
    if model.get("gguf_file"):
        digest = model.get("weights_sha256") or model["revision"]
        return f"sha256 `{digest}` of {model['gguf_file']}"
    digest = model.get("weights_sha256")
    if digest and digest.startswith(MEMORY):
        held = digest.removeprefix(MEMORY)
        return f"sha256 `{held}` of its config and tensors (a model held in memory)"
    if digest:
        return f"sha256 `{digest}` (of its weight files' sha256sum manifest)"
    if model.get("revision"):
        return f"hub revision `{model['revision']}`"
    return "not recorded"


def _checked_on(export: dict) -> str:
    if export.get("check_items"):
        return f"on {export['check_prompts']} evaluation prompts"
    return "on the prompt 'Answer:' only (the run's evaluation prompts could not be rebuilt)"


def _healed(traj: dict, export: dict) -> str:
    """How the export was healed, and on what data (``--heal linear``)."""
    layers = export.get("healed_layers") or []
    if traj["settings"].get("heal", "none") == "none":
        return "no"
    data = traj.get("heal_data") or {}
    on = (f"{data.get('prompts')} task prompts ({data.get('calib_items')} calibration items and "
          f"{data.get('extra_items')} others; no evaluation item)")  # fmt: skip
    if not layers:
        return f"linear maps tried, none kept; fitted on {on}"
    return (f"a least-squares linear map folded into the MLP output projection of original "
            f"layer(s) {layers}, fitted on {on}")  # fmt: skip


def _replay(export: dict) -> str:
    """For ``export --heal linear`` of an unhealed run: whose removals were healed."""
    source = export.get("healed_replay_of")
    return f"(the removals of `{source}`, healed)" if source else "(as that run made it)"


def _yaml_header(hub_id: str | None) -> str:
    """Hugging Face card metadata; ``base_model`` only for hub ids (it must name one)."""
    lines = ["---", "library_name: transformers", "tags:", "- phaseprune", "- layer-pruning"]
    if hub_id:
        lines.append(f"base_model: {hub_id}")
    return "\n".join(lines) + "\n---\n"


def model_card(traj: dict, export: dict, out_dir: str) -> str:
    """The card's Markdown.

    Args:
        traj: The run's trajectory record.
        export: The export's record (``step``, ``removed_layers``, ``num_hidden_layers``,
            ``requires_transformers``, ``transformers_version``, ``phaseprune_version``,
            ``check_prompts``, ``check_items``, ``max_abs_logit_diff``, ``base_hub_id``).
        out_dir: Where the export lies, for the evaluation command.
    """
    model, settings = traj["model"], traj["settings"]
    step = export["step"]
    after = traj["steps"][step - 1] if step else traj["step0"]
    task = settings["task"]
    scored = traj["task"].get("subjects")
    subjects = ", ".join(task.get("subjects") or scored or []) or "all"
    lm_tasks = lm_eval_tasks(task, scored)
    rows = [
        ("base model", f"`{model['name']}` ({model['architecture']}, {model['n_layers']} layers)"),
        ("base weights", _identity(model)),
        ("removed layers", f"{export['removed_layers'] or 'none'} (0-based, original indices)"),
        ("layers left", str(export["num_hidden_layers"])),
        ("healed", _healed(traj, export)),
        ("strategy", f"`{traj['strategy']}` (objective `{traj['objective']}`)"),
        ("step", f"{step} of {len(traj['steps'])}"),
        ("task", f"{task['task']} (subjects: {subjects}; {task.get('shots', 0)}-shot)"),
        ("eval items", str(len(traj["eval_items"]))),
        ("eval accuracy before (step 0)", _accuracy(traj["step0"])),
        (f"eval accuracy after (step {step})", _accuracy(after)),
        ("phaseprune", export["phaseprune_version"]),
        (
            "transformers",
            f"{export['requires_transformers']} (written with {export['transformers_version']})",
        ),
        (
            "reload check",
            f"max abs logit difference {export['max_abs_logit_diff']:.1e} {_checked_on(export)}",
        ),
    ]
    table = "\n".join(f"| {k} | {v} |" for k, v in rows)
    if lm_tasks is None:
        note = (
            "The run's task is a user file, which lm-evaluation-harness has no task for: "
            "replace YOUR_TASK with one."
        )
    else:
        note = (
            "lm-evaluation-harness builds its own prompts and, outside MMLU, scores "
            "answer texts rather than letters, so its accuracy can differ from the numbers "
            "above."
        )
    command = lm_eval_command(out_dir, task, model["dtype"], scored)
    n = len(export["removed_layers"])
    return f"""{_yaml_header(export.get("base_hub_id"))}
# {model["name"]} with {n} decoder layer{"" if n == 1 else "s"} removed

This checkpoint is `{model["name"]}` with decoder layers {export["removed_layers"]} removed by
phaseprune's `{traj["strategy"]}` strategy, step {step} of the run in `{export["run"]}`
{_replay(export)}. It is a standard `save_pretrained` checkpoint (safetensors): load it with
`AutoModelForCausalLM.from_pretrained` (transformers {export["requires_transformers"]}).

| | |
|---|---|
{table}

Accuracies are phaseprune's: the option letter with the highest logit after `Answer:`, on the
run's evaluation items.

## Evaluate it

```
{command}
```

{note}
"""
