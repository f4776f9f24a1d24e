"""Run records on disk: the one loader and the one writer.

:func:`load_run` (and :func:`load_runs`, :func:`load_summary`, :func:`load_trajectory`) is how
every consumer reads a run (``prune --resume``, compare, report, export, demo, the findings
script): it checks the schema version, the kind and the required keys of
:mod:`phaseprune.runs.records`' types, nested ones included, and, for a resume, the fingerprint, and
turns every problem into one :class:`~phaseprune.core.errors.UsageError` line.
:func:`write_summary` and :func:`write_trajectory` are how runs are written (atomically,
through :mod:`phaseprune.runs.outdir`).
"""

from __future__ import annotations

import contextlib
import json
import types
import typing
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from phaseprune.core.errors import UsageError
from phaseprune.runs import outdir as runio
from phaseprune.runs.records import (
    EXACT,
    RECORD_FILES,
    RECORD_TYPES,
    RECORD_VERSIONS,
    RunKind,
    Summary,
    Trajectory,
    parquet_bytes,
)


@dataclass(frozen=True)
class RunRecord:
    """One run directory, read and checked."""

    path: Path
    """The run directory."""
    kind: RunKind
    """``"analyze"`` (``summary.json``) or ``"prune"`` (``trajectory.json``)."""
    record: dict
    """The :class:`~phaseprune.runs.records.Summary` or
    :class:`~phaseprune.runs.records.Trajectory`."""

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

    Records before ``--precision`` (since removed) were all exact. Models before weight hashing have
    ``weights_sha256`` None (unknown), or for a GGUF file its revision (its sha256 already).
    Trajectories of unfinished runs did not store their provisional collapse before the
    run-record module; it is the collapse of the completed steps. A record too damaged for
    that is left as it is, for the key check to name what it lacks.
    """
    record.setdefault("precision", dict(EXACT))  # written since --precision existed
    model = record.get("model")
    if isinstance(model, dict):
        gguf_hash = model.get("revision") if model.get("gguf_file") else None
        model.setdefault("weights_sha256", gguf_hash)
    steps = record.get("steps")
    for step in steps if isinstance(steps, list) else []:
        if isinstance(step, dict):
            step.setdefault("precision", None)
    if kind == "prune" and "collapse" not in record:
        from phaseprune.core.collapse import trajectory_collapse

        with contextlib.suppress(KeyError, TypeError, IndexError):
            record["collapse"] = trajectory_collapse(record)


def _typed_dict(tp) -> type | None:
    """The TypedDict inside ``tp`` (``X``, ``X | None`` or ``list[X]``), or None."""
    for arg in (tp, *typing.get_args(tp)):
        if typing.is_typeddict(arg):
            return arg
        inner = typing.get_args(arg)
        if typing.get_origin(arg) is list and inner and typing.is_typeddict(inner[0]):
            return inner[0]
    return None


def _json_types(tp) -> tuple[type, ...] | None:
    """The JSON value types a field of type ``tp`` may hold (None: anything)."""
    origin = typing.get_origin(tp)
    if tp is typing.Any:
        return None
    if origin is typing.Literal:
        return tuple({type(a) for a in typing.get_args(tp)})
    if origin in (typing.Union, types.UnionType):
        parts = [_json_types(a) for a in typing.get_args(tp)]
        return None if None in parts else tuple(t for part in parts for t in part)
    if tp is type(None):
        return (type(None),)
    base = {float: (int, float), list: (list,), dict: (dict,)}
    return base.get(origin or tp, (dict,) if typing.is_typeddict(tp) else (tp,))


def _missing(value, td: type, where: str) -> list[str]:
    """Required keys absent, or of the wrong JSON type, in ``value`` or the records in it."""
    if not isinstance(value, dict):
        return [f"{where or 'the record'} (not an object)"]
    out = [f"{where}{k}" for k in sorted(td.__required_keys__ - value.keys())]
    for key, tp in typing.get_type_hints(td).items():
        allowed, child = _json_types(tp), value.get(key)
        if key in value and allowed is not None and not isinstance(child, allowed):
            out.append(f"a valid {where}{key} (it holds a {type(child).__name__})")
            continue
        inner = _typed_dict(tp)
        if inner is None or child is None:
            continue
        children = enumerate(child) if isinstance(child, list) else [(None, child)]
        for i, item in children:
            out += _missing(item, inner, f"{where}{key}{'' if i is None else f'[{i}]'}.")
    return out


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
    keys = RECORD_TYPES[kind].__annotations__.keys()
    missing = _missing(record, RECORD_TYPES[kind], "")
    if missing:
        raise UsageError(
            f"{path} lacks {', '.join(missing[:4])}{' …' if len(missing) > 4 else ''}: not a "
            f"{kind} record this phaseprune wrote (edited or damaged); "
            f"rerun `phaseprune {kind}`"
        )
    bad = _out_of_range(record, kind)
    if bad:
        raise UsageError(
            f"{path} holds {bad}: not a {kind} record this phaseprune wrote (edited or "
            f"damaged); rerun `phaseprune {kind}`"
        )
    unknown = sorted(record.keys() - keys)
    if unknown:
        warnings.warn(f"{path}: ignoring unknown keys {unknown}", stacklevel=3)
    return {k: v for k, v in record.items() if k in keys}


def _accuracies(value, where: str):
    """``(where, number)`` for every number under a key naming an accuracy (settings aside)."""
    if isinstance(value, dict):
        for key, child in value.items():
            if key != "settings":
                yield from _accuracies(child, f"{where}.{key}" if where else key)
    elif isinstance(value, list):
        for i, child in enumerate(value):
            yield from _accuracies(child, f"{where}[{i}]")
    elif "accuracy" in where.rsplit(".", 1)[-1] and isinstance(value, int | float):
        yield where, value


def _out_of_range(record: dict, kind: RunKind) -> str | None:
    """The first value no run can hold: an accuracy outside [0, 1], a layer outside the model."""
    bad = next(((w, v) for w, v in _accuracies(record, "") if not 0 <= v <= 1), None)
    if bad is not None:
        return f"{bad[0]} = {bad[1]} (an accuracy is within 0..1)"
    n = record.get("n_layers")
    for step in record.get("steps", []) if kind == "prune" and isinstance(n, int) else []:
        layers = step.get("removed_layers", []) if isinstance(step, dict) else []
        if any(not isinstance(k, int) or not 0 <= k < n for k in layers):
            return f"step {step.get('step')}'s removed_layers {layers} (the model has {n} layers)"
    return None


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
    if kind is not None and kind not in RECORD_FILES:
        raise UsageError(f"kind={kind!r}: pass 'analyze', 'prune' or None (either)")
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
    run_dir: str | Path,
    *,
    differs: Callable[[Trajectory], str | None] | None = None,
    rerun: bool = False,
) -> Trajectory:
    """The checked ``trajectory.json`` of a prune run.

    Args:
        run_dir: the run directory.
        differs: for a resume, what in the record differs from the run about to continue it
            (settings, model, items; None when its fingerprint matches); a record that differs
            is refused, naming that.
        rerun: the caller runs the run's model again (as a resume does, and ``export``): a
            run made with ``--precision fast`` is refused (its numbers still load without).
    """
    traj = load_run(run_dir, "prune").record
    if (rerun or differs is not None) and traj["precision"].get("mode") == "fast":
        raise UsageError(
            f"{Path(run_dir) / 'trajectory.json'} was made with --precision fast, which "
            "phaseprune no longer has: start a new run (--overwrite or another --out), or use "
            f"the phaseprune that made it ({traj['phaseprune_version']})"
        )
    why = differs(traj) if differs is not None else None
    if why:
        raise UsageError(
            f"{Path(run_dir) / 'trajectory.json'} was made with other {why}; use --overwrite to "
            "start over, or another --out"
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
    runio.atomic_write_bytes(
        out / "candidates.parquet", parquet_bytes(pd.DataFrame(candidate_rows))
    )
    runio.atomic_write_json(out / "trajectory.json", traj)


def write_summary(out: Path, summary: Summary, items: pd.DataFrame) -> None:
    """Write an analyze run's records; ``summary.json`` last, as it marks the run complete."""
    runio.atomic_write_bytes(out / "items.parquet", parquet_bytes(items))
    runio.atomic_write_json(out / "summary.json", summary)
