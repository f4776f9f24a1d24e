"""Small runs on the tiny decider that several test files make: a quick prune on the CLI, and
the accuracy an exported checkpoint gets on a run's evaluation items."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path


def quick_prune(decider, out: Path, *extra: str) -> dict:
    """``phaseprune prune`` of ``last`` by one step on 16 + 24 items (``extra`` overrides)."""
    from phaseprune.cli import main

    argv = ["prune", "--model", str(decider.path), "--task", f"jsonl:{decider.path / 'eval.jsonl'}",
            "--quiet", "--no-plots", "--n-boot", "20", "--calib", "16", "--eval", "24",
            "--strategy", "last", "--steps", "1", "--out", str(out), *extra]  # fmt: skip
    assert main(argv) == 0
    return json.loads((out / "trajectory.json").read_text())


def export_accuracy(decider, export: Path, eval_items: list[str]) -> float:
    """The accuracy the checkpoint in ``export``, loaded by plain transformers, gets on the
    decider's items ``eval_items`` (phaseprune's readout of its final layer)."""
    import transformers as tf

    import phaseprune
    from phaseprune.tasks import load_task

    task = load_task(f"jsonl:{decider.path / 'eval.jsonl'}")
    by_id = {it.item_id: it for it in task.items}
    subset = dataclasses.replace(task, items=[by_id[i] for i in eval_items])
    model = tf.AutoModelForCausalLM.from_pretrained(export).eval()
    tokenizer = tf.AutoTokenizer.from_pretrained(export)
    return phaseprune.analyze(model, tokenizer, subset, quiet=True, n_boot=50).summary["accuracy"]
