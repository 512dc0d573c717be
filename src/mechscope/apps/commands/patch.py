"""`mechscope patch`: activation or attribution patching of one site, by layer (x position / head).

Example:
    $ mechscope patch --clean "The Eiffel Tower is in the city of" \\
        --corrupt "The Colosseum is in the city of" --answer " Paris" --wrong " Rome" \\
        --site resid_pre --by layer,pos --json patch.json --png patch.png
"""

from __future__ import annotations

import argparse
import html
import logging

from mechscope.apps.commands.common import add_model_option, add_output_options, load

log = logging.getLogger(__name__)

SITES = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "z", "every")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `mechscope patch` (activation / attribution patching of a prompt pair) to the CLI.

    Example:
        >>> parser = argparse.ArgumentParser(prog="mechscope")
        >>> register(parser.add_subparsers())
        >>> parser.parse_args(['patch', '--clean', 'The Eiffel Tower is in the city of', '--corrupt', 'The Colosseum is in the city of', '--answer', ' Paris']).site
        'resid_pre'
    """
    parser = subparsers.add_parser("patch", help="activation / attribution patching heatmap for a prompt pair")
    parser.add_argument("--clean", required=True, help="the clean prompt")
    parser.add_argument("--corrupt", required=True, help="the corrupted prompt (same number of tokens)")
    parser.add_argument("--answer", required=True, help="the clean answer, one token, e.g. ' Paris'")
    parser.add_argument("--wrong", default=None, help="the corrupted answer, one token, e.g. ' Rome'")
    parser.add_argument("--metric", default="logit_diff", choices=["logit_diff", "logprob", "prob"],
                        help="logit_diff (needs --wrong), logprob or prob of --answer at the last token")
    parser.add_argument("--site", default="resid_pre", choices=SITES,
                        help="where to patch; 'every' = resid_pre, attn_out and mlp_out together")
    parser.add_argument("--by", default=None,
                        help="axes: layer | layer,pos (default) for block sites; layer,head (default) | "
                             "layer,head,pos for z")
    parser.add_argument("--mode", default="denoise", choices=["denoise", "noise"],
                        help="denoise: clean into corrupted run; noise: corrupted into clean run")
    parser.add_argument("--method", default="activation", choices=["activation", "attribution", "ig"],
                        help="activation patching, attribution patching, or integrated gradients")
    parser.add_argument("--steps", type=int, default=16, help="interpolation steps for --method ig")
    parser.add_argument("--memory-mb", type=float, default=512, help="memory budget of one batched pass")
    parser.add_argument("--top", type=int, default=10, help="print this many top cells")
    parser.add_argument("--html", dest="html_path", default=None, metavar="PATH", help="write the heatmap as HTML")
    add_model_option(parser)
    add_output_options(parser)
    parser.set_defaults(func=run)


def compute(model, args: argparse.Namespace):
    """The `PatchResult` the arguments ask for.

    Example:
        >>> from mechscope import load_model
        >>> from mechscope.apps.cli import build_parser
        >>> args = build_parser().parse_args(["patch", "--clean", "The Eiffel Tower is in the city of",
        ...     "--corrupt", "The Colosseum is in the city of", "--answer", " Paris", "--wrong", " Rome"])   # doctest: +SKIP
        >>> result = compute(load_model("smollm2-135m"), args)                                             # doctest: +SKIP
    """
    from mechscope.methods.patching import patch_every_block, patch_sweep
    from mechscope.methods.patching.attribution import attribution_sweep

    by = args.by or ("layer,head" if args.site == "z" else "layer,pos")
    common = dict(answer=args.answer, wrong=args.wrong, mode=args.mode)
    metric = None if args.metric == "logit_diff" else args.metric
    if args.site == "every":
        if args.method != "activation":
            raise SystemExit("--site every works with --method activation; run attribution per site.")
        return patch_every_block(model, args.clean, args.corrupt, metric, by=by, memory_mb=args.memory_mb, **common)
    if args.method == "activation":
        return patch_sweep(model, args.clean, args.corrupt, metric, site=args.site, by=by,
                           memory_mb=args.memory_mb, **common)
    return attribution_sweep(model, args.clean, args.corrupt, metric, site=args.site, by=by, method=args.method,
                             steps=args.steps, memory_mb=args.memory_mb, **common)


def run(args: argparse.Namespace) -> int:
    """Run `mechscope patch`: patch every cell the options ask for, print the top cells and write the heatmap; returns 0.

    Example:
        $ mechscope patch --clean "The Eiffel Tower is in the city of" --corrupt "The Colosseum is in the city of" --answer " Paris" --wrong " Rome"
    """
    from mechscope.apps.output import MARKER, write_bytes, write_json

    model = load(args)
    result = compute(model, args)
    if args.json_path:
        write_json(args.json_path, result.to_dict(), force=args.force)
    if args.png_path:
        write_bytes(args.png_path, result.png_bytes(), force=args.force)
    if args.html_path:
        page = (f"<!DOCTYPE html>\n{MARKER}\n<html><head><meta charset='utf-8'><title>"
                f"{html.escape(result.site)} patching</title></head><body>{result.html_fragment()}</body></html>\n")
        write_bytes(args.html_path, page.encode(), force=args.force)
    print(f"{result.method} patching ({result.mode}) of {result.site} by {','.join(result.by)}: "
          f"metric clean {result.clean:.4f}, corrupt {result.corrupt:.4f}")
    for row in result.top(args.top):
        where = ", ".join(f"{a}={row[a]!r}" for a in result.by)
        print(f"  {row['score']:+.4f}  {where}")
    return 0
