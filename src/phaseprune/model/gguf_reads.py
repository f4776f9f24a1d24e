"""How transformers reads a GGUF file, made quiet and parsed once per process.

transformers (5) loads a ``.gguf`` through the ``gguf`` package: it parses the file for the
config, for the tokenizer and for the weights, and draws a dequantisation bar that its
progress-bar switch does not reach. Both contexts here patch only while a load runs and
restore what they found.
"""

from __future__ import annotations

import functools
from contextlib import contextmanager
from pathlib import Path

_READER: dict = {}  # (path, size, mtime_ns) -> gguf.GGUFReader: the last GGUF file parsed


@contextmanager
def gguf_reads():
    """Parse a GGUF file once per process, however many times transformers reads it.

    transformers parses the whole file (``gguf.GGUFReader``: every metadata field, the
    vocabulary one string at a time) for the config, again for the tokenizer and again for the
    weights, and rebuilds gguf's tensor-name table for every module it maps; for a small model
    that is most of the load time. Inside this block the reader of
    an unchanged file (same path, size and mtime) is reused and the table is built once per
    architecture and depth. Both are read-only to transformers, so what loads is unchanged.
    """
    import gguf

    real_reader, real_map = gguf.GGUFReader, gguf.get_tensor_name_map

    def reader(path, mode="r"):
        if mode != "r":
            return real_reader(path, mode)
        stat = Path(path).stat()
        key = (str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)
        if key not in _READER:
            _READER.clear()  # one file at a time: a long session does not hoard readers
            _READER[key] = real_reader(path)
        return _READER[key]

    gguf.GGUFReader, gguf.get_tensor_name_map = reader, _tensor_name_map(real_map)
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = real_reader, real_map


@functools.cache
def _tensor_name_map(real):
    """The ``get_tensor_name_map`` of gguf, memoised by (architecture, depth)."""
    return functools.cache(real)


@contextmanager
def gguf_bar(progress: bool):
    """Silence transformers' GGUF dequantisation bar when ``progress`` is off.

    transformers 5 draws it with a bare ``tqdm`` that its progress-bar switch does not reach, so
    the module's ``tqdm`` is swapped for a disabled one while the model loads.
    """
    import transformers.modeling_gguf_pytorch_utils as gguf_utils

    real = gguf_utils.tqdm
    if not progress:
        gguf_utils.tqdm = functools.partial(real, disable=True)
    try:
        yield
    finally:
        gguf_utils.tqdm = real
