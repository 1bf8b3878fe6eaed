"""Command-line flags generated from the options model (``amc.options.CompressConfig``).

Lifecycle: ``add_option_flags(parser, only=..., exclude=..., defaults=...)`` while a subcommand builds
its parser (one flag per option: ``--round-to`` for ``round_to``, its type, default and help from the
field, ``choices`` from the field's ``Literal`` or its registry, ``--no-X`` for an option that is on
by default; ``json_schema_extra={"cli": {...}}`` on a field only where its flag is named otherwise,
e.g. ``--dtype``) -> ``argparse`` parses -> ``config_from_args(args)`` gathers the options the
namespace holds into one validated ``CompressConfig``.

Registry choices are read when they are listed (``--help``) or checked (``config_from_args``), so a
name registered after the parser was built (a plugin, a test) is a valid choice at once, and an
unknown one is one clear error line.
"""

from __future__ import annotations

import argparse
import types
import typing
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from amc.options import LEAVES, CompressConfig, OptionError, choices_of, leaf_fields

CHECKS = "_option_choices"  # the namespace attribute: option name -> its LiveChoices, checked on parsing


class LiveChoices:
    """A ``choices`` container argparse reads each time it lists them (usage, ``--help``): ``names()``,
    a registry's names, then. With ``strict=False`` argparse lets any value through and
    ``config_from_args`` checks it (``check``), so that an unknown name is one clear error line,
    as every other bad option is, rather than argparse's usage and exit."""

    def __init__(self, names: Callable[[], Iterable[str]], noun: str = "value", strict: bool = True) -> None:
        self.names, self.noun, self.strict = names, noun, strict

    def __contains__(self, value: object) -> bool:
        return not self.strict or value in list(self.names())

    def __iter__(self) -> Iterator[str]:
        return iter(list(self.names()))

    def __len__(self) -> int:
        return len(list(self.names()))

    def __repr__(self) -> str:
        return repr(list(self.names()))

    def check(self, value: Any) -> None:
        known = list(self.names())
        if value is not None and value not in known:
            raise OptionError(f"unknown {self.noun} {value!r}; known: {', '.join(known)}")


def flag_of(name: str, info: FieldInfo) -> str:
    """The option's flag: ``--round-to`` for ``round_to``, unless the field names another."""
    return _cli(info).get("flag") or "--" + name.replace("_", "-")


def _cli(info: FieldInfo) -> dict[str, Any]:
    extra = info.json_schema_extra
    return dict(extra.get("cli") or {}) if isinstance(extra, dict) else {}  # type: ignore[arg-type]


def _scalar(annotation: Any) -> tuple[Any, bool]:
    """The annotation without ``None`` (``int | None`` -> ``int``), and whether ``None`` was allowed."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        return (rest[0] if len(rest) == 1 else annotation), len(rest) < len(args)
    return annotation, False


def _floats(text: str) -> tuple[float, ...]:
    """A comma-separated list of numbers (``0.2,0.4``)."""
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def add_option_flags(parser: argparse.ArgumentParser | argparse._ArgumentGroup, model: type[BaseModel] = CompressConfig,
                     *, only: Iterable[str] | None = None, exclude: Iterable[str] = (),
                     defaults: Mapping[str, Any] | None = None,
                     choices: Mapping[str, Callable[[], Iterable[str]]] | None = None) -> list[str]:
    """One flag per option of ``model`` (``only`` those, in that order; less ``exclude``), with
    ``defaults`` and ``choices`` (a function listing the names) replacing the field's where a command
    differs; returns the option names added (see the module doc)."""
    fields = leaf_fields(model)
    names = list(only) if only is not None else list(fields)
    unknown = [n for n in names if n not in fields]
    if unknown:
        raise ValueError(f"not options of {model.__name__}: {', '.join(unknown)}")
    added = []
    for name in names:
        if name in exclude:
            continue
        _, info = fields[name]
        default = (defaults or {}).get(name, info.get_default(call_default_factory=True))
        listing = (choices or {}).get(name)
        _add_flag(parser, name, info, default, listing)
        added.append(name)
    return added


def _add_flag(parser: argparse.ArgumentParser | argparse._ArgumentGroup, name: str, info: FieldInfo, default: Any,
              listing: Callable[[], Iterable[str]] | None) -> None:
    flag, help_text = flag_of(name, info), info.description
    kind, _ = _scalar(info.annotation)
    if kind is bool:
        if default:  # on by default: the flag turns it off
            flag = _cli(info).get("flag") or "--no-" + name.replace("_", "-")
            parser.add_argument(flag, dest=name, action="store_false", help=_cli(info).get("negative_help", help_text))
        else:
            parser.add_argument(flag, dest=name, action="store_true", help=help_text)
        return
    kw: dict[str, Any] = {"dest": name, "default": default, "help": help_text}
    found = choices_of(info)
    names = listing if listing is not None else (found.names if found is not None else None)
    if names is not None:
        live = LiveChoices(names, found.noun if found is not None else name, strict=False)
        kw["choices"] = live
        checks = dict(parser.get_default(CHECKS) or {})  # the namespace carries them to config_from_args
        parser.set_defaults(**{CHECKS: checks | {name: live}})
    if typing.get_origin(kind) is typing.Literal:
        kw["choices"] = kw.get("choices") or typing.get_args(kind)
        kind = type(typing.get_args(kind)[0])
    if typing.get_origin(kind) is tuple:
        kw.update(type=_floats, metavar="X,Y,...")
    elif kind in (int, float):
        kw["type"] = kind
    parser.add_argument(flag, **kw)


def config_from_args(args: argparse.Namespace, **changes: Any) -> CompressConfig:
    """The ``CompressConfig`` of every option ``args`` holds (by its dest, the option's name), with
    ``changes`` on top; a name outside a flag's registry choices is one ``OptionError``."""
    for name, live in (getattr(args, CHECKS, None) or {}).items():
        live.check(getattr(args, name))
    found = {name: getattr(args, name) for name in LEAVES if hasattr(args, name)}
    return CompressConfig(**(found | changes))
