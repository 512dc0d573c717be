"""`mechscope info`: a model's configuration and hook names."""

from __future__ import annotations

import argparse
import json

from mechscope.apps.commands.common import add_model_option, load


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `mechscope info` (a model's configuration and hook names) to the CLI.

    Example:
        >>> parser = argparse.ArgumentParser(prog="mechscope")
        >>> register(parser.add_subparsers())
        >>> parser.parse_args(['info', '--layer', '3']).layer
        3
    """
    parser = subparsers.add_parser("info", help="show a model's config and hook names")
    add_model_option(parser)
    parser.add_argument("--layer", type=int, default=None, help="list hook names of this block only")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run `mechscope info`: print the model's configuration and the hook names of one block; returns 0.

    Example:
        $ mechscope info --layer 3
    """
    from mechscope.core import names
    from mechscope.core.sites import Site  # noqa: F401  (documents where shapes come from)

    model = load(args)
    print(json.dumps(model.cfg.to_dict(), indent=2))
    print(f"attention implementation: {model.attn_implementation}")
    hooks = model.hook_names()
    if args.layer is not None:
        hooks = [h for h in hooks if names.parse_layer(h) == args.layer]
    else:
        hooks = [h for h in hooks if names.parse_layer(h) in (None, 0)]
        print(f"{len(model.hook_names())} hook points; block 0 shown (the other blocks repeat it):")
    for hook in hooks:
        print(f"  {hook}")
    return 0
