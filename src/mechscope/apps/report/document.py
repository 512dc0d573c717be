"""Assembling sections into one self-contained HTML page and one JSON document."""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import Any

from mechscope.apps.output import MARKER

_STYLE = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.5em} h2{font-size:1.2em;border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;font-size:.9em} td,th{border:1px solid #ddd;padding:.25em .6em;text-align:left}
th{background:#f5f5f5} code,.tok{font-family:ui-monospace,monospace;background:#f3f3f3;padding:0 .2em}
img{max-width:100%} .prov{font-size:.8em;color:#666}
"""


@dataclass
class Section:
    """One part of the report: a title, an HTML fragment and the JSON that holds its numbers.

    Example:
        >>> Section("tokens", "Tokens", "<p>2 tokens</p>", {"tokens": ["Hi", "!"]}).data["tokens"]
        ['Hi', '!']
    """

    key: str
    title: str
    html: str
    data: dict[str, Any] = field(default_factory=dict)
    views: dict[str, Any] = field(default_factory=dict)  # {dashboard API path: JSON} for interactive views


def view_box(kind: str, view_id: str) -> str:
    """A place in a section's HTML where the dashboard's `kind` view (`patch`, `heads`, `graph`) renders.

    Example:
        >>> view_box("patch", "report-patching")
        '<div data-mechscope-view="patch" data-id="report-patching"></div>'
    """
    return f'<div data-mechscope-view="{html.escape(kind)}" data-id="{html.escape(view_id)}"></div>'


def render_html(title: str, sections: list[Section], provenance: dict[str, Any]) -> str:
    """A standalone HTML page (inline CSS, images as data URIs) with one <section> per Section.

    Sections with `views` also get the dashboard's own modules and their JSON inlined: the same
    renderer as `mechscope dashboard`, reading the page instead of the server.

    Example:
        >>> page = render_html("demo", [Section("tokens", "Tokens", "<p>2 tokens</p>")], {"model": "smollm2-135m"})
        >>> page.count("<section")
        1
    """
    body = "\n".join(
        f'<section id="{html.escape(s.key)}"><h2>{html.escape(s.title)}</h2>\n{s.html}\n</section>' for s in sections
    )
    prov = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in provenance.items())
    views = {path: value for s in sections for path, value in s.views.items()}
    style, scripts = _STYLE, ""
    if views:
        from mechscope.apps.dashboard.standalone import embedded_scripts, views_css

        style, scripts = _STYLE + views_css(), embedded_scripts(views)
    return (
        f"<!DOCTYPE html>\n{MARKER}\n<html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{style}</style></head><body><h1>{html.escape(title)}</h1>\n{body}\n"
        f"<h2>Provenance</h2><table class='prov'>{prov}</table>{scripts}</body></html>\n"
    )


def render_json(sections: list[Section], provenance: dict[str, Any], **top: Any) -> dict[str, Any]:
    """`{**top, "sections": {key: data}, "provenance": ...}`.

    Example:
        >>> render_json([Section("tokens", "Tokens", "", {"n": 2})], {"model": "smollm2-135m"}, prompt="Hi")["sections"]
        {'tokens': {'n': 2}}
    """
    return {**top, "sections": {s.key: s.data for s in sections}, "provenance": provenance}
