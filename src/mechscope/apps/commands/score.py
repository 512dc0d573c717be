"""`mechscope score`: score the newest explanation of latents (detection, fuzzing, simulation).

Example:
    $ mechscope score out/features.db --latents 12,40 --llm local --json out/scores.json
"""

from __future__ import annotations

import argparse
import statistics

from mechscope.apps.commands.explain import add_latent_options, add_llm_options, latents_from
from mechscope.core.errors import MechscopeError


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `mechscope score` (score explanations on held-out examples) to the CLI.

    Example:
        >>> parser = argparse.ArgumentParser(prog="mechscope")
        >>> register(parser.add_subparsers())
        >>> parser.parse_args(['score', 'out/features.db', '--methods', 'detection']).methods
        'detection'
    """
    parser = subparsers.add_parser("score", help="score explanations on held-out examples")
    parser.add_argument("db", help="feature database with explanations (mechscope explain)")
    add_latent_options(parser)
    parser.add_argument("--methods", default="detection,fuzzing,simulation", help="comma-separated scorers")
    parser.add_argument("--activating", type=int, default=20, help="held-out activating excerpts (detection, fuzzing)")
    parser.add_argument("--non-activating", type=int, default=20, help="held-out non-activating excerpts (detection)")
    parser.add_argument("--simulation", default="6,4", help="activating,non-activating excerpts for simulation")
    add_llm_options(parser)
    parser.add_argument("--json", dest="json_path", default=None, metavar="PATH", help="write the scores as JSON")
    parser.add_argument("--force", action="store_true", help="overwrite files that mechscope did not write")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run `mechscope score`: score each chosen latent's explanation with the methods and print the table; returns 0.

    Example:
        $ mechscope score out/features.db --sample 20 --llm local --json out/scores.json
    """
    from mechscope.features import FeatureDatabase
    from mechscope.features.autointerp import make_client, score_explanation

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    rows = []
    with FeatureDatabase.open(args.db) as db:
        latents = latents_from(args, db)
        client = make_client(args.llm, args.base_url, args.api_key)
        for latent in latents:
            explanations = db.explanations(latent)
            if not explanations:
                raise MechscopeError(f"latent {latent} has no explanation yet; run `mechscope explain` first")
            sim = tuple(int(x) for x in args.simulation.split(","))
            scores = score_explanation(db, explanations[0]["id"], client, methods, seed=args.seed,
                                       n_activating=args.activating, n_non_activating=args.non_activating,
                                       n_simulation=(sim[0], sim[1]))
            row = {"latent": latent, "explanation": explanations[0]["text"], "explainer": explanations[0]["explainer"],
                   **{m: s.value for m, s in scores.items()}}
            rows.append(row)
            print(f"{latent:6d}  " + "  ".join(f"{m} {_fmt(row[m])}" for m in methods) + f"  {row['explanation']}")
        meta = db.meta()
    means = {m: statistics.fmean(v) if (v := [r[m] for r in rows if r[m] is not None]) else None for m in methods}
    print("mean    " + "  ".join(f"{m} {_fmt(means[m])}" for m in methods) + f"  ({len(rows)} latents, {client.name})")
    if args.json_path:
        from mechscope.core.files import write_json

        write_json(args.json_path, {"scorer": client.name, "latents": rows, "means": means,
                                    "provenance": {**meta.get("provenance", {}), "feature_db": str(args.db)}},
                   args.force)
    return 0


def _fmt(value: float | None) -> str:
    return "  n/a" if value is None else f"{value:.3f}"
