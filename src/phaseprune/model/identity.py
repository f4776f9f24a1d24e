"""Which weights a run used: sha256 of a checkpoint's weight files, and a hub snapshot's commit.

A local checkpoint (a ``save_pretrained`` directory or a ``.gguf`` file) is identified by the
sha256 of its weights, so a run refuses to be resumed or exported on edited weights. A
directory's hash is the sha256 of the manifest ``sha256sum`` would print for its weight files
(``*.safetensors``, ``*.bin``, ``*.gguf`` at its top level, sorted by name): ``cd DIR &&
sha256sum *.safetensors | sha256sum`` gives the same hex for a safetensors-only checkpoint.
A single file's hash is its plain sha256.

Hashing streams each file once; the result is cached in ``hashes.json`` under the cache root
(``$PHASEPRUNE_CACHE``, else ``$XDG_CACHE_HOME/phaseprune``, else ``~/.cache/phaseprune``),
keyed by the file's absolute path, size and modification time in nanoseconds, so a file that
is rewritten is hashed again. An edit that keeps both size and mtime (``touch -r``) is not
seen. A damaged or unreadable cache is ignored and replaced.

A hub model is identified by the commit of the snapshot the Hugging Face cache resolved, the
name of its ``snapshots/<commit>`` folder.

A model passed as an object (the Python API) has no file to hash: its identity is
``memory:`` + :func:`tensors_sha256`, the sha256 of its config and of every parameter and
buffer, streamed tensor by tensor, so two objects built from one config, or one edited in
memory, are two models to the score store, ``resume`` and ``export``.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf")
"""Files whose bytes are a checkpoint's weights (what ``from_pretrained`` may read)."""

CACHE_ENV = "PHASEPRUNE_CACHE"
"""Environment variable naming the cache root."""


def cache_root() -> Path:
    """``$PHASEPRUNE_CACHE``, else ``$XDG_CACHE_HOME/phaseprune``, else ``~/.cache/phaseprune``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "phaseprune"


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    """sha256 of a file, streamed in ``chunk``-byte blocks (no cache)."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _read_cache(path: Path) -> dict:
    try:
        cache = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return cache if isinstance(cache, dict) else {}


def _write_cache(path: Path, cache: dict) -> None:
    """Replace the cache file atomically; a cache that cannot be written is skipped."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".hashes-", suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(cache, f, indent=0, sort_keys=True)
        os.replace(tmp, path)
    except OSError:
        return


def cached_sha256(path: Path) -> str:
    """sha256 of ``path``, from the cache when its size and mtime are those cached."""
    path = Path(path).resolve()
    stat = path.stat()
    key = str(path)
    cache_file = cache_root() / "hashes.json"
    cache = _read_cache(cache_file)
    entry = cache.get(key)
    if (
        isinstance(entry, dict)
        and entry.get("size") == stat.st_size
        and entry.get("mtime_ns") == stat.st_mtime_ns
        and isinstance(entry.get("sha256"), str)
    ):
        return entry["sha256"]
    digest = file_sha256(path)
    cache = _read_cache(cache_file)  # another process may have added entries meanwhile
    cache[key] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": digest}
    _write_cache(cache_file, cache)
    return digest


def weight_files(folder: Path) -> list[Path]:
    """The weight files at the top level of ``folder``, sorted by name."""
    return sorted(
        (p for p in Path(folder).iterdir() if p.suffix in WEIGHT_SUFFIXES and p.is_file()),
        key=lambda p: p.name,
    )


def weights_sha256(path: str | Path) -> str | None:
    """The identity of a checkpoint's weights: see the module docstring.

    Args:
        path: A weight file (e.g. a ``.gguf``) or a checkpoint directory.

    Returns:
        The hex digest; None for a directory holding no weight files.
    """
    path = Path(path)
    if path.is_file():
        return cached_sha256(path)
    files = weight_files(path)
    if not files:
        return None
    manifest = "".join(f"{cached_sha256(p)}  {p.name}\n" for p in files)
    return hashlib.sha256(manifest.encode()).hexdigest()


MEMORY = "memory:"
"""Prefix of a held model's ``weights_sha256`` (:func:`tensors_sha256`), not a file hash."""
_NOT_IDENTITY = ("_name_or_path", "transformers_version", "_commit_hash")


def tensors_sha256(model) -> str:
    """sha256 of a model's config and of each parameter and buffer (name, dtype, shape, bytes).

    Tensors in name order; each is copied to the CPU alone (memory: the largest tensor), so
    the cost is one pass over the weights: hashing and, on a GPU, the copy. The config counts
    without its path and transformers version, which do not change what the model computes.
    """
    import torch

    digest = hashlib.sha256()
    config = {k: v for k, v in model.config.to_dict().items() if k not in _NOT_IDENTITY}
    digest.update(json.dumps(config, sort_keys=True, default=str).encode())
    named = dict(model.named_parameters())
    named.update(model.named_buffers())
    with torch.no_grad():
        for name in sorted(named):
            t = named[name].detach()
            digest.update(f"|{name}|{t.dtype}|{tuple(t.shape)}|".encode())
            digest.update(t.contiguous().reshape(-1).view(torch.uint8).cpu().numpy())
    return digest.hexdigest()


def hub_revision(repo_id: str, revision: str | None = None) -> str | None:
    """The commit of the snapshot of ``repo_id`` in the local Hugging Face cache, or None.

    Args:
        repo_id: A hub id such as ``HuggingFaceTB/SmolLM2-135M``.
        revision: A branch, tag or commit (None: ``main``), resolved as ``from_pretrained``
            resolves it in the cache.
    """
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, "config.json", revision=revision)
    if not isinstance(found, str):
        return None
    snapshot = Path(found).parent
    return snapshot.name if snapshot.parent.name == "snapshots" else None
