"""Command-line options generated from the config dataclasses, and their bounds.

:func:`add_arguments` turns each field of a config (:mod:`phaseprune.runs.config`) into an option:
booleans become ``--flag`` / ``--no-flag`` pairs, ``X | None`` fields accept the literal
``none``, tuple fields take a comma-separated list, fields marked ``positional`` become
positional arguments (``nargs="+"`` for a tuple), ``choices`` (a tuple, or a function returning
one) are checked per element, and ``parse`` replaces the type's converter. Every option's help
is plain text and ends with its default. :func:`from_args` turns a parsed namespace back into
the dataclass, so ``main(argv)`` is callable from tests. :func:`check_fields` applies the
fields' bounds, choices and parsers to a config however it was built (CLI or Python).
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
import types
import typing

from phaseprune.core.errors import UsageError, suggest

_ROLE = re.compile(r":[\w:]+:`(~?)([^`]+)`")  # :class:`~a.b.C` -> C, :func:`a.b` -> a.b


def plain_text(text: str) -> str:
    """Help text without reST/markdown markup: roles, backticks, bold."""
    text = _ROLE.sub(lambda m: m[2].rsplit(".", 1)[-1] if m[1] else m[2], inspect.cleandoc(text))
    return re.sub(r"\*\*(.+?)\*\*", r"\1", text).replace("`", "")


def _base_type(tp):
    """``X | None`` -> (X, True); X -> (X, False)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0], True
    return tp, False


def _choices(f: dataclasses.Field) -> tuple[str, ...] | None:
    choices = f.metadata.get("choices")
    return tuple(choices() if callable(choices) else choices) if choices is not None else None


def _element_parser(f: dataclasses.Field, item: type):
    """One command-line word -> one value, with the field's own parser and choices."""
    parse, choices = f.metadata.get("parse") or item, _choices(f)

    def one(text: str):
        try:
            value = parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid {item.__name__} value: {text!r}") from None
        if choices is not None and value not in choices:
            raise argparse.ArgumentTypeError(
                f"invalid choice {text!r}{suggest(text, choices)}; choose from {', '.join(choices)}"
            )
        return value

    return one


def _converter(f: dataclasses.Field, tp):
    base, optional = _base_type(tp)
    is_tuple = typing.get_origin(base) is tuple
    one = _element_parser(f, typing.get_args(base)[0] if is_tuple else base)
    is_list = is_tuple and not f.metadata.get("positional")  # positional: nargs="+" splits

    def conv(text: str):
        if optional and text.lower() == "none":
            return None
        if is_list:
            values = tuple(one(x.strip()) for x in text.split(",") if x.strip())
            if text.strip() and not values:
                raise argparse.ArgumentTypeError(f"{text!r} names nothing: give a list like a,b")
            return values
        return one(text)

    return conv


def _shown_default(f: dataclasses.Field) -> str:
    if f.metadata.get("shown"):
        return f.metadata["shown"]
    if isinstance(f.default, bool):
        return "on" if f.default else "off"
    if isinstance(f.default, tuple):
        return ",".join(map(str, f.default)) or "none"
    return "none" if f.default is None else str(f.default)


def _required(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def _range_text(f: dataclasses.Field) -> str:
    low, high = f.metadata.get("minimum"), f.metadata.get("maximum")
    if low is not None and high is not None:
        return f"Between {low} and {high}."
    if low is not None:
        return f"At least {low}."
    return f"At most {high}." if high is not None else ""


def _help(f: dataclasses.Field) -> str:
    parts = [plain_text(f.metadata.get("help", ""))]
    choices = _choices(f)
    if choices:
        parts.append(f"Choices: {', '.join(choices)}.")
    parts.append(_range_text(f))
    if not _required(f):
        parts.append(f"(default: {plain_text(_shown_default(f))})")
    return " ".join(p for p in parts if p).replace("%", "%%")


def add_arguments(parser: argparse.ArgumentParser, cls) -> None:
    """Add one argument per field of ``cls``; a nested dataclass becomes an argument group."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            title = plain_text(tp.__doc__).splitlines()[0].rstrip(".")
            add_arguments(parser.add_argument_group(title), tp)
        elif f.metadata.get("positional"):
            nargs = "+" if typing.get_origin(tp) is tuple else None
            parser.add_argument(f.name, nargs=nargs, type=_converter(f, tp), help=_help(f))
        elif _base_type(tp)[0] is bool:
            action = parser.add_argument(
                "--" + f.name.replace("_", "-"),
                dest=f.name,
                action=argparse.BooleanOptionalAction,
                default=f.default,
            )
            action.help = _help(f)  # after: Python 3.10's action appends its own default
        else:
            parser.add_argument(
                "--" + f.name.replace("_", "-"),
                dest=f.name,
                type=_converter(f, tp),
                default=None if _required(f) else f.default,
                required=_required(f),
                help=_help(f),
            )


def from_args(cls, ns: argparse.Namespace):
    """Build ``cls`` (with nested dataclasses) from a namespace made by :func:`add_arguments`."""
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        value = from_args(tp, ns) if dataclasses.is_dataclass(tp) else getattr(ns, f.name)
        kwargs[f.name] = tuple(value) if isinstance(value, list) else value
    return cls(**kwargs)


def _bound_error(f: dataclasses.Field, value) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    low, high = f.metadata.get("minimum"), f.metadata.get("maximum")
    if low is not None and value < low:
        return f"must be at least {low}"
    if high is not None and value > high:
        return f"must be at most {high}"
    return None


_KINDS = {bool: "true or false", int: "a whole number", float: "a number", str: "a string"}
_HINTS: dict[type, dict] = {}


def _kind_error(tp, value) -> str | None:
    """Why ``value`` is not of the field type ``tp`` (None if it is); bool is not a number."""
    base, optional = _base_type(tp)
    if value is None:
        return None if optional else "must be given"
    if typing.get_origin(base) is tuple:
        if not isinstance(value, tuple):
            return f"must be a list, not {type(value).__name__}"
        return next((why for v in value if (why := _kind_error(typing.get_args(base)[0], v))), None)
    if base not in _KINDS:  # a section (ModelConfig, TaskConfig) or a type not checked here
        if isinstance(base, type) and not isinstance(value, base):
            return f"must be a {base.__name__}, not {type(value).__name__}"
        return None
    if base is bool or isinstance(value, bool):  # a bool is only a bool, never a number
        ok = base is bool and isinstance(value, bool)
    else:
        ok = isinstance(value, (int, float) if base is float else base)
    return None if ok else f"must be {_KINDS[base]}, not {type(value).__name__}"


def check_fields(config) -> None:
    """Refuse a field of the wrong type, out of bounds or choices, or unparsable, in one line.

    Runs whenever a config is built, so a config made in Python is checked like the CLI's
    (``limit="4"``, ``shots=True`` or ``n_boot=20.7`` before any model work). A list given for
    a tuple field becomes the tuple the CLI would make.
    """
    cls = type(config)
    hints = _HINTS.setdefault(cls, typing.get_type_hints(cls))
    for f in dataclasses.fields(config):
        value, flag = getattr(config, f.name), "--" + f.name.replace("_", "-")
        if isinstance(value, list) and typing.get_origin(_base_type(hints[f.name])[0]) is tuple:
            value = tuple(value)
            object.__setattr__(config, f.name, value)  # frozen: set once, while being built
        if why := _kind_error(hints[f.name], value):
            raise UsageError(f"{flag} {value!r}: {why}")
        if f.metadata.get("parse") and isinstance(value, str):
            try:
                f.metadata["parse"](value)
            except (argparse.ArgumentTypeError, ValueError) as err:
                raise UsageError(f"{flag}: {err}") from None
        choices = _choices(f)
        for v in value if isinstance(value, tuple) else (value,):
            if choices is not None and isinstance(v, str) and v not in choices:
                raise UsageError(
                    f"{flag} {v!r}{suggest(v, choices)}: choose from {', '.join(choices)}"
                )
            why = _bound_error(f, v)
            if why:
                raise UsageError(f"{flag} {v}: {why}")
