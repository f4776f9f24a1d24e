r"""Does lm-evaluation-harness's own CLI score an export as its run recorded? Not part of the tests.

The check of issue 30 (healing): export a (healed) run, load it with plain transformers 4.57
and 5 through lm-eval's command line, and compare with the run's record. For each interpreter
given (each with transformers and lm_eval installed) it writes a letter-choice task YAML over
the run's own item file (phaseprune's prompt is lm-eval's MMLU layout, character for
character: ``phaseprune.core.prompts``), runs ``python -m lm_eval run --model hf`` on the
export with ``--log_samples``, and compares lm-eval's pick on each of the run's evaluation
items with the run's readout pick at the exported step, and the accuracies.

    .venv/bin/phaseprune prune --model tests/fixtures/decider \
        --task jsonl:tests/fixtures/decider/eval.jsonl --strategy angular --steps 2 \
        --heal linear --heal-items 24 --calib 24 --eval 60 --out /tmp/hx/run --quiet --no-plots
    .venv/bin/phaseprune export /tmp/hx/run --step 2 --out /tmp/hx/export
    .venv/bin/python experiments/export_compat/check_lm_eval_cli.py --run /tmp/hx/run \
        --export /tmp/hx/export --items tests/fixtures/decider/eval.jsonl \
        --python .venv/bin/python --python /tmp/tf4/bin/python

Only 0-shot runs of a JSONL file with ``question``, ``choices`` and a letter ``answer`` (the
decider's layout) are handled; the run's item ids end in the row number lm-eval calls doc_id.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
from pathlib import Path

from phaseprune.core.items import LETTERS


def task_yaml(items: Path, n_options: int) -> str:
    """A letter-choice lm-eval task over ``items`` with phaseprune's 0-shot prompt."""
    options = "".join(f"\\n{LETTERS[i]}. {{{{choices[{i}]}}}}" for i in range(n_options))
    letters = ", ".join(f'"{c}"' for c in LETTERS[:n_options])
    return (
        "task: phaseprune_items\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {items.resolve()}\n"
        "output_type: multiple_choice\ntest_split: test\n"
        f'doc_to_text: "{{{{question.strip()}}}}{options}\\nAnswer:"\n'
        f"doc_to_choice: [{letters}]\n"
        f'doc_to_target: "{{{{{list(LETTERS[:n_options])}.index(answer)}}}}"\n'
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
    )


def lm_eval_picks(python: str, export: Path, tasks: Path, out: Path) -> tuple[dict, str]:
    """lm-eval's pick per doc_id on the export, and the transformers version it ran with."""
    cmd = [python, "-m", "lm_eval", "run", "--model", "hf", "--model_args",
           f"pretrained={export},dtype=float32", "--device", "cpu", "--batch_size", "1",
           "--tasks", "phaseprune_items", "--include_path", str(tasks), "--log_samples",
           "--output_path", str(out)]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    samples = next(out.rglob("samples_phaseprune_items_*.jsonl"))
    picks = {}
    for line in samples.read_text().splitlines():
        s = json.loads(line)
        scores = [r[0] for r in s["filtered_resps"]]
        picks[s["doc_id"]] = max(range(len(scores)), key=lambda k, scores=scores: float(scores[k]))
    version = subprocess.run([python, "-c", "import transformers; print(transformers.__version__)"],
                             check=True, capture_output=True, text=True).stdout.strip()  # fmt: skip
    return picks, version


def main() -> None:
    """Compare lm-eval's picks on the export, per interpreter, with the run's."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="the pruning run's directory")
    parser.add_argument("--export", required=True, help="its export (phaseprune export)")
    parser.add_argument("--items", required=True, help="the JSONL file the run read")
    parser.add_argument("--python", action="append", required=True, help="an interpreter")
    args = parser.parse_args()
    traj = json.loads((Path(args.run) / "trajectory.json").read_text())
    record = json.loads((Path(args.export) / "phaseprune_export.json").read_text())
    step = record["step"]
    readout = traj["steps"][step - 1] if step else traj["step0"]
    rows = [int(i.rsplit("/", 1)[1]) for i in traj["eval_items"]]
    gold = traj["eval_gold"]
    first = json.loads(Path(args.items).read_text().splitlines()[0])
    with tempfile.TemporaryDirectory() as tmp:
        tasks = Path(tmp) / "tasks"
        tasks.mkdir()
        (tasks / "phaseprune_items.yaml").write_text(task_yaml(Path(args.items),
                                                               len(first["choices"])))  # fmt: skip
        print(f"run {args.run}, step {step}: removed {record['removed_layers']}, healed "
              f"layers {record.get('healed_layers')}; the run's accuracy "
              f"{readout['eval_accuracy']:.4f} on {len(rows)} items")  # fmt: skip
        for i, python in enumerate(args.python):
            picks, version = lm_eval_picks(python, Path(args.export), tasks, Path(tmp) / str(i))
            mine = [picks[r] for r in rows]
            same = sum(a == b for a, b in zip(mine, readout["eval_picks"], strict=True))
            acc = sum(a == g for a, g in zip(mine, gold, strict=True)) / len(rows)
            print(f"transformers {version}: lm-eval accuracy {acc:.4f}; picks equal to the "
                  f"run's on {same} of {len(rows)} items")  # fmt: skip


if __name__ == "__main__":
    main()
