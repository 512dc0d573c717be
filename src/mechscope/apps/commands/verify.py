"""`mechscope verify`: parity of hooked runs with the plain Hugging Face model, on any model."""

from __future__ import annotations

import argparse

from mechscope.apps.commands.common import add_model_option, add_output_options, load

PROMPTS = ["The Eiffel Tower is in the city of", "Hi", "def add(a, b):\n    return a + b"]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `mechscope verify` (hooked activations against the plain HF model) to the CLI.

    Example:
        >>> parser = argparse.ArgumentParser(prog="mechscope")
        >>> register(parser.add_subparsers())
        >>> parser.parse_args(['verify', '--json', 'v.json']).json_path
        'v.json'
    """
    parser = subparsers.add_parser("verify", help="check hooked activations against the plain HF model")
    add_model_option(parser)
    add_output_options(parser, png=False)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run `mechscope verify`: compare hooked activations with the plain HF model's and print the verdict; returns 0 when they match.

    Example:
        $ mechscope verify --json verify.json
    """
    from mechscope.apps.output import write_json
    from mechscope.core.provenance import provenance
    from mechscope.core.verify import run_checks

    model = load(args)
    checks = run_checks(model, model.to_tokens(PROMPTS[:1]), padded_texts=PROMPTS)
    width = max(len(c.name) for c in checks)
    for check in checks:
        status = "ok  " if check.passed else "FAIL"
        print(f"{status} {check.name:<{width}}  max |diff| = {check.max_abs_diff:.3g}  (tolerance {check.tolerance:.3g})")
    if args.json_path:
        write_json(args.json_path, {"checks": [c.to_dict() for c in checks], "provenance": provenance(model)},
                   force=args.force)
    return 0 if all(c.passed for c in checks) else 1
