"""`mechscope heads`: score every attention head (previous-token, duplicate, induction, BOS, entropy).

Example:
    $ mechscope heads --json heads.json --png heads.png
    $ mechscope heads --model induction-toy --seq-len 20
"""

from __future__ import annotations

import argparse

from mechscope.apps.commands.common import add_model_option, add_output_options, load


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `mechscope heads` (attention-head detectors and their table) to the CLI.

    Example:
        >>> parser = argparse.ArgumentParser(prog="mechscope")
        >>> register(parser.add_subparsers())
        >>> parser.parse_args(['heads', '--seq-len', '20']).seq_len
        20
    """
    parser = subparsers.add_parser("heads", help="attention-head detectors and classification table")
    parser.add_argument("--seq-len", type=int, default=50, help="random tokens per copy of the repeated sequence")
    parser.add_argument("--batch", type=int, default=8, help="repeated sequences scored")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--show", default="labelled", choices=["labelled", "all"],
                        help="print labelled heads only (default) or every head")
    add_model_option(parser)
    add_output_options(parser)
    parser.set_defaults(func=run)


def heads_result(model, seq_len: int, batch: int, seed: int) -> tuple[dict, list]:
    """The JSON record of `mechscope heads` and the per-head table.

    Example:
        >>> from mechscope import load_model
        >>> record, table = heads_result(load_model("smollm2-135m"), seq_len=50, batch=8, seed=0)   # doctest: +SKIP
    """
    from mechscope.core.provenance import provenance
    from mechscope.methods.heads import THRESHOLDS, detect_heads, icl_score, repeated_random_tokens

    ids = repeated_random_tokens(model, seq_len, batch, seed)
    table = detect_heads(model, ids=ids)
    icl = icl_score(model, ids)
    data = {
        "heads": [r.to_json() for r in table],
        "thresholds": THRESHOLDS,
        "icl": {"loss_first_half": icl.loss_first_half, "loss_second_half": icl.loss_second_half,
                "icl_score": icl.icl_score, "chance": icl.chance},
        "seq_len": seq_len,
        "batch": batch,
        "provenance": provenance(model, seed=seed),
    }
    return data, table


def run(args: argparse.Namespace) -> int:
    """Run `mechscope heads`: score every head on repeated random tokens and print the labelled ones; returns 0.

    Example:
        $ mechscope heads --json heads.json --png heads.png
    """
    from mechscope.apps.output import figure_png, write_bytes, write_json
    from mechscope.methods.reading_plots import heads_figure

    model = load(args)
    data, table = heads_result(model, args.seq_len, args.batch, args.seed)
    if args.json_path:
        write_json(args.json_path, data, force=args.force)
    if args.png_path:
        write_bytes(args.png_path, figure_png(heads_figure(table), close=True), force=args.force)
    icl = data["icl"]
    print(f"in-context learning: loss {icl['loss_first_half']:.3f} (first copy) -> {icl['loss_second_half']:.3f} "
          f"(second copy), score {icl['icl_score']:+.3f}, chance {icl['chance']:.3f}")
    shown = [r for r in table if args.show == "all" or r.label != "other"]
    print(f"{len(shown)} of {len(table)} heads shown (thresholds: {data['thresholds']})")
    print(f"  {'head':>6} {'prev':>6} {'dup':>6} {'induct':>6} {'bos':>6} {'entropy':>7}  label")
    for r in sorted(shown, key=lambda r: (r.label, -max(r.prev_token, r.duplicate_token, r.induction, r.bos))):
        print(f"  {r.layer:>3}.{r.head:<2} {r.prev_token:6.3f} {r.duplicate_token:6.3f} {r.induction:6.3f} "
              f"{r.bos:6.3f} {r.entropy:7.3f}  {r.label}")
    return 0
