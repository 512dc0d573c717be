"""`mechscope transcoders train --out DIR`: a transcoder for every MLP (per-layer or cross-layer), evaluated.

Collects every layer's MLP input and output for `--tokens` corpus tokens (plus `--eval-tokens`
held out after them), trains the set with the existing trainer, saves it to `--out`, and
reports per layer the normalised MSE, L0 and dead fraction, and for the whole set the
replacement model's next-token agreement with the real model and its KL.

Example:
    $ mechscope transcoders train --out out/plt --d-sae 2048 --tokens 20000 --json out/plt/eval.json
    $ mechscope transcoders train --kind cross_layer --out out/clt --d-sae 256 --tokens 8000
    $ mechscope transcoders train --out out/plt-skip --skip    # skip transcoders: + W_skip @ mlp_input
"""

from __future__ import annotations

import argparse
from typing import Any

from mechscope.apps.commands.common import add_model_option, load


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `mechscope transcoders train` (a whole-model transcoder set, trained and evaluated) to the CLI.

    Example:
        >>> parser = argparse.ArgumentParser(prog="mechscope")
        >>> register(parser.add_subparsers())
        >>> args = parser.parse_args(['transcoders', 'train', '--out', 'out/clt', '--kind', 'cross_layer',
        ...                           '--d-sae', '256'])
        >>> args.action, args.kind, args.d_sae, args.architecture
        ('train', 'cross_layer', 256, 'jumprelu')
    """
    parser = subparsers.add_parser("transcoders", help="train and evaluate a whole-model transcoder set")
    sub = parser.add_subparsers(dest="action", required=True)
    train = sub.add_parser("train", help="train per-layer transcoders or a cross-layer transcoder on every MLP")
    train.add_argument("--out", required=True, help="folder for the set (transcoders.json + weights)")
    train.add_argument("--kind", default="per_layer", choices=["per_layer", "cross_layer"])
    train.add_argument("--architecture", default="jumprelu", help="per-layer: any dictionary architecture; "
                       "cross-layer: jumprelu or topk")
    train.add_argument("--d-sae", type=int, default=1024, help="features per layer")
    train.add_argument("--k", type=int, default=32, help="active features per token (topk)")
    train.add_argument("--skip", action="store_true", help="per-layer: skip transcoders, whose prediction adds a "
                       "linear skip term W_skip @ mlp_input (W_skip trained jointly, initialised at zero)")
    train.add_argument("--target-l0", type=float, default=None, help="per-layer, penalty architectures (relu, "
                       "jumprelu, gated): steer each layer's sparsity coefficient so its L0 ends at this value")
    train.add_argument("--tokens", type=int, default=8192, help="training tokens (held in memory)")
    train.add_argument("--eval-tokens", type=int, default=2048, help="held-out tokens for the evaluation")
    train.add_argument("--epochs", type=int, default=4)
    train.add_argument("--batch-size", type=int, default=512)
    train.add_argument("--lr", type=float, default=1e-3)
    train.add_argument("--context-length", type=int, default=128)
    train.add_argument("--corpus", default="default", help="corpus: default, or .txt/.jsonl/.parquet files")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--json", dest="json_path", default=None, metavar="PATH", help="write the evaluation as JSON")
    train.add_argument("--force", action="store_true", help="write into a folder mechscope did not write")
    add_model_option(train)
    train.set_defaults(func=run_train)


def run_train(args: argparse.Namespace) -> int:
    """Run `mechscope transcoders train`: collect MLP inputs and outputs, train the set, save and evaluate it; returns 0.

    Example:
        $ mechscope transcoders train --out out/plt --d-sae 2048 --tokens 20000 --json out/plt/eval.json
    """
    from mechscope.circuits.replacement import replacement_agreement
    from mechscope.core.errors import BadInputError
    from mechscope.core.files import claim_output_dir, write_json
    from mechscope.core.provenance import provenance
    from mechscope.dictionaries.transcoder_training import (
        collect_mlp_pairs,
        evaluate_layers,
        train_clt,
        train_per_layer,
    )

    if (args.skip or args.target_l0 is not None) and args.kind != "per_layer":
        raise BadInputError("--skip and --target-l0 are for per-layer transcoders: use --kind per_layer")
    claim_output_dir(args.out, force=args.force)
    model = load(args)
    source = args.corpus
    both = collect_mlp_pairs(model, args.tokens + args.eval_tokens, context_length=args.context_length,
                             source=source, seed=args.seed)
    data, held = both.split(args.tokens)
    del both
    common = dict(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed)
    if args.kind == "per_layer":
        extra: dict[str, Any] = {"k": args.k} if args.architecture in ("topk", "batchtopk") else {}
        if args.skip:
            extra["skip"] = True
        if args.target_l0 is not None:
            extra["target_l0"] = args.target_l0
        tcs = train_per_layer(data, d_sae=args.d_sae, architecture=args.architecture, **common, **extra)
    else:
        extra = {"k": args.k} if args.architecture == "topk" else {}
        tcs = train_clt(data, features_per_layer=args.d_sae, activation=args.architecture, **common, **extra)
    del data
    tcs.save(args.out, force=True)
    layers = evaluate_layers(tcs, held)
    ids = _eval_contexts(model, args)
    whole = replacement_agreement(model, tcs, ids)
    result = {"kind": args.kind, "architecture": args.architecture, "skip": args.skip, "target_l0": args.target_l0,
              "d_sae": args.d_sae,
              "train_tokens": args.tokens,
              "eval_tokens": held.inputs.shape[0], "epochs": args.epochs, "layers": layers, "replacement": whole,
              "folder": str(args.out), "provenance": provenance(model, seed=args.seed)}
    write_json(f"{args.out}/eval.json", result, force=True)
    if args.json_path:
        write_json(args.json_path, result, force=args.force)
    kind = f"{args.kind} {args.architecture}{' skip' if args.skip else ''}"
    print(f"{kind} transcoders, {args.d_sae} features per layer, saved to {args.out}")
    print("layer  nmse    L0      dead")
    for row in layers:
        print(f"{row['layer']:>5}  {row['normalised_mse']:.3f}  {row['l0']:>6.1f}  {row['dead_fraction']:.3f}")
    print(f"replacement model: next-token agreement {whole['next_token_agreement']:.3f}, "
          f"KL {whole['kl']:.3f} nats over {whole['positions']} positions")
    return 0


def _eval_contexts(model: Any, args: argparse.Namespace) -> Any:
    """Up to 8 contexts from after the training and evaluation tokens, for the agreement and KL."""
    import torch

    from mechscope.core.corpus import iter_token_contexts

    skip = (args.tokens + args.eval_tokens) // args.context_length + 1
    rows = [row for batch in iter_token_contexts(model.tokenizer, args.corpus, args.context_length, batch_size=8,
                                                 max_contexts=skip + 8) for row in batch]
    return torch.stack((rows[skip:] or rows)[:8])
