"""The runs pinned by ``tests/golden/``: analyze and 3 pruning steps on the decider and SmolLM2.

``python tests/golden_runs.py`` (from the repository root, with the package installed) writes
the golden records; ``tests/test_golden.py`` reruns the same commands and compares. The golden
files were first written by the code before the run-record refactor (issue 11), so the test
shows that the refactor changed nothing but what it meant to change; the decider's were
written again when its checkpoint was committed (tests/fixtures/decider: retraining it on
another CPU gave another model), by the code of that commit's parent.

Records are compared after :func:`normalise`: timings, versions, creation times, the
fingerprint and the model's weights hash (added later) are dropped, the temporary directory
the decider lives in is replaced by ``<DECIDER>`` and the virtual environment's
``site-packages`` (where the embedded model and the offline data are) by ``<SITE>``. Floats
are compared to 1e-4 (the thread count alone moves float32 margins by about 2e-5); everything
else exactly. The site-packages paths of the golden files were replaced after they were
written (the records are otherwise as written).
"""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path

from phaseprune.runs.resume import LATER_PRUNE_DEFAULTS

GOLDEN = Path(__file__).parent / "golden"
# the decider's weights hash depends on float rounding in its training (thread count)
VOLATILE = ("timing", "phaseprune_version", "created", "fingerprint", "weights_sha256")
SITE = re.compile(r"/\S*?/site-packages")
SMOL_SUBJECTS = "high_school_geography,marketing"
# phase-aware's settings as the golden runs were made (its defaults then, which later runs'
# fingerprints leave out, and the accuracy objective; iterative reads only the objective)
FIRST_VERSION = {**LATER_PRUNE_DEFAULTS, "objective": "accuracy"}
FIRST = [a for k, v in FIRST_VERSION.items() if v != ()  # an empty list is the default: no flag
         for a in (f"--{k.replace('_', '-')}", str(v))]  # fmt: skip


def cases(decider_dir: Path) -> dict[str, list[str]]:
    """Golden name -> CLI arguments (without ``--out``)."""
    dec = ["--model", str(decider_dir), "--task", f"jsonl:{decider_dir / 'eval.jsonl'}",
           "--quiet", "--no-plots", "--n-boot", "200"]  # fmt: skip
    smol = ["--model", "smollm2-135m", "--task", "mmlu", "--subjects", SMOL_SUBJECTS,
            "--quiet", "--no-plots", "--n-boot", "200"]  # fmt: skip
    out = {"decider-analyze": ["analyze", *dec]}
    for strategy in ("iterative", "phase-aware"):
        out[f"decider-{strategy}"] = ["prune", *dec, "--strategy", strategy, "--steps", "3",
                                      "--calib", "40", "--eval", "100", *FIRST]  # fmt: skip
    out["smollm2-analyze"] = ["analyze", *smol, "--limit", "24"]
    for strategy in ("iterative", "phase-aware"):
        out[f"smollm2-{strategy}"] = ["prune", *smol, "--strategy", strategy, "--steps", "3",
                                      "--calib", "8", "--eval", "16", *FIRST]  # fmt: skip
    return out


def record_of(run_dir: Path) -> dict:
    """The run's ``summary.json`` or ``trajectory.json``."""
    for name in ("summary.json", "trajectory.json"):
        if (run_dir / name).exists():
            return json.loads((run_dir / name).read_text())
    raise FileNotFoundError(run_dir)


def normalise(record, decider_dir: Path | None, out_dir: Path | None):
    """Drop volatile keys and replace the run's temporary paths with placeholders."""
    if isinstance(record, dict):
        return {k: normalise(v, decider_dir, out_dir) for k, v in record.items()
                if k not in VOLATILE}  # fmt: skip
    if isinstance(record, list):
        return [normalise(v, decider_dir, out_dir) for v in record]
    if isinstance(record, str):
        if out_dir is not None:
            record = record.replace(str(out_dir), "<OUT>")
        if decider_dir is not None:
            record = record.replace(str(decider_dir), "<DECIDER>")
        record = SITE.sub("<SITE>", record)
    return record


def differences(got, want, path: str = "", tol: float = 1e-4) -> list[str]:
    """Every place where ``got`` and ``want`` differ (floats to ``tol``, abs or relative)."""
    if isinstance(want, dict) and isinstance(got, dict):
        out = [f"{path}: key {k!r} missing" for k in want if k not in got]
        out += [f"{path}: key {k!r} added" for k in got if k not in want]
        for k in want.keys() & got.keys():
            out += differences(got[k], want[k], f"{path}.{k}", tol)
        return out
    if isinstance(want, list) and isinstance(got, list):
        if len(want) != len(got):
            return [f"{path}: length {len(got)} != {len(want)}"]
        return [d for i, (g, w) in enumerate(zip(got, want, strict=True)) for d in
                differences(g, w, f"{path}[{i}]", tol)]  # fmt: skip
    numbers = (int, float)
    if (isinstance(want, float) or isinstance(got, float)) and isinstance(got, numbers) \
            and isinstance(want, numbers) and not isinstance(got, bool):  # fmt: skip
        if math.isclose(got, want, rel_tol=tol, abs_tol=tol):
            return []
        return [f"{path}: {got!r} != {want!r}"]
    return [] if got == want else [f"{path}: {got!r} != {want!r}"]


LATER_FIELDS = ("eval_gold", "calib_gold", "calib_picks")
LATER_READOUT_FIELDS = ("eval_picks", "eval_margins")


def without_later_fields(record: dict) -> dict:
    """A record as the golden files keep it: without the fields added after they were first
    written (each item's pick, margin and gold; the within-chance flag), which the test checks
    against the kept fields instead."""
    if "steps" not in record:
        return record
    record = {k: v for k, v in record.items() if k not in LATER_FIELDS}
    record["step0"] = {k: v for k, v in record["step0"].items() if k not in LATER_READOUT_FIELDS}
    record["steps"] = [{k: v for k, v in s.items() if k not in LATER_READOUT_FIELDS}
                       for s in record["steps"]]  # fmt: skip
    record["collapse"] = {k: v for k, v in record["collapse"].items()
                          if k != "within_chance_step"}  # fmt: skip
    return record


def main(argv: list[str]) -> None:
    """Write the golden records (of the committed decider, copied into a temp dir)."""
    import shutil
    import tempfile

    from phaseprune.cli import main as cli

    only = set(argv)
    with tempfile.TemporaryDirectory() as tmp:
        decider_dir = Path(tmp) / "decider"
        shutil.copytree(Path(__file__).parent / "fixtures" / "decider", decider_dir)
        GOLDEN.mkdir(exist_ok=True)
        for name, args in cases(decider_dir).items():
            if only and name not in only:
                continue
            out = Path(tmp) / name
            assert cli([*args, "--out", str(out)]) == 0, name
            record = without_later_fields(normalise(record_of(out), decider_dir, out))
            (GOLDEN / f"{name}.json").write_text(json.dumps(record, indent=1) + "\n")
            print("wrote", GOLDEN / f"{name}.json")


if __name__ == "__main__":
    main(sys.argv[1:])
