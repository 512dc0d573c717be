"""`mechscope toy induction` (train the attention-only induction toy) and `mechscope toy superposition`.

Example:
    $ mechscope toy induction --out induction-toy --json toy.json --png toy.png
    $ mechscope heads --model induction-toy --seq-len 20
    $ mechscope toy superposition --json sup.json --png sup.png
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, fields
from typing import Any

from mechscope.apps.commands.common import add_output_options, check_outputs


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `mechscope toy` (the induction and superposition toy models) to the CLI.

    Example:
        >>> parser = argparse.ArgumentParser(prog="mechscope")
        >>> register(parser.add_subparsers())
        >>> parser.parse_args(['toy', 'induction', '--out', 'out/toy']).toy
        'induction'
    """
    parser = subparsers.add_parser("toy", help="toy models: induction (attention-only transformer), superposition")
    toys = parser.add_subparsers(dest="toy", required=True, metavar="TOY")
    induction = toys.add_parser("induction", help="train a 2-layer attention-only transformer that forms induction heads")
    induction.add_argument("--out", required=True, help="folder for the model (loadable with --model FOLDER); "
                           "a non-empty folder that mechscope did not write needs --force")
    induction.add_argument("--steps", type=int, default=None, help="training steps (default 1500)")
    induction.add_argument("--heads", type=int, default=None, help="attention heads per layer (default 2)")
    induction.add_argument("--seed", type=int, default=0)
    induction.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_output_options(induction)
    induction.set_defaults(func=run_induction)
    _register_superposition(toys)


def induction_summary(model: Any, chance: float, seq_len: int = 20, batch: int = 64, seed: int = 123) -> dict[str, Any]:
    """Detected heads of a trained toy; the effect of ablating its best induction head, and all of them.

    Example:
        >>> from mechscope import load_model
        >>> summary = induction_summary(load_model("out/induction-toy"), chance=1 / 64)   # doctest: +SKIP
    """
    from mechscope.methods.heads import detect_heads, head_ablation_hooks, icl_score, repeated_random_tokens

    ids = repeated_random_tokens(model, seq_len, batch, seed)
    table = detect_heads(model, ids=ids)
    best_prev = max((r for r in table if r.layer == 0), key=lambda r: r.prev_token)
    best_induction = max((r for r in table if r.layer > 0), key=lambda r: r.induction)
    clean = icl_score(model, ids)
    ablated = icl_score(model, ids, fwd_hooks=head_ablation_hooks([(best_induction.layer, best_induction.head)]))
    induction_heads = [(r.layer, r.head) for r in table if r.layer > 0 and r.label == "induction"]
    all_ablated = icl_score(model, ids, fwd_hooks=head_ablation_hooks(induction_heads)) if induction_heads else clean
    return {
        "heads": [r.to_json() for r in table],
        "previous_token_head": [best_prev.layer, best_prev.head],
        "induction_head": [best_induction.layer, best_induction.head],
        "repeated_loss": clean.loss_second_half,
        "first_copy_loss": clean.loss_first_half,
        "repeated_loss_induction_head_ablated": ablated.loss_second_half,
        "induction_heads": [list(h) for h in induction_heads],
        "repeated_loss_induction_heads_ablated": all_ablated.loss_second_half,
        "chance": chance,
    }


def run_induction(args: argparse.Namespace) -> int:
    """Run `mechscope toy induction`: train the attention-only toy, save it and report its induction heads; returns 0.

    Example:
        $ mechscope toy induction --out out/induction-toy
    """
    from mechscope.apps.output import figure_png, write_bytes, write_json
    from mechscope.core.provenance import provenance
    from mechscope.methods.reading_plots import toy_history_figure
    from mechscope.toys.induction import InductionToyConfig, train_induction_toy

    overrides = {"seed": args.seed}
    if args.steps is not None:
        overrides["steps"] = args.steps
    if args.heads is not None:
        overrides["n_heads"] = args.heads
    cfg = InductionToyConfig(**overrides)
    check_outputs(args)
    result = train_induction_toy(cfg, out_dir=args.out, progress=not args.no_progress, force=args.force)
    summary = induction_summary(result.model, result.chance_loss)
    data = {"config": asdict(cfg), "out": str(args.out), "phase_change_step": result.phase_change_step,
            "history": result.history, "seconds": result.seconds, **summary,
            "provenance": provenance(result.model, seed=cfg.seed)}
    if args.json_path:
        write_json(args.json_path, data, force=args.force)
    if args.png_path:
        write_bytes(args.png_path, figure_png(toy_history_figure(result.history, result.chance_loss), close=True), force=args.force)
    print(f"induction toy saved to {args.out} ({result.seconds:.0f} s); phase change at step {result.phase_change_step}")
    print(f"previous-token head {tuple(summary['previous_token_head'])}, induction head {tuple(summary['induction_head'])}")
    print(f"loss on the repeated copy: {summary['repeated_loss']:.3f}; with the induction head ablated: "
          f"{summary['repeated_loss_induction_head_ablated']:.3f}; with all induction heads "
          f"{summary['induction_heads']} ablated: {summary['repeated_loss_induction_heads_ablated']:.3f}; "
          f"chance {result.chance_loss:.3f}")
    return 0


def _register_superposition(toys: argparse._SubParsersAction) -> None:
    parser = toys.add_parser("superposition", help="toy models of superposition: sweep feature sparsity")
    try:
        from mechscope.toys.superposition import SuperpositionConfig
    except ImportError:  # the module is optional at this layer
        parser.set_defaults(func=lambda args: _missing())
        return
    for f in fields(SuperpositionConfig):
        default = f.default
        flag = f"--{f.name.replace('_', '-')}"
        if isinstance(default, tuple):
            parser.add_argument(flag, dest=f.name, type=_floats, default=default,
                                help=f"comma-separated (default {','.join(map(str, default))})")
        elif isinstance(default, (int, float, str)) and not isinstance(default, bool):
            parser.add_argument(flag, dest=f.name, type=type(default), default=default, help=f"default {default}")
    add_output_options(parser)
    parser.set_defaults(func=run_superposition)


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(x) for x in text.split(",") if x.strip())


def _missing() -> int:
    raise SystemExit("mechscope toy superposition: mechscope.toys.superposition is not available")


def run_superposition(args: argparse.Namespace) -> int:
    """Run `mechscope toy superposition`: sweep feature sparsity of the toy model and write the result; returns 0.

    Example:
        $ mechscope toy superposition --json sup.json --png sup.png
    """
    from mechscope.apps.output import figure_png, write_bytes, write_json
    from mechscope.toys.superposition import SuperpositionConfig, train_superposition
    from mechscope.toys.superposition_plots import plot_norms_and_superposition

    names = {f.name for f in fields(SuperpositionConfig)}
    cfg = SuperpositionConfig(**{k: v for k, v in vars(args).items() if k in names})
    check_outputs(args)
    result = train_superposition(cfg)
    if args.json_path:
        write_json(args.json_path, result.to_dict(), force=args.force)
    if args.png_path:
        write_bytes(args.png_path, figure_png(plot_norms_and_superposition(result), close=True), force=args.force)
    print(f"{cfg.n_features} features through {cfg.d_hidden} dimensions:")
    print(f"  {'sparsity':>8} {'represented':>11} {'dims/feature':>12} {'loss':>10}")
    for row in result.summary():
        print(f"  {row['sparsity']:8.3f} {row['n_represented']:11d} {row['dims_per_feature']:12.3f} {row['loss']:10.5f}")
    return 0
