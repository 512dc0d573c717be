"""`mechscope dashboard`: serve feature databases, patching results, head tables and graphs on loopback.

Example:
    $ mechscope dashboard out/ --port 8000
    mechscope dashboard: http://127.0.0.1:8000/
    $ mechscope dashboard out/features.db out/patch.json --export-html out/features.html
"""

from __future__ import annotations

import argparse
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `mechscope dashboard` (the local web dashboard over result files) to the CLI.

    Example:
        >>> parser = argparse.ArgumentParser(prog="mechscope")
        >>> register(parser.add_subparsers())
        >>> parser.parse_args(['dashboard', 'out/', '--port', '8000']).port
        8000
    """
    parser = subparsers.add_parser("dashboard", help="local web dashboard over mechscope's result files")
    parser.add_argument("paths", nargs="*", default=["."],
                        help="files or folders holding feature databases (.db) and result JSON (default: .)")
    parser.add_argument("--model", default=None, help="load this model for the live views: prompt (lens, latents per token), attention, steering "
                             "(smollm2-135m, gemma3-270m, a .gguf file, a saved folder or a hub id)")
    parser.add_argument("--tuned-lens", default=None, metavar="PATH",
                        help="a tuned-lens folder (`mechscope lens train`) for the prompt view (needs --model)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="interface to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=0, help="port (default 0: any free port)")
    parser.add_argument("--export-html", default=None, metavar="PATH",
                        help="write one self-contained HTML file with every source instead of serving")
    parser.add_argument("--export-max-mb", type=float, default=100.0, metavar="MB",
                        help="cap of the JSON embedded by --export-html (default 100; 0: no cap): every latent is "
                             "listed, latent pages are embedded in id order until the cap")
    parser.add_argument("--force", action="store_true", help="overwrite files that mechscope did not write")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run `mechscope dashboard`: serve the result files found under the paths, or export them as one HTML file; returns 0.

    Example:
        $ mechscope dashboard out/ --model smollm2-135m          # http://127.0.0.1:PORT, with the live views
        $ mechscope dashboard out/ --export-html out/dashboard.html
    """
    from mechscope.core.errors import BadInputError

    if not 0 <= args.port <= 65535:
        raise BadInputError(f"--port {args.port} is outside 0..65535.")
    try:
        from mechscope.apps.dashboard.api import Sources
        from mechscope.apps.dashboard.server import create_app, serve
        from mechscope.apps.dashboard.standalone import export_html
    except ImportError as err:
        raise BadInputError(f"the dashboard needs its extra: pip install 'mechscope[dashboard]' ({err})") from err
    if args.export_max_mb < 0:
        raise BadInputError(f"--export-max-mb {args.export_max_mb} is negative (0 means no cap).")
    sources = Sources.scan(args.paths)
    if args.export_html:
        cap = args.export_max_mb if args.export_max_mb > 0 else None
        print(f"wrote {export_html(sources, args.export_html, force=args.force, max_mb=cap)}")
        return 0
    model = tuned = None
    if args.tuned_lens and not args.model:
        raise BadInputError("--tuned-lens needs --model (the lens belongs to a model).")
    if args.model:
        from mechscope.core.loading import load_model

        model = load_model(args.model)
        if args.tuned_lens:
            from mechscope.methods.tuned_lens import TunedLens

            tuned = TunedLens.load(args.tuned_lens, model)
    app = create_app(sources, model_name=args.model, model=model, tuned_lens=tuned)
    print(f"{len(sources.infos)} sources under {', '.join(args.paths)}", flush=True)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: listening on {args.host}: anyone who can reach it can read these files", file=sys.stderr)
    serve(app, host=args.host, port=args.port, on_start=lambda url: print(f"mechscope dashboard: {url}", flush=True))
    return 0
