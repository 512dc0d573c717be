"""`mechscope report "PROMPT" --out DIR`: the main job, an HTML + JSON report on one prompt."""

from __future__ import annotations

import argparse
import logging

from mechscope.apps.commands.common import add_model_option, load

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `mechscope report` (one HTML page and its JSON for a prompt) to the CLI.

    Example:
        >>> parser = argparse.ArgumentParser(prog="mechscope")
        >>> register(parser.add_subparsers())
        >>> parser.parse_args(['report', 'The Eiffel Tower is in', '--out', 'out/demo']).out
        'out/demo'
    """
    parser = subparsers.add_parser("report", help="write DIR/report.html and DIR/report.json for a prompt")
    parser.add_argument("prompt")
    parser.add_argument("--out", required=True, help="output folder (new, empty or written by mechscope; else --force)")
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--corrupt", default=None, help="a corrupted prompt (adds a patching section)")
    parser.add_argument("--answer", default=None, help="answer token for the patching section, e.g. ' Paris'")
    parser.add_argument("--wrong", default=None, help="wrong-answer token for the patching section")
    parser.add_argument("--force", action="store_true", help="overwrite files that mechscope did not write")
    add_model_option(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run `mechscope report`: write DIR/report.html and DIR/report.json for the prompt; returns 0.

    Example:
        $ mechscope report "The Eiffel Tower is in the city of" --out out/demo
    """
    from mechscope.apps.output import write_bytes, write_json
    from mechscope.apps.report import render_html, render_json
    from mechscope.apps.report.sections import report_sections
    from mechscope.core.files import claim_output_dir
    from mechscope.core.provenance import provenance

    out = claim_output_dir(args.out, args.force)  # before any work: a foreign folder is refused at once
    model = load(args)
    context = {"prompt": args.prompt, "top_k": args.top_k, "corrupt": args.corrupt,
               "answer": args.answer, "wrong": args.wrong}
    sections = []
    for build in report_sections():
        log.info("report section: %s", build.__name__)
        section = build(model, context)
        if section is not None:
            sections.append(section)
    prov = provenance(model)
    title = f"mechscope report: {args.prompt!r} on {model.cfg.name}"
    write_bytes(out / "report.html", render_html(title, sections, prov).encode(), force=args.force)
    write_json(out / "report.json", render_json(sections, prov, prompt=args.prompt), force=args.force)
    print(f"wrote {out / 'report.html'} and {out / 'report.json'} ({len(sections)} sections)")
    return 0
