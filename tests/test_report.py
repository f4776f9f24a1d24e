"""``phaseprune report``: the page says what the run records say, and bad inputs are refused.

Pages are built from real runs of the trained decider (``report_fixtures``) and read back
with the standard library's HTML parser; numbers are compared with the JSON records.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections import defaultdict
from collections.abc import Callable
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest

from phaseprune.cli import main
from phaseprune.core.collapse import collapse_statement
from phaseprune.core.errors import UsageError
from phaseprune.presentation.report import build_report
from phaseprune.presentation.report.text import layers_text, pct

pytest_plugins = ["report_fixtures"]

VOID = {"meta", "link", "br", "img", "input", "hr", "col", "source", "wbr"}
PCT = r"([\d.]+)%"


class Page(HTMLParser):
    """Visible text by element id, table rows by table id, every tag with its attributes."""

    def __init__(self, path: Path):
        super().__init__(convert_charrefs=True)
        self.text: dict[str, str] = defaultdict(str)
        self.tables: dict[str | None, list[tuple[list[str], dict]]] = defaultdict(list)
        self.tags: list[tuple[str, dict]] = []
        self._open: list[tuple[str, str | None]] = []
        self._tables: list[str | None] = []
        self.feed(path.read_text(encoding="utf-8"))

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append((tag, a))
        if tag in VOID:
            return
        self._open.append((tag, a.get("id")))
        if tag == "table":
            self._tables.append(a.get("id"))
        elif tag == "tr" and self._tables:
            self.tables[self._tables[-1]].append(([], a))
        elif tag in ("td", "th") and self._tables:
            self.tables[self._tables[-1]][-1][0].append("")

    def handle_endtag(self, tag):
        while self._open:
            t, _ = self._open.pop()
            if t == "table":
                self._tables.pop()
            if t == tag:
                break

    def handle_data(self, data):
        for _, element_id in self._open:
            if element_id:
                self.text[element_id] += data
        if self._tables and any(t in ("td", "th") for t, _ in self._open):
            rows = self.tables[self._tables[-1]]
            rows[-1][0][-1] += data

    def say(self, element_id: str) -> str:
        """Whitespace-normalised text of an element."""
        assert element_id in self.text, f"no element #{element_id}"
        return " ".join(self.text[element_id].split())

    def rows(self, table_id: str) -> list[list[str]]:
        """Body rows of a table as normalised cell texts (header row dropped)."""
        return [[" ".join(c.split()) for c in cells] for cells, _ in self.tables[table_id][1:]]

    def figures(self) -> list[str]:
        return [a["id"] for t, a in self.tags if "plotly-graph-div" in a.get("class", "")]


def copy_run(src: Path, dst: Path, edit: Callable[[dict], None] | None = None) -> Path:
    """Copy a run directory (without reports built in it) and edit its JSON record."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*report.html", "*report_files"))
    if edit is not None:
        name = "summary.json" if (dst / "summary.json").exists() else "trajectory.json"
        record = json.loads((dst / name).read_text())
        edit(record)
        (dst / name).write_text(json.dumps(record))
    return dst


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def number(text: str) -> float:
    return float(text.replace("−", "-"))


def assert_self_contained(html: Path) -> None:
    text = html.read_text(encoding="utf-8")
    assert not re.search(r"<(script|link|img|iframe)\b[^>]*\b(src|href)\s*=", text, re.I)
    assert not re.search(r"@import|url\(\s*['\"]?https?:", text, re.I)
    assert text.count("<script>") >= 1 and "Plotly.newPlot" in text


def test_report_package_loads_no_torch():
    code = (
        "import sys, phaseprune.presentation.report, phaseprune.presentation.report.build; "
        "print(sorted(m for m in ('torch', 'transformers', 'accelerate') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_text_formats():
    assert [pct(0.61), pct(0.175), pct(1.0), pct(0.0), pct(None)] == [
        "61%", "17.5%", "100%", "0%", "n/a",
    ]  # fmt: skip
    assert layers_text(7) == "layer 7" and layers_text([3, 4]) == "layers 3–4"
    step0 = {"eval_accuracy": 0.8, "eval_accuracy_ci": [0.7, 0.9]}
    block = {"step": 2, "removed_layer": [3, 4], "phase_of_removed": "decisive",
             "accuracy_before": 0.8, "accuracy_after": 0.3, "reason": "within chance"}  # fmt: skip
    assert collapse_statement(block, step0, [{}, {}], 0.25, 0.5, pct=pct) == (
        "Removing layers 3–4, a Decisive-Phase block, at step 2 dropped accuracy from 80% to "
        "30% (within chance)."
    )
    undecided = {**block, "removed_layer": 6, "phase_of_removed": "none"}
    assert collapse_statement(undecided, step0, [{}, {}], 0.25, 0.5) == (
        "Removing layer 6 (from a model with no transition left) at step 2 dropped accuracy "
        "from 80% to 30% (within chance)."
    )
    at_chance = {"eval_accuracy": 0.24, "eval_accuracy_ci": [0.2, 0.3]}
    assert collapse_statement({"step": None}, at_chance, [], 0.25, 0.5, pct=pct).startswith(
        "The unpruned model is already within chance (24%, chance 25%): it never decides"
    )
    # above chance on too few items to tell (one item right: 100%, its interval from 0%)
    one = {"eval_accuracy": 1.0, "eval_accuracy_ci": [0.0, 1.0]}
    said = collapse_statement({"step": None}, one, [], 0.25, 0.5, pct=pct)
    assert said.startswith("The unpruned accuracy (100%) cannot be told from chance (25%)")
    assert "never decides" not in said


def test_analyze_report(report_runs, capsys):
    assert main(["report", str(report_runs.analyze)]) == 0
    html = report_runs.analyze / "report.html"
    assert str(html) in capsys.readouterr().out
    s = load(report_runs.analyze / "summary.json")
    page = Page(html)
    acc = page.say("run-1-headline-accuracy")
    assert pct(s["accuracy"]) in acc and f"{pct(s['chance'])}" in acc
    lo, hi = (number(x) / 100 for x in re.search(rf"CI ([\d.]+)–{PCT}", acc).groups())
    assert lo == pytest.approx(s["accuracy_ci"][0], abs=6e-4)
    assert hi == pytest.approx(s["accuracy_ci"][1], abs=6e-4)
    t, (t_lo, t_hi) = s["transition_layer"], s["transition_ci"]
    assert t is not None  # the decider decides
    assert page.say("run-1-headline-transition").startswith(
        f"transition layer {t} 95% CI {t_lo}–{t_hi}"
    )
    assert pct(s["p_no_transition"]) in page.say("run-1-headline-p-no-transition")
    assert s["phases"]["statement"] in page.say("run-1-phases")
    rows = page.rows("run-1-layers")
    assert len(rows) == s["n_layers"] + 1
    for row, rec in zip(rows, s["layers"], strict=True):
        assert int(row[0]) == rec["layer"]
        assert number(row[2]) == pytest.approx(rec["margin_mean"], abs=0.006)
        assert row[4] == pct(rec["accuracy"])
        assert row[1] == ("decisive" if rec["layer"] >= t else "silent")
    settings = page.say("run-1-settings")
    assert ", ".join(map(str, s["task"]["option_token_ids"])) in settings
    assert s["model"]["architecture"] in settings and "phaseprune 0.1.0" not in settings
    assert page.figures() == ["run-1-margin", "run-1-option-frequency", "run-1-accuracy"]
    for name in ("margin.png", "option_frequency.png", "accuracy.png"):
        assert (report_runs.analyze / "report_files" / name).stat().st_size > 5000
    assert_self_contained(html)


def test_prune_report(report_runs, tmp_path):
    report = build_report([report_runs.iterative], out=tmp_path / "iter.html")
    assert report.html == tmp_path / "iter.html" and report.n_figures == 5
    assert {p.name for p in (tmp_path / "iter_files").iterdir()} == {
        "accuracy_vs_removed.png", "margin_heatmap.png", "option_frequency_steps.png",
    }  # fmt: skip
    traj = load(report_runs.iterative / "trajectory.json")
    page = Page(report.html)
    assert pct(traj["step0"]["eval_accuracy"]) in page.say("run-1-headline-accuracy")
    last = traj["steps"][-1]
    assert pct(last["eval_accuracy"]) in page.say("run-1-headline-last-accuracy")
    rows = page.rows("run-1-steps")
    assert len(rows) == len(traj["steps"]) == 5
    for row, s in zip(rows, traj["steps"], strict=True):
        assert row[:4] == [str(s["step"]), f"layer {s['removed_layer']}", s["phase_of_removed"],
                           str(len(s["removed_so_far"]))]  # fmt: skip
        assert row[4] == pct(s["eval_accuracy"])
    c = traj["collapse"]
    assert c["step"] is not None  # the decider collapses within 5 removals
    sentence = page.say("run-1-collapse")
    m = re.fullmatch(
        rf"Removing layer (\d+), a (Silent|Decisive)-Phase layer, at step (\d+) dropped accuracy "
        rf"from {PCT} to {PCT} \((.+)\)\.", sentence
    )  # fmt: skip
    assert m, sentence
    assert int(m[1]) == c["removed_layer"] and m[2].lower() == c["phase_of_removed"]
    assert int(m[3]) == c["step"] and m[6] == c["reason"]
    assert float(m[4]) / 100 == pytest.approx(c["accuracy_before"], abs=6e-4)
    assert float(m[5]) / 100 == pytest.approx(c["accuracy_after"], abs=6e-4)
    marked = [r for cells, r in page.tables["run-1-steps"] if "collapse-row" in r.get("class", "")]
    assert [r["id"] for r in marked] == [f"run-1-step-{c['step']}"]
    names = ["accuracy", "margin-heatmap", "margin-steps", "option-frequency", "option-steps"]
    assert page.figures() == [f"run-1-{n}" for n in names]
    assert_self_contained(report.html)


def test_comparison_report(report_runs):
    from phaseprune.compare import compare_table
    from phaseprune.runs.files import load_trajectory

    report = build_report([report_runs.iterative, report_runs.last])
    assert report.html == report_runs.iterative / "compare_report.html"
    assert (report.files_dir / "compare.png").stat().st_size > 5000
    assert (report.files_dir / "2-last" / "margin_heatmap.png").exists()
    page = Page(report.html)
    trajs = [load_trajectory(d) for d in (report_runs.iterative, report_runs.last)]
    expected = compare_table(trajs, ["a", "b"])
    rows = page.rows("compare-table")
    assert [r[1] for r in rows] == ["iterative", "last"]
    assert [int(r[5]) for r in rows] == expected.layers_removed_before_collapse.tolist()
    for row, traj in zip(rows, trajs, strict=True):
        c = traj["collapse"]
        assert row[6] == f"step {c['step']}: layer {c['removed_layer']} ({c['phase_of_removed']})"
        assert row[7] == ", ".join(str(s["removed_layer"]) for s in traj["steps"])
    figs = page.figures()
    assert figs[0] == "compare-accuracy" and len(figs) == report.n_figures == 11
    div = report.html.read_text()
    assert '"name":"iterative (iterative)"' in div and '"name":"last (last)"' in div
    assert page.say("run-2-collapse") != page.say("run-1-collapse")
    assert_self_contained(report.html)


def test_incomplete_prune_run_reports_completed_steps(report_runs, tmp_path):
    def stop_after_two(traj):
        traj["steps"] = traj["steps"][:2]
        traj["complete"] = False
        del traj["collapse"]

    run = copy_run(report_runs.iterative, tmp_path / "killed", stop_after_two)
    page = Page(build_report([run]).html)
    banner = next(a for t, a in page.tags if a.get("role") == "alert")
    assert banner is not None
    text = " ".join(page.text.get("run-1", "").split())
    assert "This pruning run is incomplete: 2 of 5 steps" in text and "--resume" in text
    assert len(page.rows("run-1-steps")) == 2
    traj = load(run / "trajectory.json")
    assert page.say("run-1-collapse") == (
        f"No collapse within 2 removals (accuracy {pct(traj['steps'][-1]['eval_accuracy'])}, "
        f"unpruned {pct(traj['step0']['eval_accuracy'])}; 2 layers removed): it never fell below "
        f"50% of the unpruned accuracy."
    )


def test_model_without_transition(report_runs, tmp_path):
    def never_decides(summary):
        summary.update(transition_layer=None, transition_ci=None, p_no_transition=1.0)
        summary["phases"].update(silent=[0, summary["n_layers"]], decisive=None,
                                 statement="No transition: the model does not decide.")  # fmt: skip

    run = copy_run(report_runs.analyze, tmp_path / "flat", never_decides)
    page = Page(build_report([run]).html)
    assert page.say("run-1-headline-transition").startswith("transition layer none")
    assert page.say("run-1-headline-p-no-transition").startswith("p(no transition) 100%")
    assert "No transition" in page.say("run-1-phases")


def _schema_99(record):
    record["schema_version"] = 99


def _kind_wrong(record):
    record["kind"] = "export"


def _drop_layers(record):
    record.pop("layers", None)
    record.pop("step0", None)


@pytest.mark.parametrize("edit", [_schema_99, _kind_wrong, _drop_layers])
@pytest.mark.parametrize("which", ["analyze", "iterative"])
def test_edited_records_refused(report_runs, tmp_path, which, edit):
    run = copy_run(getattr(report_runs, which), tmp_path / "edited", edit)
    name = "summary.json" if which == "analyze" else "trajectory.json"
    pattern = {_schema_99: "schema_version 99, this phaseprune reads 1",
               _kind_wrong: "says kind 'export'", _drop_layers: "lacks"}[edit]  # fmt: skip
    with pytest.raises(UsageError, match=re.escape(pattern)) as err:
        build_report([run])
    assert str(run / name) in str(err.value) and "rerun `phaseprune" in str(err.value)
    assert not (run / "report.html").exists()


def test_not_runs_refused(report_runs, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    partial = tmp_path / "partial-analyze"
    (partial / "partial").mkdir(parents=True)
    (partial / "partial" / "readout.npz").write_bytes(b"")
    compared = tmp_path / "cmp"
    compared.mkdir()
    (compared / "compare.csv").write_text("run\n")
    broken = copy_run(report_runs.analyze, tmp_path / "broken")
    (broken / "summary.json").write_text('{"schema_version": 1,')
    cases = [
        (tmp_path / "missing", "does not exist"),
        (empty, "is not a phaseprune run"),
        (partial, "incomplete analyze run (no summary.json): rerun the same `phaseprune analyze`"),
        (compared, "output of `phaseprune compare`"),
        (broken, "is not valid JSON"),
        (report_runs.analyze / "items.parquet", "is a file"),
    ]
    for path, message in cases:
        with pytest.raises(UsageError, match=re.escape(message)):
            build_report([path])


def test_runs_that_do_not_compare_refused(report_runs, tmp_path):
    def other_items(traj):
        traj["eval_items"] = traj["eval_items"][1:]

    moved = copy_run(report_runs.last, tmp_path / "other", other_items)
    with pytest.raises(UsageError, match="evaluated on other items"):
        build_report([report_runs.iterative, moved])
    with pytest.raises(UsageError, match="given twice"):
        build_report([report_runs.iterative, report_runs.iterative / "trajectory.json"])
    with pytest.raises(UsageError, match=r"\.html"):
        build_report([report_runs.iterative], out=tmp_path / "report.txt")


def test_cli_usage_error_is_one_line(capsys, tmp_path):
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not a phaseprune run" in err[0]


def test_pngs_copied_from_plots_only_while_their_record_is_unchanged(decider, tmp_path):
    """A run made with plots gets its own PNGs copied; once its record changes, they are redrawn."""
    from phaseprune.presentation.report.load import load_run
    from phaseprune.presentation.report.static import _drawn

    task = f"jsonl:{decider.path / 'eval.jsonl'}"
    common = ["--model", decider.path, "--task", task, "--quiet", "--n-boot", "50"]
    main([str(a) for a in ["analyze", *common, "--limit", "40", "--out", tmp_path / "a"]])
    main([str(a) for a in ["prune", *common, "--calib", "20", "--eval", "20", "--strategy",
                           "last", "--steps", "2", "--out", tmp_path / "p"]])  # fmt: skip
    for run_dir in (tmp_path / "a", tmp_path / "p"):
        run = load_run(run_dir)
        assert _drawn(run) is not None, f"{run_dir.name}: stamp does not match its record"
        report = build_report([run_dir], out=tmp_path / f"{run_dir.name}.html")
        for png in report.pngs:  # byte-for-byte the run's own files
            assert png.read_bytes() == (run_dir / "plots" / png.name).read_bytes()
    record = tmp_path / "p" / "trajectory.json"
    traj = load(record)
    traj["steps"][0]["eval_accuracy"] = 0.5 if traj["steps"][0]["eval_accuracy"] != 0.5 else 0.25
    record.write_text(json.dumps(traj))
    assert _drawn(load_run(tmp_path / "p")) is None
    report = build_report([tmp_path / "p"], out=tmp_path / "edited.html")
    redrawn = {p.name: p.read_bytes() for p in report.pngs}
    assert (
        redrawn["accuracy_vs_removed.png"]
        != (tmp_path / "p" / "plots" / "accuracy_vs_removed.png").read_bytes()
    )


def test_figures_name_local_models_without_their_path():
    from phaseprune.presentation.figures.data import model_label

    assert model_label({"name": "/root/.cache/m/qwen-q4_k_m.gguf"}) == "qwen-q4_k_m.gguf"
    assert model_label({"name": "./ckpt/pruned"}) == "pruned"
    assert model_label({"name": "Qwen/Qwen2.5-7B"}) == "Qwen/Qwen2.5-7B"  # a hub id stays


def test_compare_and_report_name_the_same_provisional_collapse(report_runs, tmp_path, capsys):
    """An unfinished run, as a killed prune leaves it: both read its stored provisional collapse."""
    from phaseprune.core.collapse import trajectory_collapse

    def stop_at_collapse_step(traj):
        step = traj["collapse"]["step"]
        traj["steps"] = traj["steps"][:step]
        traj["complete"] = False
        traj["collapse"] = trajectory_collapse(traj)  # what prune stores after each step

    runs = [copy_run(report_runs.iterative, tmp_path / "killed", stop_at_collapse_step),
            copy_run(report_runs.last, tmp_path / "last", lambda t: None)]  # fmt: skip
    c = load(runs[0] / "trajectory.json")["collapse"]
    assert c["step"] is not None
    assert main(["compare", *map(str, runs), "--out", str(tmp_path / "cmp")]) == 0
    capsys.readouterr()
    compare_row = pd.read_csv(tmp_path / "cmp" / "compare.csv").iloc[0]
    assert int(compare_row["collapse_step"]) == c["step"]
    assert str(compare_row["collapse_layer"]) == str(c["removed_layer"])
    page = Page(build_report(runs).html)
    assert page.rows("compare-table")[0][6].startswith(
        f"step {c['step']}: layer {c['removed_layer']} ({c['phase_of_removed']})"
    )
    assert page.say("run-1-collapse").startswith(f"Removing layer {c['removed_layer']}")
