"""`mechscope lens "PROMPT"` (logit or tuned lens) and `mechscope lens train` (fit a tuned lens).

Example:
    $ mechscope lens "The Eiffel Tower is in the city of" --target " Paris" --json lens.json --png lens.png
    $ mechscope lens train --out smollm-lens --steps 300 --json lens-eval.json --png lens-kl.png
    $ mechscope lens "The Eiffel Tower is in the city of" --tuned smollm-lens --target " Paris"
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import asdict

from mechscope.apps.commands.common import add_model_option, add_output_options, load

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `mechscope lens` (logit / tuned lens of a prompt, and `lens train`) to the CLI.

    Example:
        >>> parser = argparse.ArgumentParser(prog="mechscope")
        >>> register(parser.add_subparsers())
        >>> parser.parse_args(['lens', 'The Eiffel Tower is in', '--target', ' Paris']).rest
        ['--target', ' Paris']
    """
    parser = subparsers.add_parser(
        "lens", help="logit / tuned lens of a prompt; 'lens train' fits a tuned lens",
        description="Read the residual stream at every layer through the unembedding. "
                    "Use 'mechscope lens train --help' for training a tuned lens.")
    parser.add_argument("prompt", help="the prompt (or 'train' to train a tuned lens)")
    parser.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    parser.set_defaults(func=run)


def _view_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mechscope lens", description="Logit or tuned lens of one prompt.")
    parser.add_argument("--tuned", default=None, metavar="PATH", help="a tuned-lens folder (default: logit lens)")
    parser.add_argument("--target", action="append", default=[], help="a single-token string to track (repeatable)")
    parser.add_argument("--top-k", type=int, default=5, help="top tokens kept per layer and position")
    parser.add_argument("--sites", default="layers", choices=["layers", "sublayers"],
                        help="layers: resid_pre of each block + final resid_post; sublayers: adds resid_mid")
    add_model_option(parser)
    add_output_options(parser)
    return parser


def _train_parser() -> argparse.ArgumentParser:
    from mechscope.methods.tuned_lens_train import TrainSettings

    d = TrainSettings()
    parser = argparse.ArgumentParser(prog="mechscope lens train", description="Train a tuned lens; resumable.")
    parser.add_argument("--out", required=True, help="lens folder (also the checkpoint folder: rerun to resume); "
                        "a non-empty folder that mechscope did not write needs --force")
    parser.add_argument("--corpus", default=d.source, help="'default' (offline Python docs), a .txt/.jsonl file or folder")
    parser.add_argument("--steps", type=int, default=d.steps, help="optimizer steps")
    parser.add_argument("--batch-size", type=int, default=d.batch_size, help="contexts per step")
    parser.add_argument("--context-length", type=int, default=d.context_length, help="tokens per context")
    parser.add_argument("--lr", type=float, default=d.lr, help="Adam learning rate")
    parser.add_argument("--layers-per-step", type=int, default=None, help="train a random subset of layers per step")
    parser.add_argument("--eval-contexts", type=int, default=16, help="held-out contexts for the KL / perplexity table")
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_model_option(parser)
    add_output_options(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    """Run `mechscope lens`: dispatch to `run_train` for `lens train`, else to `run_view`; returns the exit code.

    Example:
        $ mechscope lens "The Eiffel Tower is in the city of" --target " Paris"
        $ mechscope lens train --out out/tuned-lens
    """
    if args.prompt == "train":
        return run_train(_train_parser().parse_args(args.rest))
    view = _view_parser().parse_args(args.rest)
    view.prompt = args.prompt
    return run_view(view)


def run_view(args: argparse.Namespace) -> int:
    """Run `mechscope lens PROMPT`: print (and write) the lens table of the prompt, layer by layer; returns 0.

    Example:
        $ mechscope lens "The Eiffel Tower is in the city of" --target " Paris" --json lens.json --png lens.png
    """
    from mechscope.apps.output import figure_png, write_bytes, write_json
    from mechscope.methods.lens import logit_lens
    from mechscope.methods.reading_plots import lens_grid_figure
    from mechscope.methods.tuned_lens import TunedLens

    model = load(args)
    translator = TunedLens.load(args.tuned, model) if args.tuned else None
    result = logit_lens(model, args.prompt, sites=args.sites, k=args.top_k, targets=args.target,
                        translator=translator, lens="tuned" if translator is not None else "logit")
    data = result.to_json()
    if args.tuned:
        data["provenance"]["tuned_lens"] = str(args.tuned)
    if args.json_path:
        write_json(args.json_path, data, force=args.force)
    if args.png_path:
        write_bytes(args.png_path, figure_png(lens_grid_figure(result), close=True), force=args.force)
    last = len(result.tokens) - 1
    print(f"{result.lens} lens, last position {result.tokens[last]!r}: top token per layer")
    for row, site in enumerate(result.layers):
        tok, prob = result.top_tokens[row][last][0], float(result.top_probs[row, last, 0])
        extra = "".join(f"  {t!r}: rank {int(result.target_rank[t][row, last])}, p={float(result.target_prob[t][row, last]):.3f}"
                        for t in result.target_rank)
        print(f"  {site:32s} {tok!r:>16} p={prob:.3f}{extra}")
    return 0


def run_train(args: argparse.Namespace) -> int:
    """Run `mechscope lens train`: fit (or resume) a tuned lens and save it to `--out`; returns 0.

    Example:
        $ mechscope lens train --out out/tuned-lens
    """
    from mechscope.apps.output import figure_png, write_bytes, write_json
    from mechscope.core.corpus import token_contexts
    from mechscope.core.files import claim_output_dir
    from mechscope.core.provenance import provenance
    from mechscope.methods.reading_plots import lens_kl_figure
    from mechscope.methods.tuned_lens import evaluate_lenses
    from mechscope.methods.tuned_lens_train import TrainSettings, train_tuned_lens

    claim_output_dir(args.out, args.force)  # before loading: a foreign folder is refused at once
    model = load(args)
    settings = TrainSettings(steps=args.steps, batch_size=args.batch_size, context_length=args.context_length,
                             lr=args.lr, layers_per_step=args.layers_per_step, seed=args.seed, source=args.corpus)
    run = train_tuned_lens(model, settings, checkpoint_dir=args.out, progress=not args.no_progress, force=args.force)
    run.lens.save(args.out)
    held = token_contexts(model.tokenizer, args.corpus, args.context_length, max_contexts=args.eval_contexts,
                          split="held_out")
    if held.shape[0] == 0:
        log.warning("The corpus has no held-out contexts of %d tokens; skipping the evaluation.", args.context_length)
        rows = []
    else:
        rows = evaluate_lenses(model, run.lens, held)
    data = {"lens_path": str(args.out), "settings": asdict(settings), "losses": run.losses,
            "eval": [asdict(r) for r in rows],
            "provenance": provenance(model, seed=args.seed)}
    if args.json_path:
        write_json(args.json_path, data, force=args.force)
    if args.png_path and rows:
        write_bytes(args.png_path, figure_png(lens_kl_figure(rows), close=True), force=args.force)
    print(f"tuned lens saved to {args.out}; held-out KL(final || lens) in nats ({held.numel()} tokens):")
    print(f"  {'site':32s} {'logit':>8} {'tuned':>8} {'ppl logit':>10} {'ppl tuned':>10}")
    for r in rows:
        print(f"  {r.site:32s} {r.kl_logit:8.3f} {r.kl_tuned:8.3f} {r.ppl_logit:10.1f} {r.ppl_tuned:10.1f}")
    sys.stdout.flush()
    return 0
