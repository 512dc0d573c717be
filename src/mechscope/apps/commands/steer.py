"""`mechscope steer PROMPT ...`: generate with a latent clamped or a direction added, sweeping its value.

Examples:
    $ mechscope steer "I went to the" --sae out/sae-smollm2-l15 --feature 15:1234 --clamp 0..40:5 \\
        --keywords bridge --n 4 --max-new-tokens 40 --json out.json --png sweep.png
    $ mechscope steer "The movie was" --vector caa:pairs.jsonl --layer 12 --coef -4..4 --png sweep.png
    $ mechscope steer "The movie was" --vector pca:pairs.jsonl --layer 12 --ablate

Coefficients: `a,b,c`, `A..B` (5 even steps) or `A..B:N`. `--coef` adds `coef * direction` (`--units
direction`, the default: units of the direction's own norm) or `coef * typical site norm * unit direction`
(`--units site`). `--clamp` sets the latent to each value (decoder row x (value - current)).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mechscope.apps.commands.common import add_model_option, add_output_options, load


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `mechscope steer` (generate with a latent clamped or a direction added, over a sweep) to the CLI.

    Example:
        >>> parser = argparse.ArgumentParser(prog="mechscope")
        >>> register(parser.add_subparsers())
        >>> parser.parse_args(['steer', 'I went to the', '--vector', 'out/dir', '--coef=-4..4:9']).coef
        '-4..4:9'
    """
    p = subparsers.add_parser("steer", help="generate with a latent clamped or a direction added; sweep its value")
    p.add_argument("prompts", nargs="+", help="prompt(s) to continue")
    src = p.add_argument_group("direction (one of)")
    src.add_argument("--feature", help="SAE latent, as N or LAYER:N (with --sae)")
    src.add_argument("--sae", help="dictionary folder (SAELens layout) for --feature / --concept-latent")
    src.add_argument("--find", metavar="QUERY", help="use the best match of QUERY in --feature-db as --feature")
    src.add_argument("--feature-db", metavar="DB", help="feature database of --sae (mechscope features collect)")
    src.add_argument("--vector", help="caa:PAIRS.jsonl (difference of means), pca:PAIRS.jsonl (reading vector) or "
                     "a saved directions file (.json/.safetensors stem)")
    src.add_argument("--layer", type=int, help="layer of the site for --vector caa:/pca:")
    src.add_argument("--site", default="resid_post", help="site for --vector caa:/pca: (default resid_post)")
    act = p.add_argument_group("intervention (one of)")
    act.add_argument("--clamp", help="latent value(s) to clamp to, e.g. 8 or 0..40:5")
    act.add_argument("--coef", help="coefficient(s) to add, e.g. 4 or -4..4:9")
    act.add_argument("--ablate", action="store_true", help="project the direction out (with --cap: cap it)")
    act.add_argument("--cap", type=float, default=None, help="with --ablate: cap the projection at this value")
    p.add_argument("--units", choices=["direction", "site"], default="direction",
                   help="--coef in units of the direction's norm (default) or of the site's typical norm")
    p.add_argument("--where", default="all", help="all, prompt, generated, or token indices like 0,3,-1")
    p.add_argument("--keywords", default="", help="comma-separated words whose presence counts as the concept")
    p.add_argument("--concept-latent", type=int, default=None, help="latent of --sae read as the concept "
                   "(default: --feature)")
    p.add_argument("--neutral", default=None, help="neutral texts for the KL measure: .txt (one per line) or .jsonl")
    p.add_argument("--n", type=int, default=1, help="generations per prompt")
    p.add_argument("--max-new-tokens", type=int, default=30)
    p.add_argument("--temperature", type=float, default=0.0, help="0 is greedy (default)")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--no-baseline", dest="baseline", action="store_false",
                   help="skip the unsteered baseline row (measured by default)")
    p.add_argument("--save-direction", default=None, metavar="STEM", help="write the direction as STEM.safetensors "
                   "+ STEM.json")
    add_model_option(p)
    add_output_options(p)
    p.set_defaults(func=run)


def _where(spec: str) -> Any:
    from mechscope.core.errors import MechscopeError

    if spec in ("all", "prompt", "generated"):
        return spec
    try:
        return [int(x) for x in spec.split(",")]
    except ValueError:
        raise MechscopeError(f"--where {spec!r}: use all, prompt, generated or token indices like 0,3,-1.") from None


def _neutral(path: str | None) -> list[str]:
    from mechscope.core.errors import MechscopeError
    from mechscope.core.files import iter_jsonl
    from mechscope.features.steering.sweep import NEUTRAL_TEXTS

    if path is None:
        return list(NEUTRAL_TEXTS)
    if not Path(path).is_file():
        raise MechscopeError(f"No neutral-text file at {path}.")
    if path.endswith(".jsonl"):
        return [str(row["text"]) for _, row in iter_jsonl(path) if isinstance(row, dict) and "text" in row]
    return [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def _direction(args: argparse.Namespace, model: Any, sae: Any) -> Any:
    from mechscope.core import names
    from mechscope.core.errors import MechscopeError
    from mechscope.features.steering import directions as D

    if args.feature is not None:
        return D.from_latent(sae, _latent(args.feature, sae), model)
    kind, _, rest = args.vector.partition(":")
    if kind in ("caa", "pca") and rest:
        if args.layer is None:
            raise MechscopeError(f"--vector {kind}:... needs --layer.")
        hook = model.check_name(names.block(args.layer, names.short_site(args.site)))
        pairs = D.load_pairs(rest)
        make = D.mean_difference if kind == "caa" else D.reading_vector
        return make(model, pairs.positive, pairs.negative, hook, positive_tokens=pairs.positive_tokens,
                    negative_tokens=pairs.negative_tokens)
    return D.load_directions(args.vector)[0]


def _latent(spec: str, sae: Any) -> int:
    from mechscope.core.errors import MechscopeError
    from mechscope.core.names import parse_layer

    layer, _, index = spec.rpartition(":")
    try:
        latent = int(index)
    except ValueError:
        raise MechscopeError(f"--feature {spec!r}: give N or LAYER:N.") from None
    site_layer = parse_layer(sae.cfg.hook_name or "")
    if layer and int(layer) != site_layer:
        raise MechscopeError(f"--feature {spec!r}: the dictionary reads layer {site_layer} "
                             f"({sae.cfg.hook_name}), not layer {layer}.")
    return latent


def _plan(args: argparse.Namespace, direction: Any, sae: Any, where: Any,
          site_norm: float | None) -> tuple[list[float], Callable[[float], list[Any]]]:
    """The swept values and the interventions at each value."""
    from mechscope.features.steering import Ablate, Add, Clamp
    from mechscope.features.steering.sweep import parse_values

    if args.clamp is not None:
        latent = direction.source["latent"]
        return parse_values(args.clamp), lambda v: [Clamp(sae, latent, v, where=where)]
    if args.coef is not None:
        return parse_values(args.coef), lambda v: [Add(direction, v, where=where, site_norm=site_norm)]
    return [0.0], lambda v: [Ablate(direction, cap=args.cap, where=where)]


def run(args: argparse.Namespace) -> int:
    """Run `mechscope steer`: generate at each swept value and print the generations and their measures; returns 0.

    Example:
        $ mechscope steer "I think the movie was" --vector caa:pairs.jsonl --layer 12 --coef=-0.2,0.2 --units site
    """
    from mechscope.core.errors import MechscopeError
    from mechscope.core.files import figure_png, write_bytes, write_json
    from mechscope.core.provenance import provenance
    from mechscope.dictionaries import load_dictionary
    from mechscope.features.steering import save_directions, typical_norm
    from mechscope.features.steering.sweep import Concept, plot_sweep, steering_sweep

    sae = load_dictionary(args.sae) if args.sae else None
    if args.find is not None:
        if args.feature is not None or not args.feature_db or not args.sae:
            raise MechscopeError("--find needs --feature-db DB and --sae PATH, and replaces --feature.")
        from mechscope.features.steering.concepts import database_latents

        hit = database_latents(args.feature_db, args.find, sae)[0]
        print(f"latent {hit['latent']} matches {args.find!r}: {(hit['explanations'] or hit['top_tokens'])[:80]!r}")
        args.feature = str(hit["latent"])
    if (args.feature is None) == (args.vector is None):
        raise MechscopeError("Give one direction: --feature N (with --sae) or --vector SPEC.")
    if sum(x is not None and x is not False for x in (args.clamp, args.coef, args.ablate or None)) != 1:
        raise MechscopeError("Give one intervention: --clamp VALUES, --coef VALUES or --ablate.")
    if args.clamp is not None and args.feature is None:
        raise MechscopeError("--clamp sets an SAE latent: use it with --feature (and --sae).")
    if (args.feature is not None or args.concept_latent is not None) and not args.sae:
        raise MechscopeError("--feature and --concept-latent need --sae PATH (a dictionary folder).")
    where = _where(args.where)
    model = load(args)
    direction = _direction(args, model, sae)
    if args.save_direction:
        save_directions(args.save_direction, [direction], provenance(model, seed=args.seed), force=args.force)
    site_norm = typical_norm(model, direction.hook_name, _neutral(args.neutral)) if args.units == "site" else None
    values, make = _plan(args, direction, sae, where, site_norm)
    concept_latent = args.concept_latent if args.concept_latent is not None else (
        direction.source.get("latent") if args.feature is not None else None)
    keywords = [k.strip() for k in args.keywords.split(",") if k.strip()]
    concept = Concept(keywords, sae if concept_latent is not None else None, concept_latent) \
        if keywords or concept_latent is not None else None
    result = steering_sweep(model, args.prompts, make, values, concept=concept, neutral_texts=_neutral(args.neutral),
                            n=args.n, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                            top_p=args.top_p, seed=args.seed, batch_size=args.batch_size, baseline=args.baseline)
    data = result.to_dict()
    data["direction"] = {"hook_name": direction.hook_name, "norm": direction.norm, "source": direction.source,
                         "site_norm": site_norm}
    if args.json_path:
        write_json(args.json_path, data, force=args.force)
    if args.png_path:
        title = f"{direction.source.get('kind')} at {direction.hook_name} on {model.cfg.name}"
        write_bytes(args.png_path, figure_png(plot_sweep(result, title), close=True), force=args.force)
    label = "clamp" if args.clamp is not None else ("coef" if args.coef is not None else "ablate")
    for p in result.points:
        name = "unsteered" if p.coef is None else (f"{label} {p.coef:g}" if label != "ablate" else "ablate")
        parts = [name, f"ppl {p.perplexity:.1f}",
                 f"KL {p.kl_neutral:.3f}"]
        if p.keyword_incidence is not None:
            parts.append(f"keywords {p.keyword_incidence:.2f}")
        if p.latent_incidence is not None:
            parts.append(f"latent {p.latent_incidence:.2f} (mean {p.latent_mean:.2f})")
        print("  ".join(parts))
        print("    " + repr(p.texts[0][:160]))
    return 0
