"""One self-contained HTML file: the dashboard's own ES modules inlined, with the API's JSON embedded.

The embedded JSON is keyed by API path and equals what the server answers for that path, and
the front-end's `makeSource()` reads it instead of fetching, so the file renders the same views
from disk with no server and no network.

Example:
    >>> export_html(Sources.scan(["out/"]), "out/dashboard.html")   # doctest: +SKIP
    PosixPath('out/dashboard.html')
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mechscope.core.files import MARKER, write_text

if TYPE_CHECKING:  # the API needs the dashboard extra (pydantic); the report embeds views without it
    from mechscope.apps.dashboard.api import Sources

STATIC = Path(__file__).parent / "static"
# Dependencies first: each module only uses names exported by the ones before it.
MODULES = ("util.js", "source.js", "features.js", "patching.js", "heads.js", "graph.js", "prompt.js", "steer.js",
           "mount.js", "app.js")
PAGE = 50  # rows of the list pages embedded (the front-end's page size)
SORTS = (("latent", "asc"), ("density", "desc"), ("max_act", "desc"), ("score", "desc"))


def bundle() -> str:
    """The modules as one module script: `import` lines dropped, `export` keywords removed."""
    parts = []
    for name in MODULES:
        text = (STATIC / name).read_text(encoding="utf-8")
        text = re.sub(r"^import .*?;\n", "", text, flags=re.MULTILINE)
        parts.append(f"// --- {name}\n" + re.sub(r"^export ", "", text, flags=re.MULTILINE))
    return "\n".join(parts)


def _dump(value: Any) -> str:
    # "<" escaped so no "</script>" can close the data block early.
    return json.dumps(value, separators=(",", ":"), allow_nan=False).replace("<", "\\u003c")


def views_css() -> str:
    """The views' style sheet (without the app's page layout)."""
    return (STATIC / "style.css").read_text(encoding="utf-8")


def embedded_scripts(data: dict[str, Any]) -> str:
    """The data block and the inlined modules: appended to a page, they render its views from `data`."""
    return (f'<script type="application/json" id="mechscope-data">{_dump(data)}</script>\n'
            f'<script type="module">\n{bundle()}\n</script>\n')


def standalone_html(data: dict[str, Any], title: str = "mechscope", start: str = "#/") -> str:
    """An HTML document rendering `data` ({API path: response JSON}) with the dashboard's views."""
    css = (STATIC / "base.css").read_text(encoding="utf-8") + views_css()
    return (f'<!doctype html>\n{MARKER}\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{_escape(title)}</title>\n'
            f'<link rel="icon" href="data:,">\n<style>\n{css}</style>\n</head>\n<body>\n'
            f'<header><a href="#/" class="brand">mechscope</a><nav id="nav"></nav></header>\n'
            f'<main id="app">Loading…</main>\n'
            f'<script>if (!location.hash) location.hash = {json.dumps(start)};</script>\n'
            f'{embedded_scripts(data)}</body>\n</html>\n')


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def export_data(sources: Sources, latents_per_db: int = 200) -> dict[str, Any]:
    """The API answers the export embeds: every source, first pages of each sort, and their latents' pages."""
    data: dict[str, Any] = {"/api/sources": {"sources": [i.model_dump() for i in sources.infos], "model": None}}
    for db_id, fs in sources.features.items():
        latents: dict[int, None] = {}
        for sort, order in SORTS:
            page = fs.page(db_id, sort, order, 0, PAGE)
            data[f"/api/features/{db_id}/latents?sort={sort}&order={order}&offset=0&limit={PAGE}"] = page.model_dump()
            latents.update(dict.fromkeys(r.latent for r in page.rows))
        for latent in list(latents)[:latents_per_db]:
            data[f"/api/features/{db_id}/latents/{latent}"] = fs.detail(db_id, latent).model_dump()
    for doc_id, (kind, _) in sources.documents.items():
        model = {"patch": sources.heatmap, "heads": sources.heads, "graph": sources.graph}[kind](doc_id)
        data[f"/api/{kind}/{doc_id}"] = model.model_dump()
    return data


def export_html(sources: Sources, path: str | Path, force: bool = False) -> Path:
    """Write the self-contained dashboard of `sources` to `path` (never over a foreign file unless `force`)."""
    return write_text(path, standalone_html(export_data(sources)), force)
