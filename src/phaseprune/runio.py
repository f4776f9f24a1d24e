"""Run directories: the one loader and writer of run records, atomic writes, partial results.

:func:`load_run` (and :func:`load_summary`, :func:`load_trajectory`) is how every consumer
reads a run (``prune --resume``, compare, report, export, demo, the findings script): it checks
the schema version, the kind, the required keys of :mod:`phaseprune.records`' types and, for a
resume, the fingerprint, and turns every problem into one :class:`UsageError` line.
:func:`write_summary` and :func:`write_trajectory` are how runs are written.

Every file is written to a temporary name in the same directory and moved into place with
``os.replace``, so a run killed at any moment leaves either the old file or the new one,
never half of one. ``summary.json`` is written last: its presence marks a complete run.

Partial results of the forward passes live in ``OUT/partial/readout.npz`` beside a
fingerprint of everything that determines them (model file hash, token ids, option ids,
code version). A rerun into the same directory with the same fingerprint continues from
there; a different fingerprint discards them.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from phaseprune.errors import UsageError
from phaseprune.records import (
    RECORD_FILES,
    RECORD_TYPES,
    RECORD_VERSIONS,
    RunKind,
    Summary,
    Trajectory,
    parquet_bytes,
)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, record) -> None:
    """Write a JSON record atomically (UTF-8, indented, NaN refused)."""
    text = json.dumps(record, indent=2, allow_nan=False, ensure_ascii=False) + "\n"
    atomic_write_bytes(path, text.encode())


def check_out_dir(out: Path, kind: RunKind, *, overwrite: bool, resume: bool = False) -> None:
    """Refuse an ``out`` that cannot take this run: a directory holds one run.

    Refused: a file; a directory holding another kind of run; one holding a run of this kind,
    unless ``overwrite`` or ``resume``.
    """
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file; pass a directory")
    for other, name in RECORD_FILES.items():
        if other != kind and (out / name).exists():
            raise UsageError(
                f"--out {out} holds a `phaseprune {other}` run ({name}); a directory holds one "
                "run: pass another --out"
            )
    if (out / RECORD_FILES[kind]).exists() and not (overwrite or resume):
        hint = "--resume to continue it, " if kind == "prune" else ""
        raise UsageError(
            f"--out {out} already holds a run ({RECORD_FILES[kind]}); pass {hint}--overwrite "
            "or another --out"
        )


OWNED = {
    "analyze": ("summary.json", "items.parquet", "plots", "partial"),
    "prune": ("trajectory.json", "candidates.parquet", "plots"),
}
"""The files and folders a run of each kind writes (``--overwrite`` clears them)."""


def prepare_out_dir(out: Path, kind: RunKind, *, overwrite: bool) -> None:
    """Create ``out``; with ``overwrite``, first remove everything a run of ``kind`` wrote there."""
    check_out_dir(out, kind, overwrite=overwrite)
    for name in OWNED[kind] if overwrite else ():
        target = out / name
        if target.is_dir():
            shutil.rmtree(target)
        else:
            target.unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)


def fingerprint(*parts) -> str:
    """sha256 over the JSON of ``parts`` (stable key order)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()


FIGURE_STAMP = "figures.sha256"
"""File beside a run's PNGs naming the record they were drawn from (:func:`figure_source`)."""


def figure_source(record: dict) -> str:
    """Digest of what a run's figures are drawn from: its record (less timing) and the code.

    The code is the source of the modules that draw the PNGs (``figures/data.py`` and
    ``figures/png.py``), so a change to any figure redraws it.
    ``plots/`` holds the digest in :data:`FIGURE_STAMP`, so ``phaseprune report`` can copy
    the PNGs instead of drawing them again when nothing changed.
    """
    figures = Path(__file__).parent / "figures"
    code = [hashlib.sha256((figures / f).read_bytes()).hexdigest()
            for f in ("data.py", "png.py")]  # fmt: skip
    return fingerprint({k: v for k, v in record.items() if k != "timing"}, code)


def stamp_figures(record: dict, out_dir: Path) -> None:
    """Write :data:`FIGURE_STAMP` into ``out_dir`` (after its PNGs)."""
    atomic_write_bytes(Path(out_dir) / FIGURE_STAMP, figure_source(record).encode())


class PartialReadout:
    """Option logits computed so far, saved so an interrupted run can continue."""

    def __init__(self, out: Path, key: str, shape: tuple[int, int, int]):
        self.path = out / "partial" / "readout.npz"
        self.key = key
        self.logits = np.zeros(shape, dtype=np.float32)
        self.done = np.zeros(shape[0], dtype=bool)
        if self.path.exists():
            try:
                with np.load(self.path) as saved:
                    if str(saved["key"]) == key and saved["logits"].shape == shape:
                        self.logits[:] = saved["logits"]
                        self.done[:] = saved["done"]
            except (OSError, ValueError, KeyError, EOFError) as err:  # damaged: start over
                warnings.warn(
                    f"{self.path} is damaged ({type(err).__name__}); recomputing every item",
                    stacklevel=2,
                )
                self.logits[:], self.done[:] = 0.0, False

    def update(self, items: list[int], logits: np.ndarray) -> None:
        """Record a batch and save (atomically)."""
        self.logits[items] = logits
        self.done[items] = True
        import io

        buf = io.BytesIO()
        np.savez(buf, key=np.array(self.key), logits=self.logits, done=self.done)
        atomic_write_bytes(self.path, buf.getvalue())

    def clear(self) -> None:
        """Remove the partial file once the run is complete."""
        shutil.rmtree(self.path.parent, ignore_errors=True)


@dataclass(frozen=True)
class RunRecord:
    """One run directory, read and checked."""

    path: Path
    """The run directory."""
    kind: RunKind
    """``"analyze"`` (``summary.json``) or ``"prune"`` (``trajectory.json``)."""
    record: dict
    """The :class:`~phaseprune.records.Summary` or :class:`~phaseprune.records.Trajectory`."""

    @property
    def complete(self) -> bool:
        """False for a pruning run still running or stopped before its last step."""
        return self.kind == "analyze" or bool(self.record["complete"])


def _read_json(path: Path) -> dict:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        record = f"is not valid JSON ({err.msg} at line {err.lineno}): the file is damaged"
    if isinstance(record, dict):
        return record
    why = record if isinstance(record, str) else "holds no JSON object"
    raise UsageError(f"{path} {why}; rerun the command that wrote it")


def _upgrade(kind: RunKind, record: dict) -> None:
    """Bring a record written by an older phaseprune of the same schema up to date.

    Trajectories of unfinished runs did not store their provisional collapse before 0.1.0's
    run-record module; it is the collapse of the completed steps.
    """
    if kind == "prune" and "collapse" not in record and {"step0", "steps"} <= record.keys():
        from phaseprune.collapse import trajectory_collapse

        record["collapse"] = trajectory_collapse(record)


def check_record(path: Path, record: dict, kind: RunKind) -> dict:
    """Check schema version, kind and required keys; return the record less unknown keys."""
    version = RECORD_VERSIONS[kind]
    if record.get("schema_version") != version:
        raise UsageError(
            f"{path} has schema_version {record.get('schema_version')}, this phaseprune reads "
            f"{version}: use the phaseprune that wrote the run, or rerun `phaseprune {kind}`"
        )
    if record.get("kind") != kind:
        raise UsageError(
            f"{path} says kind {record.get('kind')!r}, expected {kind!r}: the file was edited or "
            f"misplaced; rerun `phaseprune {kind}`"
        )
    _upgrade(kind, record)
    keys = RECORD_TYPES[kind].__annotations__.keys() | RECORD_TYPES[kind].__required_keys__
    missing = sorted(RECORD_TYPES[kind].__required_keys__ - record.keys())
    if missing:
        raise UsageError(
            f"{path} lacks {', '.join(missing)}: not a {kind} record this phaseprune wrote; "
            f"rerun `phaseprune {kind}`"
        )
    unknown = sorted(record.keys() - keys)
    if unknown:
        warnings.warn(f"{path}: ignoring unknown keys {unknown}", stacklevel=3)
    return {k: v for k, v in record.items() if k in keys}


_NOUNS = {None: "phaseprune", "analyze": "analyze", "prune": "pruning"}


def _not_a_run(path: Path, kind: RunKind | None) -> UsageError:
    if any((path / name).exists() for name in ("compare.csv", "compare.md", "compare.png")):
        return UsageError(
            f"{path} is the output of `phaseprune compare`, not a run: pass the prune run "
            "directories it compared"
        )
    if kind != "prune" and ((path / "partial").is_dir() or (path / "items.parquet").exists()):
        return UsageError(
            f"{path} holds an incomplete analyze run (no summary.json): rerun the same "
            "`phaseprune analyze` command, which resumes from its finished batches"
        )
    wanted = {None: "neither summary.json (analyze) nor trajectory.json (prune)",
              "analyze": "no summary.json", "prune": "no trajectory.json"}[kind]  # fmt: skip
    return UsageError(
        f"{path} is not a {_NOUNS[kind]} run: it has {wanted}; "
        "pass a directory given as --out to that command"
    )


def load_run(path: str | Path, kind: RunKind | None = None) -> RunRecord:
    """Read one run directory (or its record file) and check it.

    Args:
        path: a run directory, or its ``summary.json`` / ``trajectory.json``.
        kind: the kind of run the caller needs; None accepts either.

    Raises:
        UsageError: not a run, another kind, another schema version, a damaged record.
    """
    path = Path(path)
    if path.is_file() and path.name in RECORD_FILES.values():
        path = path.parent
    if not path.exists():
        raise UsageError(f"{path} does not exist: pass a run directory (an --out of analyze/prune)")
    if not path.is_dir():
        raise UsageError(f"{path} is a file, not a run directory: pass the directory it is in")
    held = [k for k, name in RECORD_FILES.items() if (path / name).is_file()]
    if len(held) > 1:
        raise UsageError(
            f"{path} holds both summary.json and trajectory.json: keep one run per directory"
        )
    if not held or (kind is not None and held[0] != kind):
        if held:
            raise UsageError(
                f"{path} holds a `phaseprune {held[0]}` run, not a {_NOUNS[kind]} run: pass a "
                f"directory made by `phaseprune {kind}`"
            )
        raise _not_a_run(path, kind)
    file = path / RECORD_FILES[held[0]]
    return RunRecord(path, held[0], check_record(file, _read_json(file), held[0]))


def _same_model(a: dict, b: dict) -> bool:
    """One model: the same weights (file hash) where both runs know it, else the same name."""
    if a.get("revision") and b.get("revision"):
        return a["revision"] == b["revision"]
    return (a.get("name"), a.get("revision")) == (b.get("name"), b.get("revision"))


def check_comparable(runs: list[RunRecord]) -> None:
    """Refuse prune runs that cannot share one axis: another model or other evaluation items."""
    prune = [r for r in runs if r.kind == "prune"]
    for run in prune[1:]:
        a, b = run.record["model"], prune[0].record["model"]
        if not _same_model(a, b):
            raise UsageError(
                f"{run.path} is a run of {a.get('name')}, {prune[0].path} of {b.get('name')}: "
                "compare pruning runs of one model"
            )
        if run.record["eval_items"] != prune[0].record["eval_items"]:
            raise UsageError(
                f"{run.path} was evaluated on other items than {prune[0].path}: compare runs "
                "made with the same --task, --calib and --eval"
            )


def load_runs(paths: list[str | Path], kind: RunKind | None = None) -> list[RunRecord]:
    """Read several run directories, each once; prune runs among them must be comparable."""
    if not paths:
        raise UsageError("give at least one run directory")
    runs = [load_run(p, kind) for p in paths]
    seen: dict[Path, str | Path] = {}
    for run, given in zip(runs, paths, strict=True):
        key = run.path.resolve()
        if key in seen:
            raise UsageError(f"{given} is given twice (as {seen[key]}): pass each run once")
        seen[key] = given
    check_comparable(runs)
    return runs


def load_summary(run_dir: str | Path) -> Summary:
    """The checked ``summary.json`` of an analyze run."""
    return load_run(run_dir, "analyze").record


def load_trajectory(
    run_dir: str | Path, *, matches: Callable[[Trajectory], bool] | None = None
) -> Trajectory:
    """The checked ``trajectory.json`` of a prune run.

    Args:
        run_dir: the run directory.
        matches: for a resume, whether the record was made with the same settings, model and
            items (by fingerprint); a record that does not match is refused.
    """
    traj = load_run(run_dir, "prune").record
    if matches is not None and not matches(traj):
        raise UsageError(
            f"{Path(run_dir) / 'trajectory.json'} was made with other settings, model or items; "
            "use --overwrite to start over"
        )
    return traj


def load_candidates(run_dir: str | Path, steps: set[int]) -> list[dict]:
    """``candidates.parquet`` rows of the given steps; refused if the file lacks any of them."""
    path = Path(run_dir) / "candidates.parquet"
    rows = pd.read_parquet(path).to_dict("records") if path.exists() else []
    rows = [r for r in rows if r["step"] in steps]
    missing = sorted(steps - {r["step"] for r in rows})
    if missing:
        raise UsageError(
            f"{path} lacks the candidates of steps {missing} (deleted or damaged); rerun with "
            "--overwrite to start over"
        )
    return rows


def write_trajectory(out: Path, traj: Trajectory, candidate_rows: list[dict]) -> None:
    """Write a pruning run's records (candidates first: the trajectory names the steps)."""
    atomic_write_bytes(out / "candidates.parquet", parquet_bytes(pd.DataFrame(candidate_rows)))
    atomic_write_json(out / "trajectory.json", traj)


def write_summary(out: Path, summary: Summary, items: pd.DataFrame) -> None:
    """Write an analyze run's records; ``summary.json`` last, as it marks the run complete."""
    atomic_write_bytes(out / "items.parquet", parquet_bytes(items))
    atomic_write_json(out / "summary.json", summary)
