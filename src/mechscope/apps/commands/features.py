"""`mechscope features`: collect, browse, search, export and match the latents of a dictionary.

Example:
    $ mechscope features collect out/sae-l15 --out out/features-l15.db --tokens 100000
    $ mechscope features show out/features-l15.db 12
    $ mechscope features search out/features-l15.db "digits"
    $ mechscope features prompt out/features-l15.db "The year 1984 was"
    $ mechscope features export out/features-l15.db --out out/np.json
    $ mechscope features match out/sae-a out/sae-b --json out/match.json --png out/match.png
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from mechscope.apps.commands.common import add_model_option, add_output_options
from mechscope.core.errors import MechscopeError


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `mechscope features` (collect, show, search, prompt, export, import, match) to the CLI.

    Example:
        >>> parser = argparse.ArgumentParser(prog="mechscope")
        >>> register(parser.add_subparsers())
        >>> parser.parse_args(['features', 'show', 'out/features.db', '12']).features_command
        'show'
    """
    parser = subparsers.add_parser("features", help="feature database: collect, show, search, prompt, export, match")
    sub = parser.add_subparsers(dest="features_command", required=True, metavar="FEATURES_COMMAND")

    col = sub.add_parser("collect", help="one pass over a corpus: examples and statistics of every latent")
    col.add_argument("dictionary", help="dictionary folder (cfg.json + sae_weights.safetensors)")
    col.add_argument("--out", required=True, help="SQLite feature database to write (re-running resumes it)")
    col.add_argument("--corpus", default="default", help="default, pydoc, stdlib, a .txt/.jsonl/.parquet file or folder")
    col.add_argument("--packages", default="", help="comma-separated packages whose docstrings extend the corpus")
    col.add_argument("--split", default="all", choices=["train", "held_out", "all"], help="documents to use")
    col.add_argument("--tokens", type=int, default=None, help="tokens to read (default: the whole corpus)")
    col.add_argument("--context-length", type=int, default=128, help="tokens per packed context (BOS first)")
    col.add_argument("--batch-size", type=int, default=16, help="contexts per forward pass")
    col.add_argument("--checkpoint-seconds", type=float, default=300.0, help="seconds between resume checkpoints")
    col.add_argument("--top-k", type=int, default=20, help="top-activating examples per latent")
    col.add_argument("--seed", type=int, default=0, help="seed of the interval and random examples")
    col.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                     help="progress bar (default: on a terminal)")
    add_model_option(col)
    add_output_options(col, png=False)
    col.set_defaults(func=run_collect)

    show = sub.add_parser("show", help="one latent: statistics, examples, logit effects, neighbours, explanations")
    show.add_argument("db", help="feature database")
    show.add_argument("latent", type=int)
    show.add_argument("--examples", type=int, default=5, help="top examples to print")
    show.add_argument("--json", dest="json_path", default=None, metavar="PATH", help="write everything as JSON")
    show.add_argument("--force", action="store_true", help="overwrite files that mechscope did not write")
    show.set_defaults(func=run_show)

    search = sub.add_parser("search", help="full-text search over explanations and top tokens")
    search.add_argument("db")
    search.add_argument("query", help="words (all must match) or an FTS5 query")
    search.add_argument("--limit", type=int, default=20)
    search.set_defaults(func=run_search)

    prompt = sub.add_parser("prompt", help="the latents most active on a prompt at one position")
    prompt.add_argument("db")
    prompt.add_argument("text")
    prompt.add_argument("--position", type=int, default=-1, help="token position (default: the last)")
    prompt.add_argument("--top", type=int, default=10)
    prompt.add_argument("--dictionary", default=None, help="dictionary folder (default: the one the database names)")
    add_model_option(prompt)
    prompt.set_defaults(func=run_prompt)

    exp = sub.add_parser("export", help="write the database as Neuronpedia batch JSON")
    exp.add_argument("db")
    exp.add_argument("--out", required=True, help="JSON file")
    exp.add_argument("--model-id", default=None, help="Neuronpedia modelId (default: the model's name)")
    exp.add_argument("--source", default=None, help="Neuronpedia layer/source id (default: LAYER-mechscope-res)")
    exp.add_argument("--force", action="store_true", help="overwrite files that mechscope did not write")
    exp.set_defaults(func=run_export)

    imp = sub.add_parser("import", help="read Neuronpedia batch JSON into a new feature database")
    imp.add_argument("json_file")
    imp.add_argument("--out", required=True, help="SQLite feature database to create")
    imp.add_argument("--force", action="store_true", help="replace an existing database")
    imp.set_defaults(func=run_import)

    match = sub.add_parser("match", help="match the latents of two dictionaries (universality)")
    match.add_argument("a", help="dictionary folder A")
    match.add_argument("b", help="dictionary folder B")
    match.add_argument("--threshold", type=float, default=0.7, help="cosine above which a match counts")
    match.add_argument("--activations", action="store_true",
                       help="also correlate activations on the same text (loads the models)")
    match.add_argument("--model-b", default=None, help="model of B when it differs from A's (--model)")
    match.add_argument("--corpus", default="pydoc")
    match.add_argument("--tokens", type=int, default=8192, help="tokens of text for activation correlation")
    add_model_option(match)
    add_output_options(match, png=True)
    match.set_defaults(func=run_match)


def _model_for(args: argparse.Namespace, dictionary: Any) -> Any:
    from mechscope.core.loading import load_model

    name = args.model
    if name is None and dictionary.cfg.model_name in ("smollm2-135m", "gemma3-270m"):
        name = dictionary.cfg.model_name
    return load_model(name, device=args.device, dtype=args.dtype)


def run_collect(args: argparse.Namespace) -> int:
    """Run `mechscope features collect`: build (or resume) a feature database of a dictionary over a corpus; returns 0.

    Example:
        $ mechscope features collect out/sae-l15 --out out/features.db --tokens 100000
    """
    from mechscope.core.files import write_json
    from mechscope.dictionaries import load_dictionary
    from mechscope.features import CollectConfig, FeatureDatabase, collect_features

    sae = load_dictionary(args.dictionary)
    model = _model_for(args, sae)
    kwargs: dict[str, Any] = {"split": None if args.split == "all" else args.split}
    packages = tuple(p for p in args.packages.split(",") if p)
    if packages:
        kwargs["packages"] = packages
    collect_features(model, sae, args.out, source=args.corpus, n_tokens=args.tokens,
                     context_length=args.context_length, batch_size=args.batch_size,
                     checkpoint_seconds=args.checkpoint_seconds,
                     config=CollectConfig(top_k=args.top_k, seed=args.seed), progress=args.progress,
                     dictionary_path=args.dictionary, force=args.force, **kwargs)
    with FeatureDatabase.open(args.out) as db:
        meta = db.meta()
        live = len(db.live_latents())
    print(f"{args.out}: {meta['d_sae']} latents ({live} fired) over {meta['n_tokens']} tokens "
          f"of {meta['n_contexts']} contexts")
    if args.json_path:
        write_json(args.json_path, {"db": str(args.out), "d_sae": meta["d_sae"], "live_latents": live,
                                    "n_tokens": meta["n_tokens"], "provenance": meta["provenance"]}, args.force)
    return 0


def highlight(tokens: list[str], acts: list[float], center: int) -> str:
    """Tokens joined, the centre token in [[ ]] and other firing tokens in ( ).

    Example:
        >>> highlight(["The", " cat", " sat"], [0.0, 2.0, 1.0], center=1)
        'The[[ cat]]( sat)'
    """
    parts = []
    for i, (t, a) in enumerate(zip(tokens, acts, strict=True)):
        t = t.replace("\n", "\\n")
        parts.append(f"[[{t}]]" if i == center else f"({t})" if a > 0 else t)
    return "".join(parts)


def run_show(args: argparse.Namespace) -> int:
    """Run `mechscope features show`: print one latent's statistics, examples, logit effects and explanations; returns 0.

    Example:
        $ mechscope features show out/features.db 12
    """
    from mechscope.features import FeatureDatabase

    with FeatureDatabase.open(args.db) as db:
        info = db.latent(args.latent)
        top = db.examples(args.latent, "top")
        provenance = db.meta().get("provenance", {})
    mean = "?" if info["mean_act"] is None else f"{info['mean_act']:.4g}"
    print(f"latent {args.latent}: density {info['density']:.3g} ({info['n_fired']} tokens), "
          f"max {info['max_act']:.4g}, mean {mean}")
    for e in info["explanations"]:
        scores = ", ".join(f"{k} {v:.3f}" for k, v in e["scores"].items() if v is not None)
        print(f"  explanation ({e['explainer']}): {e['text']}" + (f"  [{scores}]" if scores else ""))
    if info["logits_positive"]:
        print("  promotes: " + " ".join(repr(e["text"]) for e in info["logits_positive"]))
        print("  suppresses: " + " ".join(repr(e["text"]) for e in info["logits_negative"]))
    print("  decoder neighbours: " + ", ".join(f"{n['other']} ({n['value']:.2f})" for n in info["decoder_cosine"]))
    if info["cooccurrence"]:
        print("  fires with: " + ", ".join(f"{n['other']} ({int(n['value'])})" for n in info["cooccurrence"]))
    for e in top[: args.examples]:
        print(f"  {e['act']:8.4g}  {highlight(e['text'], e['acts'], e['center'])}")
    if args.json_path:
        from mechscope.core.files import write_json

        write_json(args.json_path, {**info, "examples": top, "provenance": provenance}, args.force)
    return 0


def run_search(args: argparse.Namespace) -> int:
    """Run `mechscope features search`: print the latents whose explanation or top tokens match a query; returns 0.

    Example:
        $ mechscope features search out/features.db "digits"
    """
    from mechscope.features import FeatureDatabase

    with FeatureDatabase.open(args.db) as db:
        hits = db.search(args.query, args.limit)
    for h in hits:
        text = h["explanations"].splitlines()[-1] if h["explanations"] else ""
        print(f"{h['latent']:6d}  {h['score']:7.3f}  {text or h['top_tokens'][:80]}")
    if not hits:
        print(f"no latent matches {args.query!r}", file=sys.stderr)
    return 0


def run_prompt(args: argparse.Namespace) -> int:
    """Run `mechscope features prompt`: print the latents most active on a prompt at one position; returns 0.

    Example:
        $ mechscope features prompt out/features.db "The year 1984 was" --top 10
    """
    from mechscope.dictionaries import load_dictionary
    from mechscope.features import FeatureDatabase
    from mechscope.features.inspect import top_latents

    with FeatureDatabase.open(args.db) as db:
        folder = args.dictionary or db.meta().get("dictionary_path")
        if not folder:
            raise MechscopeError(f"{args.db} names no dictionary folder; pass --dictionary")
        sae = load_dictionary(folder)
        model = _model_for(args, sae)
        rows = top_latents(model, sae, args.text, position=args.position, n=args.top, db=db)
    for r in rows:
        print(f"{r['latent']:6d}  {r['act']:8.4g}  density {r['density']:.3g}  {r['explanation'] or ''}")
    return 0


def run_export(args: argparse.Namespace) -> int:
    """Run `mechscope features export`: write the database as Neuronpedia batch JSON; returns 0.

    Example:
        $ mechscope features export out/features.db --out out/neuronpedia.json
    """
    from mechscope.core.files import write_text
    from mechscope.features import FeatureDatabase
    from mechscope.features.export import to_neuronpedia

    with FeatureDatabase.open(args.db) as db:
        batch = to_neuronpedia(db, model_id=args.model_id, source=args.source)
    write_text(args.out, json.dumps(batch, indent=1), args.force)
    print(f"{args.out}: {len(batch)} features in Neuronpedia batch JSON")
    return 0


def run_import(args: argparse.Namespace) -> int:
    """Run `mechscope features import`: read Neuronpedia batch JSON into a new feature database; returns 0.

    Example:
        $ mechscope features import out/neuronpedia.json --out out/copy.db
    """
    from mechscope.features.export import from_neuronpedia

    with open(args.json_file, encoding="utf-8") as f:
        batch = json.load(f)
    db = from_neuronpedia(batch, args.out, force=args.force)
    db.close()
    print(f"{args.out}: {len(batch)} features imported")
    return 0


def run_match(args: argparse.Namespace) -> int:
    """Run `mechscope features match`: pair the latents of two dictionaries (by decoder or by activations); returns 0.

    Example:
        $ mechscope features match out/sae-a out/sae-b --threshold 0.7 --json out/match.json --png out/match.png
    """
    from mechscope.core.files import figure_png, write_bytes, write_json
    from mechscope.dictionaries import load_dictionary
    from mechscope.features.universality import activation_match, decoder_match, plot_match

    sae_a, sae_b = load_dictionary(args.a), load_dictionary(args.b)
    result: dict[str, Any] = {"a": str(args.a), "b": str(args.b), "d_sae_a": sae_a.cfg.d_sae, "d_sae_b": sae_b.cfg.d_sae}
    if sae_a.cfg.d_out == sae_b.cfg.d_out and sae_a.cfg.model_name == sae_b.cfg.model_name:
        result["decoder"] = decoder_match(sae_a.W_dec, sae_b.W_dec, args.threshold)
    from mechscope.core.provenance import weights_hash

    provenance: dict[str, Any] = {"seed": None, "dictionary_a_sha256": weights_hash(sae_a),
                                  "dictionary_b_sha256": weights_hash(sae_b)}
    if args.activations:
        model_a = _model_for(args, sae_a)
        model_b = model_a
        if args.model_b or (sae_b.cfg.model_name and sae_b.cfg.model_name != model_a.cfg.name):
            from mechscope.core.loading import load_model

            model_b = load_model(args.model_b or sae_b.cfg.model_name, device=args.device, dtype=args.dtype)
        from mechscope.core.corpus import iter_documents
        from mechscope.features.universality import aligned_activations

        acts_a, acts_b = aligned_activations(model_a, sae_a, model_b, sae_b, iter_documents(args.corpus), args.tokens)
        result["activations"] = activation_match(acts_a, acts_b, args.threshold)
        result["activations"]["tokens"] = int(acts_a.shape[0])
        from mechscope.core.provenance import provenance as make_provenance

        provenance = make_provenance(model_a, **provenance, model_b=model_b.cfg.name,
                                     model_b_weights_sha256=weights_hash(model_b), corpus=args.corpus)
    if "decoder" not in result and "activations" not in result:
        raise MechscopeError("the dictionaries read different models or sites: pass --activations to match them "
                             "by activation correlation on the same text")
    for key in ("decoder", "activations"):
        if key in result:
            r = result[key]
            print(f"{key}: mean max A->B {r['mean_max_a_to_b']:.3f}, B->A {r['mean_max_b_to_a']:.3f}, "
                  f"Hungarian mean {r['hungarian_mean']:.3f}, above {r['threshold']}: {r['fraction_above_threshold']:.1%}")
    if args.json_path:
        write_json(args.json_path, {**result, "provenance": provenance}, args.force)
    if args.png_path:
        write_bytes(args.png_path, figure_png(plot_match(result, f"{args.a} vs {args.b}"), close=True), args.force)
    return 0
