"""`mechscope sae`: cache activations, train, evaluate and benchmark sparse autoencoders.

Example:
    $ mechscope sae cache --layer 15 --site resid_post --tokens 500000 --out out/acts-l15
    $ mechscope sae train --acts out/acts-l15 --arch topk --k 32 --expansion 16 --out out/sae-l15
    $ mechscope sae train --acts out/acts-l15 --arch jumprelu --target-l0 32 --out out/jumprelu-l15
    $ mechscope sae cache --layer 5 --site ln2.hook_out,mlp_out --tokens 200000 --out out/mlp5
    $ mechscope sae train --acts out/mlp5 --arch topk --k 32 --out out/transcoder-l5   # input -> target
    $ mechscope sae eval out/sae-l15 --json out/sae-l15/eval.json --png out/sae-l15/density.png
    $ mechscope sae synthetic --arch topk --seed 0 --json out/synthetic-topk.json
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import platform
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mechscope.apps.commands.common import add_model_option, add_output_options, load
from mechscope.core.errors import MechscopeError

logger = logging.getLogger(__name__)


def site_hook_name(site: str, layer: int | None) -> str:
    """A full hook name from `--site` (short or full) and `--layer`: ('resid_post', 15) -> 'blocks.15.hook_resid_post'.

    Example:
        >>> site_hook_name("resid_post", 15)
        'blocks.15.hook_resid_post'
    """
    from mechscope.core import names

    if site.startswith("blocks.") or site in (names.EMBED, names.POS_EMBED, names.LN_FINAL):
        return site
    if site in ("embed", "hook_embed"):
        return names.EMBED
    if layer is None:
        raise MechscopeError(f"--site {site} needs --layer")
    return names.block(layer, names.short_site(site))


def site_hook_names(sites: str, layers: str | None) -> list[str]:
    """Hook names from comma-separated `--site` values and a `--layer` spec (`3`, `0,2`, `0-5`), layer-major.

    Example:
        >>> site_hook_names("ln2.hook_out,mlp_out", "0-1")
        ['blocks.0.ln2.hook_out', 'blocks.0.hook_mlp_out', 'blocks.1.ln2.hook_out', 'blocks.1.hook_mlp_out']
    """
    layer_list: list[int | None] = [None]
    if layers is not None:
        layer_list = []
        for part in str(layers).split(","):
            lo, dash, hi = part.partition("-")
            try:
                layer_list.extend(range(int(lo), int(hi) + 1) if dash else [int(lo)])
            except ValueError:
                raise MechscopeError(f"--layer expects L, L1,L2 or L1-L2, got {layers!r}") from None
    return [site_hook_name(s.strip(), layer) for layer in layer_list for s in sites.split(",") if s.strip()]


def _corpus_args(parser: argparse.ArgumentParser, split: str) -> None:
    parser.add_argument("--corpus", default="default",
                        help="text source: default, pydoc, stdlib, a .txt/.jsonl/.parquet file or folder, hf:NAME[:SPLIT]")
    parser.add_argument("--packages", default="",
                        help="comma-separated installed packages whose docstrings extend the corpus (e.g. numpy)")
    parser.add_argument("--split", default=split, choices=["train", "held_out", "all"],
                        help=f"documents to use (default {split}; eval reads held_out)")
    parser.add_argument("--text-field", default="text", help="field of the text in .jsonl/.parquet/datasets")
    parser.add_argument("--context-length", type=int, default=128, help="tokens per packed context (BOS first)")


def _corpus_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"source": args.corpus, "packages": tuple(p for p in args.packages.split(",") if p),
                              "split": None if args.split == "all" else args.split,
                              "context_length": args.context_length}
    if args.text_field != "text":  # the default stays out of the store manifest
        kwargs["text_field"] = args.text_field
    return kwargs


def _site_args(parser: argparse.ArgumentParser, required: bool) -> None:
    parser.add_argument("--layer", default=None, help="block index of the site (or L1,L2 / L1-L2 for several)")
    parser.add_argument("--site", default=None if not required else "resid_post",
                        help="site: resid_pre|resid_mid|resid_post|attn_out|mlp_out|mlp_post|z|... or a full hook "
                             "name; comma-separated for several sites stored row-aligned (a transcoder's input,target)")
    parser.add_argument("--tokens", type=int, default=None, help="number of activation rows (tokens)")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `mechscope sae` (cache, train, eval, synthetic) to the CLI.

    Example:
        >>> parser = argparse.ArgumentParser(prog="mechscope")
        >>> register(parser.add_subparsers())
        >>> parser.parse_args(['sae', 'eval', 'out/sae-l15']).sae_command
        'eval'
    """
    parser = subparsers.add_parser("sae", help="sparse autoencoders: cache activations, train, evaluate, synthetic")
    sub = parser.add_subparsers(dest="sae_command", required=True, metavar="SAE_COMMAND")

    cache = sub.add_parser("cache", help="cache activations of a hook site over a corpus to sharded safetensors")
    _site_args(cache, required=True)
    _corpus_args(cache, "train")
    cache.add_argument("--out", required=True, help="store folder (re-running resumes it)")
    cache.add_argument("--store-dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    cache.add_argument("--batch-size", type=int, default=32, help="contexts per forward pass")
    cache.add_argument("--shard-tokens", type=int, default=65_536, help="rows per shard (rounded to whole contexts)")
    cache.add_argument("--keep-bos", action="store_true", help="keep BOS positions (left out by default)")
    add_model_option(cache)
    add_output_options(cache, png=False)
    cache.set_defaults(func=run_cache)

    train = sub.add_parser("train", help="train a dictionary on a store (--acts) or straight from the model")
    train.add_argument("--acts", default=None, help="activation store folder (else stream from the model)")
    _site_args(train, required=False)
    _corpus_args(train, "train")
    train.add_argument("--arch", default="topk", help="relu, topk, batchtopk, jumprelu, gated")
    train.add_argument("--k", type=int, default=32, help="active latents per token (topk, batchtopk)")
    train.add_argument("--expansion", type=int, default=16, help="d_sae = expansion * d_in")
    train.add_argument("--d-sae", type=int, default=None, help="number of latents (overrides --expansion)")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="other dictionary config fields, e.g. l1_coefficient=5 (repeatable)")
    train.add_argument("--batch-size", type=int, default=4096, help="tokens per optimizer step")
    train.add_argument("--epochs", type=float, default=1.0, help="passes over the store (when --steps is not given)")
    train.add_argument("--steps", type=int, default=None, help="optimizer steps")
    train.add_argument("--target-l0", type=float, default=None,
                       help="relu, jumprelu, gated: steer the sparsity coefficient so the L0 ends here")
    train.add_argument("--lr", type=float, default=None, help="learning rate (default: from d_sae and the batch)")
    train.add_argument("--warmup-steps", type=int, default=None, help="LR warm-up (default 5%% of the steps)")
    train.add_argument("--lr-decay-fraction", type=float, default=0.2,
                       help="final fraction of the steps over which the LR decays linearly to 0")
    train.add_argument("--sparsity-warmup-steps", type=int, default=None,
                       help="steps over which the sparsity coefficient ramps up (default 10%% of the steps)")
    train.add_argument("--b-dec-init", default="geometric_median", choices=["geometric_median", "mean", "zeros"],
                       help="decoder-bias initialisation")
    train.add_argument("--aux-k-coefficient", type=float, default=None, help="AuxK loss weight (topk, batchtopk)")
    train.add_argument("--resample-every", type=int, default=None,
                       help="steps between dead-latent resamplings (no-AuxK architectures; default 1/6 of the run; 0: off)")
    train.add_argument("--grad-clip", type=float, default=1.0, help="gradient-norm clip (0: off)")
    train.add_argument("--dead-window", type=int, default=None,
                       help="tokens without firing after which a latent is dead (default min(1M, total/10))")
    train.add_argument("--shuffle-buffer", type=int, default=262_144, help="rows mixed across shards")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--checkpoint-every", type=int, default=None, help="steps between checkpoints")
    train.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in OUT/checkpoints")
    train.add_argument("--allow-changed-settings", action="store_true",
                       help="with --resume: accept settings that differ from the checkpoint's (listed otherwise)")
    train.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                       help="progress bar with live L0, explained variance and dead fraction (default: on a terminal)")
    train.add_argument("--out", required=True, help="folder for the dictionary (SAELens layout) and its logs")
    add_model_option(train)
    add_output_options(train, png=False)
    train.set_defaults(func=run_train)

    ev = sub.add_parser("eval", help="evaluate a dictionary on held-out text (reconstruction, sparsity, CE loss)")
    ev.add_argument("sae_dir", help="dictionary folder (cfg.json + sae_weights.safetensors)")
    _corpus_args(ev, "held_out")
    ev.add_argument("--tokens", type=int, default=16_384, help="held-out tokens to evaluate on")
    ev.add_argument("--batch-size", type=int, default=8, help="contexts per forward pass")
    add_model_option(ev)
    add_output_options(ev, png=True)
    ev.set_defaults(func=run_eval)

    syn = sub.add_parser("synthetic", help="train on the synthetic ground-truth benchmark and report recovery")
    syn.add_argument("--arch", required=True, help="relu, topk, batchtopk, jumprelu, gated")
    syn.add_argument("--seed", type=int, default=0)
    syn.add_argument("--steps", type=int, default=1500, help="optimizer steps")
    add_output_options(syn, png=False)
    syn.set_defaults(func=run_synthetic)


# ----------------------------------------------------------------------------- cache


def run_cache(args: argparse.Namespace) -> int:
    """Run `mechscope sae cache`: write (or resume) an activation store of the sites over a corpus; returns 0.

    Example:
        $ mechscope sae cache --layer 15 --site resid_post --tokens 500000 --out out/acts-l15
    """
    from mechscope.apps.output import write_json
    from mechscope.core.provenance import provenance
    from mechscope.dictionaries.store import cache_activations
    from mechscope.dictionaries.store_reader import open_store

    if not args.tokens or args.tokens <= 0:
        raise MechscopeError("--tokens must be a positive number of tokens")
    model = load(args)
    hooks = site_hook_names(args.site, args.layer)
    kw = _corpus_kwargs(args)
    folder = cache_activations(model, hooks, args.out, force=args.force, n_tokens=args.tokens, source=kw["source"],
                               packages=kw["packages"], split=kw["split"], context_length=kw["context_length"],
                               dtype=args.store_dtype, **{k: kw[k] for k in ("text_field",) if k in kw},
                               batch_size=args.batch_size, shard_tokens=args.shard_tokens, keep_bos=args.keep_bos)
    reader = open_store(folder)
    man = reader.manifest
    sites = ", ".join(f"{h} (d={d})" for h, d in zip(reader.hook_names, reader.ds, strict=True))
    print(f"{folder}: {reader.n_tokens:,} tokens of {sites}, {man['dtype']}, in {len(man['shards'])} shards")
    if args.json_path:
        summary = {k: v for k, v in man.items() if k != "shards"}
        write_json(args.json_path, {**summary, "n_shards": len(man["shards"]), "folder": str(folder),
                                    "provenance": provenance(model)}, force=args.force)
    return 0


# ----------------------------------------------------------------------------- train


def _parse_sets(pairs: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise MechscopeError(f"--set expects KEY=VALUE, got {pair!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _store_provenance(man: dict[str, Any], seed: int) -> dict[str, Any]:
    import torch

    import mechscope

    return {"model": man["model_name"], "weights_sha256": man["weights_sha256"], "activation_dtype": man["dtype"],
            "corpus_fingerprint": man["corpus_fingerprint"], "mechscope_version": mechscope.__version__,
            "torch_version": torch.__version__, "python": platform.python_version(), "seed": seed}


def _repeat(make: Any) -> Iterator[Any]:
    while True:
        got_any = False
        for batch in make():
            got_any = True
            yield batch
        if not got_any:
            return


def _check_pair(hooks: list[str], where: str) -> None:
    if len(hooks) > 2:
        raise MechscopeError(f"{where} gives {len(hooks)} sites ({', '.join(hooks)}); choose one (an SAE) or two "
                             "(a transcoder's input,target) with --site and --layer")


def run_train(args: argparse.Namespace) -> int:
    """Run `mechscope sae train`: train a dictionary on a store or streamed activations and save it; returns 0.

    Example:
        $ mechscope sae train --acts out/acts-l15 --arch topk --k 32 --expansion 16 --out out/sae-l15
    """
    from mechscope.apps.output import write_json
    from mechscope.core.files import claim_output_dir
    from mechscope.dictionaries import Trainer, TrainerConfig, make_dictionary, save_dictionary
    from mechscope.dictionaries.checkpoint import latest_checkpoint

    out = Path(args.out)
    model = None
    if args.acts:
        from mechscope.dictionaries.store_reader import open_store

        reader = open_store(args.acts)
        man = reader.manifest
        hooks = site_hook_names(args.site, args.layer) if args.site else reader.hook_names
        _check_pair(hooks, args.acts)
        widths = [reader.ds[reader.site_index(h)] for h in hooks]
        model_name, total_rows = man["model_name"], reader.n_tokens

        def batches() -> Iterator[Any]:
            it = reader.site_batches(args.batch_size, hooks, seed=args.seed, buffer_tokens=args.shuffle_buffer,
                                     epochs=None)
            return it if len(hooks) == 2 else (b[0] for b in it)

        prov = _store_provenance(man, args.seed)
        source_info: dict[str, Any] = {"acts": str(args.acts), "store_tokens": total_rows}
    else:
        if args.layer is None and not (args.site or "").startswith("blocks."):
            raise MechscopeError("give --acts DIR, or --layer L --site SITE --tokens N to stream from the model")
        if not args.tokens:
            raise MechscopeError("streaming from the model needs --tokens N")
        from mechscope.core.provenance import provenance
        from mechscope.dictionaries.streaming import iter_sites_batches

        model = load(args)
        hooks = site_hook_names(args.site or "resid_post", args.layer)
        _check_pair(hooks, "the model")
        kw = _corpus_kwargs(args)
        source, ctx = kw.pop("source"), kw.pop("context_length")
        probe = next(iter_sites_batches(model, hooks, source=source, context_length=ctx, batch_size=1, **kw))
        widths, model_name, total_rows = [p.shape[1] for p in probe], model.cfg.name, args.tokens

        def batches() -> Iterator[Any]:
            it = iter_sites_batches(model, hooks, source=source, context_length=ctx, batch_size=args.batch_size,
                                    shuffle_buffer=min(args.shuffle_buffer, 16 * args.batch_size), seed=args.seed,
                                    max_tokens=args.tokens, **kw)
            return it if len(hooks) == 2 else (b[0] for b in it)

        prov = provenance(model, seed=args.seed)
        source_info = {"stream": True, "tokens": args.tokens}

    hook, d_in = hooks[0], widths[0]
    steps = args.steps or max(1, math.floor(args.epochs * total_rows / args.batch_size))
    d_sae = args.d_sae or args.expansion * d_in
    extra = _parse_sets(args.set)
    if args.arch in ("topk", "batchtopk"):
        extra.setdefault("k", args.k)
        if args.aux_k_coefficient is not None:
            extra.setdefault("aux_k_coefficient", args.aux_k_coefficient)
    if len(hooks) == 2:
        extra.update(d_out=widths[1], hook_name_out=hooks[1])
    sae = make_dictionary(args.arch, d_in=d_in, d_sae=d_sae, hook_name=hook, model_name=model_name,
                          seed=args.seed, **extra)
    tcfg = TrainerConfig(
        total_steps=steps, lr=args.lr, seed=args.seed, target_l0=args.target_l0,
        progress=sys.stderr.isatty() if args.progress is None else args.progress,
        lr_warmup_steps=args.warmup_steps, lr_decay_fraction=args.lr_decay_fraction,
        sparsity_warmup_steps=args.sparsity_warmup_steps, b_dec_init=args.b_dec_init,
        resample_every=args.resample_every, grad_clip_norm=args.grad_clip or None,
        dead_window_tokens=args.dead_window,
        log_path=str(out / "train_log.jsonl"), log_every=max(1, min(50, steps // 20)),
        checkpoint_dir=str(out / "checkpoints") if (args.checkpoint_every or args.resume) else None,
        checkpoint_every=args.checkpoint_every,
    )
    claim_output_dir(out, force=args.force or args.resume)
    resume_from = None
    if args.resume:
        resume_from = latest_checkpoint(out / "checkpoints")
        if resume_from is None:
            raise MechscopeError(f"--resume: no checkpoint under {out / 'checkpoints'}")
    elif (out / "train_log.jsonl").exists():
        (out / "train_log.jsonl").unlink()
    stream = _repeat(batches) if args.acts is None else batches()
    result = Trainer(sae, tcfg).fit(stream, resume_from=resume_from, allow_changes=args.allow_changed_settings)
    save_dictionary(sae, out, overwrite=True)
    summary = {"architecture": args.arch, "hook_name": hook, "hook_name_out": sae.cfg.hook_name_out, "d_in": d_in,
               "d_sae": d_sae, "steps": result.steps, "batch_size": args.batch_size,
               "tokens_trained": result.steps * args.batch_size, "lr": args.lr, "target_l0": args.target_l0,
               "final_metrics": result.metrics, "dictionary_config": sae.cfg.to_dict(), **source_info,
               "provenance": prov}
    write_json(out / "training.json", summary, force=True)
    if args.json_path:
        write_json(args.json_path, summary, force=args.force)
    m = result.metrics
    print(f"{out}: {args.arch} d_sae={d_sae} on {hook}, {result.steps} steps; "
          f"last batch L0 {m.get('l0', float('nan')):.1f}, EV {m.get('explained_variance', float('nan')):.3f}")
    return 0


# ----------------------------------------------------------------------------- eval


def run_eval(args: argparse.Namespace) -> int:
    """Run `mechscope sae eval`: reconstruction, sparsity and CE-loss metrics of a dictionary on held-out text; returns 0.

    Example:
        $ mechscope sae eval out/sae-l15 --json out/sae-l15/eval.json
    """
    from mechscope.apps.output import figure_png, write_bytes, write_json
    from mechscope.core.provenance import provenance
    from mechscope.dictionaries import load_dictionary
    from mechscope.dictionaries.evaluate import density_figure, evaluate_dictionary

    sae = load_dictionary(args.sae_dir)
    model = load(args)
    if sae.cfg.model_name and sae.cfg.model_name != model.cfg.name:
        logger.warning("the dictionary was trained on %s, evaluating on %s", sae.cfg.model_name, model.cfg.name)
    kw = _corpus_kwargs(args)
    source, ctx = kw.pop("source"), kw.pop("context_length")
    result = evaluate_dictionary(sae, model, source=source, context_length=ctx, n_tokens=args.tokens,
                                 batch_size=args.batch_size, **kw)
    data = result.to_dict()
    for key in ("n_tokens", "l0", "explained_variance", "mse", "dead_fraction", "dense_fraction",
                "ce_clean", "ce_sae", "ce_zero", "ce_loss_recovered", "kl"):
        value = data[key]
        print(f"{key:>20}  {value:.4f}" if isinstance(value, float) else f"{key:>20}  {value}")
    if args.json_path:
        write_json(args.json_path, {"sae": str(args.sae_dir), **data, "provenance": provenance(model)},
                   force=args.force)
    if args.png_path:
        write_bytes(args.png_path, figure_png(density_figure(result), close=True), force=args.force)
    return 0


# ----------------------------------------------------------------------------- synthetic


def run_synthetic(args: argparse.Namespace) -> int:
    """Run `mechscope sae synthetic`: train on data with known features and report how many are recovered; returns 0.

    Example:
        $ mechscope sae synthetic --arch topk --seed 0 --json out/synthetic-topk.json
    """
    import torch

    import mechscope
    from mechscope.apps.output import write_json
    from mechscope.dictionaries import available_architectures
    from mechscope.dictionaries import run_synthetic as synthetic

    if args.arch not in available_architectures():
        raise MechscopeError(f"unknown architecture {args.arch!r}; choose one of {available_architectures()}")
    result = synthetic(args.arch, seed=args.seed, steps=args.steps)
    print(f"{args.arch}: MMCS {result['mmcs']:.3f}, recovered {result['fraction_recovered']:.3f} "
          f"(L0 {result['l0']:.2f}, EV {result['explained_variance']:.3f})")
    if args.json_path:
        prov = {"model": None, "mechscope_version": mechscope.__version__, "torch_version": torch.__version__,
                "python": platform.python_version(), "seed": args.seed}
        write_json(args.json_path, {**result, "provenance": prov}, force=args.force)
    return 0
