"""`mechscope run "PROMPT"`: the model's top next-token predictions."""

from __future__ import annotations

import argparse

import torch

from mechscope.apps.commands.common import add_model_option, add_output_options, load


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `mechscope run` (top next-token predictions for a prompt) to the CLI.

    Example:
        >>> parser = argparse.ArgumentParser(prog="mechscope")
        >>> register(parser.add_subparsers())
        >>> parser.parse_args(['run', 'The Eiffel Tower is in', '--top-k', '3']).top_k
        3
    """
    parser = subparsers.add_parser("run", help="top next-token predictions for a prompt")
    parser.add_argument("prompt")
    parser.add_argument("--top-k", type=int, default=10)
    add_model_option(parser)
    add_output_options(parser, png=False)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run `mechscope run`: print the top next-token predictions of the prompt; returns 0.

    Example:
        $ mechscope run "The Eiffel Tower is in the city of" --top-k 3
    """
    from mechscope.apps.output import write_json
    from mechscope.apps.report.core_sections import top_predictions
    from mechscope.core.errors import require_finite
    from mechscope.core.provenance import provenance

    model = load(args)
    with torch.no_grad():
        logits = model(args.prompt)
    require_finite(logits[:, -1], "The model's logits")
    top = top_predictions(model, logits, args.top_k)
    width = max(len(repr(t["token"])) for t in top)
    for rank, entry in enumerate(top, 1):
        print(f"{rank:>3}  {entry['token']!r:<{width}}  p={entry['prob']:.4f}  logit={entry['logit']:.3f}")
    if args.json_path:
        result = {"prompt": args.prompt, "tokens": model.to_str_tokens(args.prompt), "top": top,
                  "provenance": provenance(model)}
        write_json(args.json_path, result, force=args.force)
    return 0
