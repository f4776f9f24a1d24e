"""User-facing errors.

Every mistake a user can make (bad data, unknown task, a model phaseprune cannot read, an
output directory that holds another run) raises :class:`UsageError` with one line that names
the problem and the fix. The CLI prints that line on stderr and exits with code 2, without a
traceback; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UsageError(Exception):
    """A problem with the user's input, reported as one clear line (exit code 2)."""


def suggest(name: str, choices: Iterable[str], n: int = 3) -> str:
    """Return ``" (did you mean X, Y?)"`` for the closest matches of ``name``, or ``""``."""
    close = difflib.get_close_matches(name, list(choices), n=n, cutoff=0.5)
    return f" (did you mean {', '.join(close)}?)" if close else ""


def first_line(err: BaseException, limit: int = 240) -> str:
    """An exception's first line, cut at ``limit`` characters (its type name if it has none).

    A first line that ends in ``:`` ("from one of:") introduces what follows, so then the whole
    message is joined onto one line and the sentence is not cut off.
    """
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    if not lines:
        return type(err).__name__
    text = " ".join(lines) if lines[0].endswith(":") else lines[0]
    return text if len(text) <= limit else text[: limit - 1] + "…"
