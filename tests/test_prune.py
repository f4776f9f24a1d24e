"""Pruning runs end to end on tiny models: planted identities, resume after kill -9, export,
compare, and the bad-input cases."""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import transformers as tf
from conftest import spread_llama, write_mmlu_csv
from tiny_tokenizers import byte_bpe

from phaseprune.cli import main

IDENTITY = (2, 4)
N_LAYERS = 6


@pytest.fixture(scope="module")
def planted_dir(tmp_path_factory) -> Path:
    """A random 6-layer Llama whose layers 2 and 4 are exact identities."""
    path = tmp_path_factory.mktemp("planted")
    tok = byte_bpe()
    model = spread_llama(tok, N_LAYERS, 0.2)
    with torch.no_grad():
        for i in IDENTITY:
            model.model.layers[i].self_attn.o_proj.weight.zero_()
            model.model.layers[i].mlp.down_proj.weight.zero_()
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def items_dir(tmp_path_factory) -> Path:
    rows = [
        [
            f"Item {i}: which of these fits best here?",
            "red",
            "green",
            "blue",
            "black",
            "ABCD"[i % 4],
        ]
        for i in range(24)
    ]
    return write_mmlu_csv(tmp_path_factory.mktemp("items"), {"toy": rows})


def prune_args(model, data, out, *extra):
    return ["prune", "--model", str(model), "--task", "mmlu", "--data-dir", str(data),
            "--calib", "8", "--eval", "12", "--out", str(out), "--quiet", "--n-boot", "50",
            "--no-plots", *map(str, extra)]  # fmt: skip


def run(capsys, argv):
    code = main(argv)
    out = capsys.readouterr()
    assert code == 0, out.err
    return json.loads((Path(argv[argv.index("--out") + 1]) / "trajectory.json").read_text())


@pytest.mark.parametrize(
    "extra",
    [
        ("--strategy", "iterative", "--objective", "kl"),
        ("--strategy", "block-influence"),
        ("--strategy", "angular"),
        ("--strategy", "logit-js"),
    ],
    ids=lambda e: e[1] + ("-" + e[3] if len(e) > 2 else ""),
)
def test_identity_layers_removed_first(capsys, planted_dir, items_dir, tmp_path, extra):
    traj = run(capsys, prune_args(planted_dir, items_dir, tmp_path / "r", "--steps", "2", *extra))
    assert [s["removed_layer"] for s in traj["steps"]] == list(IDENTITY)
    first = traj["steps"][0]
    assert first["score_gap"] >= 0
    if extra[1] in ("iterative", "logit-js"):
        # the two identities are an exact tie, broken by the lower index
        assert (first["runner_up_layer"], first["score_gap"]) == (IDENTITY[1], 0.0)
    # removing exact identities changes nothing in the evaluation readout
    for s in traj["steps"]:
        assert s["eval_accuracy"] == traj["step0"]["eval_accuracy"]
        assert s["layers"][-1]["margin_mean"] == pytest.approx(
            traj["step0"]["layers"][-1]["margin_mean"], abs=1e-5
        )
    assert traj["complete"] and len(traj["calib_items"]) == 8 and len(traj["eval_items"]) == 12
    assert not set(traj["calib_items"]) & set(traj["eval_items"])
    cands = pd.read_parquet(tmp_path / "r" / "candidates.parquet")
    assert cands.groupby("step").selected.sum().tolist() == [1, 1]


@pytest.mark.parametrize("strategy", ["phase-aware", "sleb", "ppl", "taylor", "last", "random"])
def test_other_strategies_run_and_record(capsys, planted_dir, items_dir, tmp_path, strategy):
    traj = run(capsys, prune_args(planted_dir, items_dir, tmp_path / "r", "--steps", "2",
                                  "--strategy", strategy, "--protect", "5"))  # fmt: skip
    removed = [k for s in traj["steps"] for k in s["removed_layers"]]
    assert len(removed) == 2 and 5 not in removed and len(set(removed)) == 2
    for s in traj["steps"]:
        assert s["remaining_layers"] == [k for k in range(N_LAYERS) if k not in s["removed_so_far"]]
        assert len(s["layers"]) == len(s["remaining_layers"]) + 1
        assert s["phase_of_removed"] in ("silent", "decisive", "none")
    if strategy == "last":
        assert removed == [4, 3]
    if strategy in ("sleb", "ppl", "taylor", "random"):
        expected, scores = reference_choice(strategy, planted_dir, traj, free=[0, 1, 2, 3, 4])
        assert removed == expected
        cands = pd.read_parquet(tmp_path / "r" / "candidates.parquet").query("step == 1")
        assert dict(zip(cands.layer, cands.score, strict=True)) == pytest.approx(
            scores, rel=1e-4, abs=1e-6
        )
    if strategy == "phase-aware":
        # a random model never decides: every step says so, and what chose instead
        assert all("the model has no Decisive Phase): the best by the objective; the model has "
                   "no transition to keep" in (s["note"] or "") for s in traj["steps"])  # fmt: skip
        assert not any("transition_checks" in s["calib_phases"] for s in traj["steps"])
    assert "statement" in traj["collapse"]


def calib_texts(path: Path, traj: dict) -> list[list[int]]:
    """The calibration texts as token ids, rebuilt from the item rows: prompt + gold letter.

    The prompts are written out by hand (lm-eval's MMLU layout) and checked against the run's
    recorded token hash, so the reference scores below read the very texts the run read.
    """
    tok = tf.AutoTokenizer.from_pretrained(path)
    task = traj["task"]
    ids = [
        tok(
            "The following are multiple choice questions (with answers) about toy.\n\n"
            f"Item {i}: which of these fits best here?\nA. red\nB. green\nC. blue\nD. black\n"
            "Answer:",
            add_special_tokens=False,
        )["input_ids"]
        for i in range(task["n_items"])
    ]
    digest = hashlib.sha256()
    for row in ids:
        digest.update(np.asarray(row, dtype=np.int64).tobytes() + b"|")
    assert digest.hexdigest() == task["prompt_tokens_sha256"]
    calib = [int(name.split("/")[1]) for name in traj["calib_items"]]
    return [ids[i] + [task["option_token_ids"][i % 4]] for i in calib]  # gold is "ABCD"[i % 4]


@contextmanager
def dropped(model, layers: set[int]):
    """The model with ``layers`` taken out of its layer list (restored after)."""
    full = model.model.layers
    model.model.layers = torch.nn.ModuleList(m for k, m in enumerate(full) if k not in layers)
    try:
        yield
    finally:
        model.model.layers = full


def mean_nll(model, texts, without: set[int]) -> float:
    """Next-token NLL per predicted token over all texts, one unpadded text at a time."""
    total = 0.0
    with torch.no_grad(), dropped(model, without):
        for row in texts:
            ids = torch.tensor([row])
            logits = model(input_ids=ids, use_cache=False).logits[0, :-1]
            total += float(torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum"))
    return total / sum(len(row) - 1 for row in texts)


def taylor_scores(model, texts) -> dict[int, float]:
    """Sum of |w * dL/dw| over each layer's parameters, L the mean next-token NLL."""
    n = sum(len(row) - 1 for row in texts)
    for row in texts:
        ids = torch.tensor([row])
        logits = model(input_ids=ids, use_cache=False).logits[0, :-1]
        (torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum") / n).backward()
    return {
        k: sum(float((p * p.grad).abs().sum().detach()) for p in layer.parameters())
        for k, layer in enumerate(model.model.layers)
    }


def reference_choice(strategy, path, traj, free) -> tuple[list[int], dict[int, float]]:
    """The two layers ``strategy`` must remove from ``free``, and its step-1 score per layer.

    Computed from each strategy's documented rule, with plain torch on the saved model: lowest
    score first, ties to the lower index; random follows the seeded numpy order.
    """

    def best(scores, among):
        return min(among, key=lambda k: (scores[k], k))

    if strategy == "random":
        order = [int(k) for k in np.random.default_rng(traj["settings"]["seed"]).permutation(6)]
        return [k for k in order if k in free][:2], {k: float(order.index(k)) for k in free}
    model = tf.AutoModelForCausalLM.from_pretrained(path).eval()
    texts = calib_texts(path, traj)
    if strategy == "taylor":  # Taylor+ spares the first n // 4 = 1 block and the last n // 8 = 0
        scores = {k: v for k, v in taylor_scores(model, texts).items() if k in free}
        scores[0] = float("inf")
    else:
        scores = {k: mean_nll(model, texts, {k}) for k in free}
    if strategy == "ppl":
        scores = {k: float(np.exp(v)) for k, v in scores.items()}
    first = best(scores, free)
    rest = [k for k in free if k != first]
    if strategy == "sleb":  # re-scored after the first removal
        return [first, best({k: mean_nll(model, texts, {first, k}) for k in rest}, rest)], scores
    return [first, best(scores, rest)], scores


def _strip(traj: dict) -> dict:
    traj = dict(traj)
    for key in ("timing", "created", "settings"):
        traj.pop(key, None)
    return traj


# Runs the CLI in a child process that SIGKILLs itself in the middle of writing step 3's
# trajectory (temp file half written, not yet moved into place): a kill -9 at a known moment.
KILLER = """
import os, signal, sys
import phaseprune.runs.outdir as runio
real = runio.atomic_write_json
def write(path, record):
    if len(record.get("steps", [])) == 3:
        (path.parent / ".trajectory.json.partial.tmp").write_text('{"steps": [')
        os.kill(os.getpid(), signal.SIGKILL)
    real(path, record)
runio.atomic_write_json = write
from phaseprune.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_resume_after_kill_9_is_identical(capsys, planted_dir, items_dir, tmp_path):
    args = ["--steps", "4", "--strategy", "iterative"]
    full = run(capsys, prune_args(planted_dir, items_dir, tmp_path / "full", *args))
    out = tmp_path / "killed"
    cmd = [sys.executable, "-c", KILLER, *prune_args(planted_dir, items_dir, out, *args)]
    proc = subprocess.run(cmd, capture_output=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    partial = json.loads((out / "trajectory.json").read_text())
    assert not partial["complete"] and len(partial["steps"]) == 2
    code = main(prune_args(planted_dir, items_dir, out, *args))
    assert code == 2 and "--resume" in capsys.readouterr().err
    # a tiny --cache-budget (one batch at a time) changes neither the result nor the
    # fingerprint, so it may differ on resume
    resumed = run(
        capsys, prune_args(planted_dir, items_dir, out, *args, "--resume", "--cache-budget", "1B")
    )
    assert _strip(resumed) == _strip(full)
    a = pd.read_parquet(tmp_path / "full" / "candidates.parquet")
    b = pd.read_parquet(out / "candidates.parquet")
    pd.testing.assert_frame_equal(a, b)


def test_larger_steps_extend_a_finished_run(capsys, planted_dir, items_dir, tmp_path):
    """--resume with a larger --steps continues a finished run; the result equals one long run."""
    full = run(capsys, prune_args(planted_dir, items_dir, tmp_path / "full", "--steps", "4"))
    out = tmp_path / "short"
    short = run(capsys, prune_args(planted_dir, items_dir, out, "--steps", "2"))
    assert short["complete"] and len(short["steps"]) == 2
    extended = run(capsys, prune_args(planted_dir, items_dir, out, "--steps", "4", "--resume"))
    assert _strip(extended) == _strip(full)
    assert extended["settings"]["steps"] == 4
    pd.testing.assert_frame_equal(
        pd.read_parquet(tmp_path / "full" / "candidates.parquet"),
        pd.read_parquet(out / "candidates.parquet"),
    )
    # asking for fewer steps than it has leaves the run as it is
    before = (out / "trajectory.json").read_bytes()
    again = run(capsys, prune_args(planted_dir, items_dir, out, "--steps", "3", "--resume"))
    assert len(again["steps"]) == 4 and (out / "trajectory.json").read_bytes() == before
    # any other setting still refuses the resume
    code = main(prune_args(planted_dir, items_dir, out, "--steps", "4", "--resume", "--calib", "6"))
    assert code == 2 and "other settings (--calib)" in capsys.readouterr().err


def test_export_round_trip_and_compare(capsys, planted_dir, items_dir, tmp_path):
    a = tmp_path / "a"
    b = tmp_path / "b"
    run(capsys, prune_args(planted_dir, items_dir, a, "--steps", "3", "--strategy", "iterative"))
    run(capsys, prune_args(planted_dir, items_dir, b, "--steps", "3", "--strategy", "last"))
    export = tmp_path / "exported"
    assert main(["export", str(a), "--step", "2", "--out", str(export)]) == 0
    capsys.readouterr()
    config = json.loads((export / "config.json").read_text())
    assert config["num_hidden_layers"] == N_LAYERS - 2
    assert any(p.suffix == ".safetensors" for p in export.iterdir())
    model = tf.AutoModelForCausalLM.from_pretrained(export)
    assert len(model.model.layers) == N_LAYERS - 2
    # the exported model reproduces the run's step-2 evaluation answers
    analyze_out = tmp_path / "analyze-export"
    argv = ["analyze", "--model", export, "--task", "mmlu", "--data-dir", items_dir,
            "--out", analyze_out, "--quiet", "--no-plots", "--n-boot", "50"]  # fmt: skip
    assert main([str(a) for a in argv]) == 0
    capsys.readouterr()
    traj = json.loads((a / "trajectory.json").read_text())
    items = pd.read_parquet(analyze_out / "items.parquet")
    last = items[items.layer == N_LAYERS - 2].set_index("item_id")
    acc = last.loc[traj["eval_items"], "correct"].mean()
    assert acc == pytest.approx(traj["steps"][1]["eval_accuracy"])
    assert main(["compare", str(a), str(b), "--out", str(tmp_path / "cmp")]) == 0
    table = pd.read_csv(tmp_path / "cmp" / "compare.csv")
    assert list(table.strategy) == ["iterative", "last"]
    assert (tmp_path / "cmp" / "compare.png").stat().st_size > 1000


def test_bad_prune_inputs(capsys, planted_dir, items_dir, tmp_path):
    def err(argv):
        code = main(argv)
        e = capsys.readouterr().err
        assert code == 2 and len(e.strip().splitlines()) == 1, e
        return e

    assert "strategy" in err(
        prune_args(planted_dir, items_dir, tmp_path / "x", "--strategy", "nope")
    )
    assert "need more" in err(prune_args(planted_dir, items_dir, tmp_path / "x", "--eval", "100"))
    assert "--protect" in err(prune_args(planted_dir, items_dir, tmp_path / "x", "--protect", "9"))
    run(
        capsys,
        prune_args(planted_dir, items_dir, tmp_path / "ok", "--steps", "1", "--strategy", "last"),
    )
    assert "does not exist" in err(
        ["export", str(tmp_path / "ok"), "--step", "5", "--out", str(tmp_path / "e")]
    )
    assert "not a pruning run" in err(["compare", str(tmp_path), "--out", str(tmp_path / "c")])


def test_phase_aware_on_decider_removes_decisive_layers(capsys, decider, tmp_path):
    """On a model that decides, phase-aware pruning (one Decisive layer at a time, by the
    objective) only removes Decisive-Phase layers."""
    task = f"jsonl:{decider.path / 'eval.jsonl'}"
    argv = ["prune", "--model", str(decider.path), "--task", task, "--calib", "60", "--eval", "100",
            "--strategy", "phase-aware", "--decisive", "objective", "--steps", "1", "--out",
            str(tmp_path / "pa"), "--quiet", "--no-plots", "--n-boot", "200"]  # fmt: skip
    traj = run(capsys, argv)
    step = traj["steps"][0]
    t = step["calib_phases"]["transition_layer"]
    assert t is not None and step["note"] is None
    # eligible: decoder layers whose output index is after the transition
    assert step["removed_layer"] + 1 > t
    assert step["phase_of_removed"] == "decisive"
    cands = pd.read_parquet(tmp_path / "pa" / "candidates.parquet")
    assert all(k + 1 > t for k in cands.layer)


def test_stop_at_collapse_on_decider(capsys, decider, tmp_path):
    """Removing the last layers of a model that decides collapses it; the run stops there."""
    task = f"jsonl:{decider.path / 'eval.jsonl'}"
    argv = ["prune", "--model", str(decider.path), "--task", task, "--calib", "20", "--eval", "100",
            "--strategy", "last", "--steps", "5", "--stop-at-collapse", "--out",
            str(tmp_path / "last"), "--quiet", "--no-plots", "--n-boot", "100"]  # fmt: skip
    traj = run(capsys, argv)
    c = traj["collapse"]
    assert c["step"] is not None and c["step"] < 5
    assert len(traj["steps"]) == c["step"] and traj["complete"]


@pytest.mark.parametrize("objective", ["accuracy", "margin", "prob-margin"])
def test_objectives_pick_their_best(capsys, planted_dir, items_dir, tmp_path, objective):
    out = tmp_path / "o"
    args = prune_args(planted_dir, items_dir, out, "--steps", "1", "--objective", objective)
    traj = run(capsys, args)
    cands = pd.read_parquet(out / "candidates.parquet")
    column = {"accuracy": "accuracy", "margin": "margin", "prob-margin": "prob_margin"}[objective]
    assert (cands.score == cands[column]).all()
    best = cands.sort_values([column, "margin" if column == "accuracy" else "accuracy", "layer"],
                             ascending=[False, False, True]).iloc[0]  # fmt: skip
    assert traj["steps"][0]["removed_layer"] == best.layer
    assert cands[cands.selected].layer.tolist() == [best.layer]


def test_min_accuracy_stops_early(capsys, planted_dir, items_dir, tmp_path):
    traj = run(capsys, prune_args(planted_dir, items_dir, tmp_path / "m", "--steps", "4",
                                  "--strategy", "last", "--min-accuracy", "1.01"))  # fmt: skip
    assert len(traj["steps"]) == 1 and traj["complete"]


def test_calibration_and_evaluation_spread_over_subjects(capsys, planted_dir, tmp_path):
    row = ["Which letter?", "one", "two", "three", "four", "B"]
    data = write_mmlu_csv(tmp_path / "two", {"anatomy": [row] * 10, "virology": [row] * 10})
    argv = prune_args(planted_dir, data, tmp_path / "r", "--steps", "1", "--strategy", "last")
    argv[argv.index("--calib") + 1], argv[argv.index("--eval") + 1] = "4", "6"
    traj = run(capsys, argv)
    assert traj["calib_items"] == ["anatomy/0", "anatomy/1", "virology/0", "virology/1"]
    assert traj["eval_items"] == [f"{s}/{i}" for s in ("anatomy", "virology") for i in (2, 3, 4)]


def test_strategy_registry_drives_choices_readme_and_implementations():
    """One registry: the CLI's choices, the README's table and the implementations agree."""
    from phaseprune.runs.config import STRATEGIES
    from phaseprune.strategies.registry import STRATEGY_NAMES, markdown_table, strategy_function

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert markdown_table() in readme
    assert STRATEGIES == STRATEGY_NAMES
    for name in STRATEGY_NAMES:
        assert callable(strategy_function(name)), name
