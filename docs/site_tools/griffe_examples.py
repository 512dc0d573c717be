"""Griffe extension for the API pages: read mechscope's `Example:` sections as examples.

mechscope's docstrings head their doctests `Example:`; Griffe's Google parser knows only
`Examples:` and would render the doctest lines as Markdown (where `x[0][1]` reads as a
link). This renames the heading before parsing; the source files are left as they are.

Example:
    >>> # mkdocs.yml, plugins.mkdocstrings.handlers.python.options:
    >>> # extensions: [docs/site_tools/griffe_examples.py]
"""

from __future__ import annotations

import re
from typing import Any

import griffe

HEADING = re.compile(r"^(\s*)Example:\s*$", re.MULTILINE)


class ExampleHeadings(griffe.Extension):
    """Rewrite `Example:` section headings to `Examples:` in every docstring."""

    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = HEADING.sub(r"\1Examples:", obj.docstring.value)
