"""The ``amc`` command line. Each subcommand lives in ``amc/commands/<name>.py`` and exposes
``add_parser(subparsers)``, which registers its flags and ``set_defaults(func=run)``.

Bad input surfaces as an ``AmcError`` (or an OS error on a path): one line on stderr, exit 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from amc import __version__
from amc.errors import AmcError

COMMANDS = [
    "amc.commands.info",
    "amc.commands.inspect",
    "amc.commands.sensitivity",
    "amc.commands.prune",
    "amc.commands.apply",
    "amc.commands.export",
    "amc.commands.latency",
    "amc.commands.search",
    "amc.commands.compress",
    "amc.commands.serve",
    "amc.commands.worker",
    "amc.commands.token",
    "amc.commands.lottery",
    "amc.commands.slim",
    "amc.commands.scratch",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="amc", description="AutoML compression search for PyTorch models")
    parser.add_argument("--version", action="version", version=f"amc {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for mod in COMMANDS:
        importlib.import_module(mod).add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        rc = args.func(args)
    except AmcError as e:
        print(f"amc {args.command}: error: {e}", file=sys.stderr)
        return 2
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError) as e:
        print(f"amc {args.command}: error: {e.strerror}: {e.filename}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"amc {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
