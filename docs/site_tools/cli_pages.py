"""Write docs/cli.md: every `mechscope` command's `--help`, subcommands included.

Run `python docs/site_tools/cli_pages.py` after changing a command; `tests/test_docs.py`
fails when the page and the live `--help` output disagree.

Example:
    >>> text = render()           # doctest: +SKIP
    >>> text.startswith("# Command-line reference")  # doctest: +SKIP
    True
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from mechscope.apps.cli import build_parser

PAGE = Path(__file__).resolve().parents[1] / "cli.md"
INTRO = """# Command-line reference

Every command's `--help`, generated from the parser by `docs/site_tools/cli_pages.py`
(a test fails when this page is out of date). Commands that write files refuse to replace a
file mechscope did not write unless you pass `--force`; commands that compute a result take
`--json PATH` (and usually `--png` / `--html`). The [how-to guide](howto.md) shows them in use.
"""


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _help(parser: argparse.ArgumentParser) -> str:
    return parser.format_help().rstrip()


def render() -> str:
    """The page's Markdown: one section per command, one subsection per subcommand."""
    os.environ["COLUMNS"] = "100"  # argparse wraps to the terminal width; fix it so the page is stable
    root = build_parser()
    parts = [INTRO, "```text", _help(root), "```", ""]
    for name, sub in sorted(_subparsers(root).items()):
        parts += [f"## mechscope {name}", "", "```text", _help(sub), "```", ""]
        for child, parser in sorted(_subparsers(sub).items()):
            parts += [f"### mechscope {name} {child}", "", "```text", _help(parser), "```", ""]
    return "\n".join(parts)


if __name__ == "__main__":
    PAGE.write_text(render())
    print(f"wrote {PAGE}", file=sys.stderr)
