"""`mechscope explain`: write an explanation of latents with a language model, into the feature database.

Example:
    $ mechscope explain out/features.db --latents 12,40 --llm local
    $ mechscope explain out/features.db --sample 20 --llm openai:gpt-4o-mini --base-url https://api.openai.com/v1
"""

from __future__ import annotations

import argparse


def add_llm_options(parser: argparse.ArgumentParser) -> None:
    """Add `--llm`, `--base-url` and `--api-key` (the language model that explains or scores) to `parser`.

    Example:
        >>> parser = argparse.ArgumentParser()
        >>> add_llm_options(parser)
        >>> parser.parse_args([]).llm
        'local'
    """
    parser.add_argument("--llm", default="local",
                        help="language model: local (the default model), local:gemma3-270m, or openai:MODEL")
    parser.add_argument("--base-url", default=None,
                        help="OpenAI-compatible endpoint (default: $MECHSCOPE_LLM_BASE_URL or $OPENAI_BASE_URL)")
    parser.add_argument("--api-key", default=None, help="API key (default: $OPENAI_API_KEY)")


def add_latent_options(parser: argparse.ArgumentParser) -> None:
    """Add `--latents`, `--sample` and `--seed` (which latents of a feature database to work on) to `parser`.

    Example:
        >>> parser = argparse.ArgumentParser()
        >>> add_latent_options(parser)
        >>> parser.parse_args(["--latents", "12,40"]).latents
        '12,40'
    """
    parser.add_argument("--latents", default=None, help="comma-separated latent ids")
    parser.add_argument("--sample", type=int, default=None, help="a seeded sample of this many live latents")
    parser.add_argument("--seed", type=int, default=0)


def latents_from(args: argparse.Namespace, db: object) -> list[int]:
    """The latent ids chosen by `--latents` or a seeded `--sample` of the live latents of `db`.

    Example:
        >>> from mechscope.features import FeatureDatabase
        >>> with FeatureDatabase.open("out/features.db") as db:                                # doctest: +SKIP
        ...     latents_from(argparse.Namespace(latents="12,40", sample=None, seed=0), db)
        [12, 40]
    """
    from mechscope.features.autointerp import select_latents

    ids = [int(x) for x in args.latents.split(",") if x.strip()] if args.latents else None
    return select_latents(db, ids, args.sample, args.seed)  # type: ignore[arg-type]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `mechscope explain` (explain latents of a feature database with a language model) to the CLI.

    Example:
        >>> parser = argparse.ArgumentParser(prog="mechscope")
        >>> register(parser.add_subparsers())
        >>> parser.parse_args(['explain', 'out/features.db', '--sample', '20']).sample
        20
    """
    parser = subparsers.add_parser("explain", help="explain latents of a feature database with a language model")
    parser.add_argument("db", help="feature database (mechscope features collect)")
    add_latent_options(parser)
    parser.add_argument("--examples", type=int, default=10, help="top examples shown to the explainer")
    add_llm_options(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run `mechscope explain`: write an explanation of each chosen latent into the database; returns 0.

    Example:
        $ mechscope explain out/features.db --sample 20 --seed 0 --llm local
        $ mechscope explain out/features.db --latents 12,40 --llm openai:gpt-4o-mini
    """
    from mechscope.features import FeatureDatabase
    from mechscope.features.autointerp import explain_latent, make_client

    with FeatureDatabase.open(args.db) as db:
        latents = latents_from(args, db)
        client = make_client(args.llm, args.base_url, args.api_key)
        for latent in latents:
            eid = explain_latent(db, latent, client, args.examples)
            text = db.con.execute("SELECT text FROM explanations WHERE id = ?", (eid,)).fetchone()[0]
            print(f"{latent:6d}  [{eid}]  {text}")
    return 0
