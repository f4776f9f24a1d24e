"""Run directories as files: atomic writes, one run per directory, partial results.

The records themselves are read and written by :mod:`phaseprune.runs.files`. Every file is written
to a temporary name in the same directory and moved into place with ``os.replace``, so a run
killed at any moment leaves either the old file or the new one, never half of one.
``summary.json`` is written last: its presence marks a complete run.

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
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

try:
    import fcntl
except ImportError:  # not POSIX: no lock (one writer is then the user's to keep)
    fcntl = None

import numpy as np

from phaseprune.core.errors import UsageError
from phaseprune.runs.records import (
    RECORD_FILES,
    RunKind,
)


def plain_mode() -> int:
    """The mode ``open`` gives a new file: 0666 less the umask (read by setting it, then back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically, with the mode ``open`` would give (0666 & ~umask).

    ``mkstemp`` creates its file 0600 whatever the umask; the mode is set as a plain write
    would have it before the file is moved into place.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, plain_mode())
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


LOCK_FILE = ".phaseprune.lock"
"""The run directory's lock: held by the one process writing there, naming its pid."""


@contextmanager
def one_writer(out: Path | None) -> Iterator[None]:
    """Hold ``out``'s lock while a run writes there; a second writer is refused at once.

    An OS file lock (``flock`` on ``OUT/.phaseprune.lock``), so the kernel releases it when the
    process ends however it ends; the file holds the holder's pid for the refusal. Taken before
    any model loads: two runs started together into one directory both passed the "already
    holds a run" check, which sees a run only once its first step is written. Only process 0
    of a torchrun launch writes, so only it locks. A directory made here and left holding
    nothing but the lock (a run refused before writing) is removed again.
    """
    from phaseprune.model.distributed import launched_as_main  # torch: loaded when a run writes

    if out is None or fcntl is None or not launched_as_main() or out.is_file():
        yield  # a file as --out is refused by check_out_dir with its own message
        return
    made = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    path = out / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, plain_mode())
    except PermissionError:  # a read-only run directory: resuming a finished run writes nothing,
        yield  # and a run that must write is refused when it tries, in one line
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise UsageError(
            f"--out {out} is being written by another phaseprune process (pid {holder}); "
            "wait for it to end, or pass another --out"
        ) from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        if made and [p.name for p in out.iterdir()] == [LOCK_FILE]:  # still held: no race
            path.unlink(missing_ok=True)
            out.rmdir()
        os.close(fd)  # releases the lock


OWN_STORE = "score-cache"
"""A prune run's own score store, inside its ``--out`` (used without ``--score-cache``)."""

OWNED = {
    "analyze": ("summary.json", "items.parquet", "plots", "partial"),
    "prune": ("trajectory.json", "candidates.parquet", "plots", OWN_STORE),
}
"""The files and folders a run of each kind writes (``--overwrite`` clears them)."""


def prepare_out_dir(out: Path, kind: RunKind, *, overwrite: bool) -> None:
    """Create ``out``; with ``overwrite``, first remove everything a run of ``kind`` wrote there."""
    check_out_dir(out, kind, overwrite=overwrite)
    for name in OWNED[kind] if overwrite else ():
        target = out / name
        if target.is_symlink():  # the link goes, never what it points to
            target.unlink()
        elif target.is_dir():
            shutil.rmtree(target)
        else:
            target.unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)


def fingerprint(*parts) -> str:
    """sha256 over the JSON of ``parts`` (stable key order)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()


class PartialReadout:
    """Option logits computed so far, saved so an interrupted run can continue.

    ``out`` None keeps them in memory only (a run that writes no directory).
    """

    def __init__(
        self, out: Path | None, key: str, shape: tuple[int, int, int], *, save: bool = True
    ):
        self.path = None if out is None else out / "partial" / "readout.npz"
        self.key = key
        self.save = save and out is not None  # False: in memory only (e.g. not process 0)
        self.logits = np.zeros(shape, dtype=np.float32)
        self.done = np.zeros(shape[0], dtype=bool)
        if self.path is not None and self.path.exists():
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
        """Record a batch and save."""
        self.logits[items] = logits
        self.done[items] = True
        if not (self.save and self.path is not None):
            return
        import io

        buf = io.BytesIO()
        np.savez(buf, key=np.array(self.key), logits=self.logits, done=self.done)
        atomic_write_bytes(self.path, buf.getvalue())

    def clear(self) -> None:
        """Remove the partial file once the run is complete."""
        if self.path is not None:
            shutil.rmtree(self.path.parent, ignore_errors=True)
