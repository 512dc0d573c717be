"""The `mechscope` command line. Each subcommand lives in `mechscope.apps.commands.<name>`.

Example:
    $ mechscope report "The Eiffel Tower is in the city of" --out out/demo
    $ mechscope run "The Eiffel Tower is in the city of" --top-k 5
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys

from mechscope import __version__
from mechscope.apps import commands
from mechscope.core.errors import MechscopeError


def build_parser() -> argparse.ArgumentParser:
    """The `mechscope` argument parser, with every subcommand of `mechscope.apps.commands` registered.

    Example:
        >>> args = build_parser().parse_args(["run", "The Eiffel Tower is in", "--top-k", "3"])
        >>> args.command, args.top_k
        ('run', 3)
    """
    parser = argparse.ArgumentParser(prog="mechscope", description="Mechanistic interpretability for HF causal LMs.")
    parser.add_argument("--version", action="version", version=f"mechscope {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        if hasattr(module, "register"):
            module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the `mechscope` command line on `argv` (default: `sys.argv[1:]`); returns the exit code (2 on a mechscope error).

    Example:
        >>> main(["info", "--layer", "3"])                            # doctest: +SKIP
        0
    """
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        return int(args.func(args) or 0)
    except MechscopeError as err:
        print(f"mechscope {args.command}: error: {err}", file=sys.stderr)
        return 2
    except FileNotFoundError as err:
        print(f"mechscope {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
