"""lm-evaluation-harness both ways, offline: ``--task lm_eval:NAME`` reads a user's own task YAML
over local files, and ``prune --lm-eval-tasks`` scores the pruned view with lm-eval, equal to
lm-eval run on the checkpoint itself and on the exported pruned model."""

from __future__ import annotations

import copy
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
import transformers as tf
from conftest import spread_llama
from tiny_tokenizers import byte_bpe

from phaseprune.cli import main
from phaseprune.core.errors import UsageError
from phaseprune.core.prompts import build_prompts
from phaseprune.runs.config import PruneConfig
from phaseprune.runs.lm_eval_scores import StepScorer
from phaseprune.tasks import load_task

needs_lm_eval = pytest.mark.skipif(
    importlib.util.find_spec("lm_eval") is None, reason="pip install 'phaseprune[lm-eval]'"
)

N_ROWS = 24
COLOURS = ["red", "green", "blue", "black"]


def _rows(n: int, tag: str) -> list[dict]:
    return [
        {"q": f"{tag} {i}: which colour comes {['first', 'second', 'third', 'last'][i % 4]}?",
         "opts": COLOURS[i % 4:] + COLOURS[: i % 4], "label": (i // 3) % 4}
        for i in range(n)
    ]  # fmt: skip


def _yaml(name: str, files: dict[str, Path], extra: str) -> str:
    data = "".join(f"    {split}: {path}\n" for split, path in files.items())
    return (f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n{data}"
            f"{extra}metric_list:\n  - metric: acc\n    aggregation: mean\n"
            "    higher_is_better: true\n  - metric: acc_norm\n    aggregation: mean\n"
            "    higher_is_better: true\n")  # fmt: skip


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory) -> Path:
    """Task YAMLs over local JSONL files: multiple choice, letter choices, and a generation."""
    root = tmp_path_factory.mktemp("lm-eval-tasks")
    test, train = root / "test.jsonl", root / "train.jsonl"
    test.write_text("".join(json.dumps(r) + "\n" for r in _rows(N_ROWS, "Item")))
    train.write_text("".join(json.dumps(r) + "\n" for r in _rows(4, "Solved")))
    mc = ('output_type: multiple_choice\ntraining_split: train\ntest_split: test\n'
          'doc_to_text: "Question: {{q}}\\nAnswer:"\ndoc_to_choice: "{{opts}}"\n'
          "doc_to_target: label\n")  # fmt: skip
    (root / "toy_mc.yaml").write_text(_yaml("toy_mc", {"train": train, "test": test}, mc))
    letters = ('output_type: multiple_choice\ntest_split: test\n'
               'doc_to_text: "{{q.strip()}}\\nA. {{opts[0]}}\\nB. {{opts[1]}}\\nC. {{opts[2]}}'
               '\\nD. {{opts[3]}}\\nAnswer:"\ndoc_to_choice: ["A", "B", "C", "D"]\n'
               "doc_to_target: label\n")  # fmt: skip
    (root / "toy_letters.yaml").write_text(_yaml("toy_letters", {"test": test}, letters))
    bad = letters.replace("\\nA. {{opts[0]}}\\nB. {{opts[1]}}\\nC. {{opts[2]}}\\nD. {{opts[3]}}",
                          "")  # fmt: skip
    (root / "toy_bad_letters.yaml").write_text(_yaml("toy_bad_letters", {"test": test}, bad))
    gen = ('output_type: generate_until\ntest_split: test\ndoc_to_text: "{{q}}"\n'
           'doc_to_target: "{{opts[label]}}"\n')  # fmt: skip
    (root / "toy_gen.yaml").write_text(
        _yaml("toy_gen", {"test": test}, gen).split("metric_list")[0]
        + "metric_list:\n  - metric: exact_match\n"
    )
    return root


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A random 4-layer Llama, weights spread so that every layer changes the answers."""
    path = tmp_path_factory.mktemp("lm-eval-llama")
    tok = byte_bpe()
    model = spread_llama(tok, 4, 0.5)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@needs_lm_eval
def test_source_items_are_the_files(task_dir):
    task = load_task("lm_eval:toy_mc", lm_eval_include=str(task_dir), shots=2, limit=10)
    rows = _rows(N_ROWS, "Item")
    assert [it.item_id for it in task.items] == [f"toy_mc/{i}" for i in range(10)]
    assert [it.question for it in task.items] == [f"Question: {r['q']}" for r in rows[:10]]
    assert [list(it.options) for it in task.items] == [r["opts"] for r in rows[:10]]
    assert [it.answer for it in task.items] == [r["label"] for r in rows[:10]]
    # exemplars: the first rows of the task's training split (its few-shot docs), none scored
    solved = _rows(4, "Solved")
    assert [ex.question for ex in task.exemplars["toy_mc"]] == [
        f"Question: {r['q']}" for r in solved[:2]
    ]
    assert task.excluded == ()
    assert (task.split, task.source_kind, task.n_options) == ("test", "lm-eval", 4)
    assert "rendered in phaseprune's lettered layout" in task.source
    assert str(task_dir / "test.jsonl") in task.source
    # a YAML file named directly is the same task
    direct = load_task(f"lm_eval:{task_dir / 'toy_mc.yaml'}", shots=2, limit=10)
    assert direct.items == task.items and direct.exemplars == task.exemplars


@needs_lm_eval
def test_letter_choice_task_keeps_lm_evals_prompt(task_dir):
    from lm_eval.tasks import TaskManager

    task = load_task("lm_eval:toy_letters", lm_eval_include=str(task_dir), limit=5)
    manager = TaskManager(include_path=str(task_dir), include_defaults=False)
    lm_task = manager.load(["toy_letters"])["tasks"]["toy_letters"]
    texts = [lm_task.doc_to_text(doc) for doc in list(lm_task.test_docs())[:5]]
    assert build_prompts(task) == texts  # phaseprune's prompt is lm-eval's, character for character
    assert [list(it.options) for it in task.items] == [r["opts"] for r in _rows(5, "Item")]
    # no training split: the few-shot docs are the scored split's first rows, then not scored
    shot = load_task("lm_eval:toy_letters", lm_eval_include=str(task_dir), shots=1, limit=3)
    assert shot.excluded == ("toy_letters/0",)
    assert [it.item_id for it in shot.items] == ["toy_letters/1", "toy_letters/2", "toy_letters/3"]
    assert build_prompts(shot)[0] == texts[0] + " " + "ABCD"[_rows(1, "Item")[0]["label"]] + (
        "\n\n" + texts[1]
    )
    with pytest.raises(UsageError, match="choices are the letters A-D but the text does not"):
        load_task("lm_eval:toy_bad_letters", lm_eval_include=str(task_dir))


@needs_lm_eval
def test_refusals(task_dir, monkeypatch):
    with pytest.raises(UsageError, match="toy_gen' is generate_until, not multiple_choice"):
        load_task("lm_eval:toy_gen", lm_eval_include=str(task_dir))
    with pytest.raises(UsageError, match="'toy_nc' is not in .* \\(did you mean toy_mc"):
        load_task("lm_eval:toy_nc", lm_eval_include=str(task_dir))
    with pytest.raises(UsageError, match="--lm-eval-include .*nowhere: no such folder; give"):
        load_task("lm_eval:toy_mc", lm_eval_include=str(task_dir / "nowhere"))
    cfg = PruneConfig(out="unused", steps=2, lm_eval_steps=(0, 3), lm_eval_tasks=("toy_mc",))
    with pytest.raises(UsageError, match=r"--lm-eval-steps \[3\]: the run has --steps 2"):
        StepScorer(cfg)
    with pytest.raises(UsageError, match="need --lm-eval-tasks"):
        StepScorer(PruneConfig(out="unused", lm_eval_limit=5))
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # as if not installed
    with pytest.raises(UsageError, match=r"pip install 'phaseprune\[lm-eval\]'"):
        load_task("lm_eval:toy_mc", lm_eval_include=str(task_dir))


def test_cli_without_lm_eval_one_line(task_dir, model_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval", None)
    common = ["--model", str(model_dir), "--quiet", "--no-plots"]
    analyze = ["analyze", *common, "--task", "lm_eval:toy_mc", "--lm-eval-include",
               str(task_dir), "--out", str(tmp_path / "a")]  # fmt: skip
    prune = ["prune", *common, "--task", f"jsonl:{task_dir / 'test.jsonl'}", "--lm-eval-tasks",
             "toy_mc", "--out", str(tmp_path / "p")]  # fmt: skip
    for argv in (analyze, prune):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "pip install 'phaseprune[lm-eval]'" in err, err


@needs_lm_eval
def test_analyze_an_lm_eval_task_of_my_own(task_dir, model_dir, tmp_path, capsys):
    out = tmp_path / "analyze"
    argv = ["analyze", "--model", str(model_dir), "--task", "lm_eval:toy_mc",
            "--lm-eval-include", str(task_dir), "--shots", "1", "--out", str(out), "--quiet",
            "--no-plots", "--n-boot", "20"]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["task"]["name"] == "lm_eval:toy_mc"
    assert summary["task"]["source_kind"] == "lm-eval"
    assert summary["task"]["n_items"] == N_ROWS
    assert summary["settings"]["task"]["lm_eval_include"] == str(task_dir)


def _lm_eval_direct(pretrained, tokenizer=None, limit=12, task_dir=None, task="toy_mc") -> dict:
    """lm-eval's own run: its HFLM over a checkpoint path (or a model object)."""
    from lm_eval import evaluator
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    lm = HFLM(pretrained=pretrained, tokenizer=tokenizer, batch_size=1, device="cpu")
    manager = TaskManager(include_path=str(task_dir), include_defaults=False)
    return evaluator.simple_evaluate(model=lm, tasks=[task], limit=limit,
                                     task_manager=manager, log_samples=True)  # fmt: skip


def _metrics(results: dict, task: str = "toy_mc") -> dict:
    r = results["results"][task]
    return {k.split(",")[0]: v for k, v in r.items() if k.endswith(",none")}


@needs_lm_eval
def test_prune_scores_steps_with_lm_eval(task_dir, model_dir, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["prune", "--model", str(model_dir), "--task", "lm_eval:toy_mc", "--lm-eval-include",
            str(task_dir), "--calib", "8", "--eval", "12", "--steps", "2", "--out", str(out),
            "--quiet", "--no-plots", "--n-boot", "20", "--lm-eval-tasks", "toy_mc",
            "--lm-eval-limit", "12", "--lm-eval-steps", "0,2"]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    traj = json.loads((out / "trajectory.json").read_text())
    step0, step1, step2 = traj["step0"]["lm_eval"], *(s["lm_eval"] for s in traj["steps"])
    assert step1 is None  # not among --lm-eval-steps
    assert step0["toy_mc"]["n"] == 12 and step2["toy_mc"]["n"] == 12
    # step 0 equals lm-eval on the checkpoint itself
    want0 = _metrics(_lm_eval_direct(str(model_dir), task_dir=task_dir))
    assert {k: step0["toy_mc"][k] for k in want0} == pytest.approx(want0, abs=1e-12)
    # step 2 equals lm-eval on the exported pruned checkpoint
    export = tmp_path / "exported"
    assert main(["export", str(out), "--step", "2", "--out", str(export)]) == 0
    want2 = _metrics(_lm_eval_direct(str(export), task_dir=task_dir))
    assert {k: step2["toy_mc"][k] for k in want2} == pytest.approx(want2, abs=1e-12)
    # the report shows the scores beside phaseprune's accuracy
    assert main(["report", str(out)]) == 0
    page = (out / "report.html").read_text()
    assert "lm-eval toy_mc acc · acc_norm (unpruned" in page
    cell = f"{step2['toy_mc']['acc'] * 100:.1f}".rstrip("0").rstrip(".") + "%"
    assert f'<td class="n">{cell} · ' in page


@needs_lm_eval
def test_a_healed_export_scores_in_lm_eval_as_its_run(task_dir, model_dir, tmp_path, capsys):
    """Issue 30's check: a healed run's lm-eval scores equal lm-eval's own on its export.

    The maps are folded into the weights, so lm-eval (through transformers) on the exported
    checkpoint sees what the run scored, and its letter-choice accuracy is the run's readout's.
    """
    out = tmp_path / "run"
    argv = ["prune", "--model", str(model_dir), "--task", "lm_eval:toy_letters",
            "--lm-eval-include", str(task_dir), "--calib", "6", "--eval", "12", "--steps", "2",
            "--strategy", "order", "--order", "2,1", "--heal", "linear", "--heal-items", "6",
            "--out", str(out), "--quiet", "--no-plots", "--n-boot", "20",
            "--lm-eval-tasks", "toy_letters", "--lm-eval-limit", str(N_ROWS),
            "--lm-eval-steps", "2"]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    traj = json.loads((out / "trajectory.json").read_text())
    kept = [s["heal"]["layer"] for s in traj["steps"] if s["heal"].get("map_sha256")]
    assert kept, "no map was kept: the test would not test healing"
    export = tmp_path / "exported"
    assert main(["export", str(out), "--step", "2", "--out", str(export)]) == 0
    assert json.loads((export / "phaseprune_export.json").read_text())["healed_layers"]
    direct = _lm_eval_direct(str(export), task_dir=task_dir, task="toy_letters", limit=N_ROWS)
    scored = traj["steps"][1]["lm_eval"]["toy_letters"]
    want = _metrics(direct, "toy_letters")
    assert {k: scored[k] for k in want} == pytest.approx(want, abs=1e-12)
    # lm-eval's answer per evaluation item is the run's readout pick (letter choices)
    picks = {s["doc_id"]: max(range(4), key=lambda k, s=s: s["filtered_resps"][k][0])
             for s in direct["samples"]["toy_letters"]}  # fmt: skip
    rows = [int(i.rsplit("/", 1)[1]) for i in traj["eval_items"]]
    assert [picks[r] for r in rows] == traj["steps"][1]["eval_picks"]


@needs_lm_eval
def test_view_equals_export_per_request(task_dir, model_dir, tmp_path):
    """The in-memory view gives lm-eval the exported model's loglikelihoods, request by request,
    and leaves the model and the global generators as they were."""
    from phaseprune.model.surgery import export_config, without_layers
    from phaseprune.runs.lm_eval_scores import score_view

    model = tf.AutoModelForCausalLM.from_pretrained(model_dir).eval()
    tok = tf.AutoTokenizer.from_pretrained(model_dir)
    removed = [1, 2]
    with without_layers(model, removed):
        viewed = _lm_eval_direct(model, copy.deepcopy(tok), limit=6, task_dir=task_dir)
        model.save_pretrained(tmp_path / "pruned")
    export_config(model, removed).save_pretrained(tmp_path / "pruned")
    tok.save_pretrained(tmp_path / "pruned")
    exported = _lm_eval_direct(str(tmp_path / "pruned"), limit=6, task_dir=task_dir)
    full = _lm_eval_direct(model, copy.deepcopy(tok), limit=6, task_dir=task_dir)

    def lls(results):
        return [r[0][0] for s in results["samples"]["toy_mc"] for r in s["resps"]]

    assert lls(viewed) == pytest.approx(lls(exported), abs=1e-5)
    assert max(abs(a - b) for a, b in zip(lls(viewed), lls(full), strict=True)) > 1e-3
    assert len(model.model.layers) == 4 and model.config.num_hidden_layers == 4

    rng = torch.get_rng_state()
    scores = score_view(model, copy.deepcopy(tok), ["toy_mc"], removed, limit=6,
                        include=str(task_dir), progress=False)  # fmt: skip
    assert torch.equal(torch.get_rng_state(), rng)
    assert scores["toy_mc"] == {**_metrics(viewed), "n": 6}


@needs_lm_eval
def test_resume_may_add_lm_eval_scores(task_dir, model_dir, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["prune", "--model", str(model_dir), "--task", "lm_eval:toy_mc", "--lm-eval-include",
            str(task_dir), "--calib", "4", "--eval", "4", "--out", str(out), "--quiet",
            "--no-plots", "--n-boot", "20"]  # fmt: skip
    assert main([*argv, "--steps", "1"]) == 0, capsys.readouterr().err
    # the --lm-eval-* settings of the evaluator are not in the fingerprint: the run continues
    more = ["--steps", "2", "--resume", "--lm-eval-tasks", "toy_mc", "--lm-eval-limit", "4"]
    assert main([*argv, *more]) == 0, capsys.readouterr().err
    traj = json.loads((out / "trajectory.json").read_text())
    assert "lm_eval" not in traj["step0"] and "lm_eval" not in traj["steps"][0]
    assert traj["steps"][1]["lm_eval"]["toy_mc"]["n"] == 4


@needs_lm_eval
def test_mixed_option_counts_warn_and_bad_templates_name_the_field(tmp_path):
    """Docs with another number of choices are left out with a warning saying how many; a
    template that fails names its field in one line (it was a traceback)."""
    rows = _rows(8, "Item")
    for row in rows[:3]:
        row["opts"] = row["opts"][:3]
        row["label"] = min(row["label"], 2)
    data = tmp_path / "mixed.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    mc = ('output_type: multiple_choice\ntest_split: test\n'
          'doc_to_text: "Question: {{q}}\\nAnswer:"\ndoc_to_choice: "{{opts}}"\n'
          "doc_to_target: label\n")  # fmt: skip
    (tmp_path / "toy_mixed.yaml").write_text(_yaml("toy_mixed", {"test": data}, mc))
    with pytest.warns(UserWarning, match="toy_mixed: 3 of 8 docs have another number of choices"):
        task = load_task("lm_eval:toy_mixed", lm_eval_include=str(tmp_path))
    assert len(task.items) == 5 and len(task.dropped) == 3
    broken = mc.replace("{{q}}", "{{q.nope()}}")
    (tmp_path / "toy_broken.yaml").write_text(_yaml("toy_broken", {"test": data}, broken))
    with pytest.raises(
        UsageError, match=r"doc_to_text failed .*fix doc_to_text in .*toy_broken\.yaml"
    ):
        load_task("lm_eval:toy_broken", lm_eval_include=str(tmp_path))
