"""One self-contained HTML file: the dashboard's own ES modules inlined, with the API's JSON embedded.

The embedded JSON is keyed by API path and equals what the server answers for that path, and
the front-end's `makeSource()` reads it instead of fetching, so the file renders the same views
from disk with no server and no network. Each feature database travels as a table of all its
latents (`table_key`): the browser answers list pages (same order as the server's) and searches
(the same words matched, ranked by how often they occur) from it. Latent pages are embedded up to a
size cap (`max_mb`); the pages past it say that the cap stopped them.

Example:
    >>> export_html(Sources.scan(["out/"]), "out/dashboard.html")   # doctest: +SKIP
    PosixPath('out/dashboard.html')
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mechscope.core.errors import MechscopeError
from mechscope.core.files import MARKER, write_text

if TYPE_CHECKING:  # the API needs the dashboard extra (pydantic); the report embeds views without it
    from mechscope.apps.dashboard.api import FeatureSource, Sources

STATIC = Path(__file__).parent / "static"
# Dependencies first: each module only uses names exported by the ones before it.
MODULES = ("util.js", "source.js", "features.js", "patching.js", "heads.js", "graph.js", "prompt.js", "steer.js",
           "mount.js", "app.js")
DEFAULT_MAX_MB = 100.0  # embedded JSON of an export, by default
TABLE_CHUNK = 500  # latents read per query while building a table


def bundle() -> str:
    """The modules as one module script: `import` lines dropped, `export` keywords removed.

    Example:
        >>> bundle().startswith("// --- util.js")
        True
    """
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
    """The views' style sheet (without the app's page layout).

    Example:
        >>> "{" in views_css()
        True
    """
    return (STATIC / "style.css").read_text(encoding="utf-8")


def embedded_scripts(data: dict[str, Any]) -> str:
    """The data block and the inlined modules: appended to a page, they render its views from `data`.

    Example:
        >>> embedded_scripts({"/api/sources": {"sources": []}}).startswith('<script type="application/json"')
        True
    """
    return (f'<script type="application/json" id="mechscope-data">{_dump(data)}</script>\n'
            f'<script type="module">\n{bundle()}\n</script>\n')


def standalone_html(data: dict[str, Any], title: str = "mechscope", start: str = "#/") -> str:
    """An HTML document rendering `data` ({API path: response JSON}) with the dashboard's views.

    Example:
        >>> "<title>demo</title>" in standalone_html({}, title="demo")
        True
    """
    css = (STATIC / "base.css").read_text(encoding="utf-8") + views_css()
    return (f'<!doctype html>\n{MARKER}\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{_escape(title)}</title>\n'
            f'<link rel="icon" href="data:,">\n<style>\n{css}</style>\n</head>\n<body>\n'
            f'<header><a href="#/" class="brand">mechscope</a><nav id="nav"></nav></header>\n'
            f'<main id="app">Loading…</main>\n'
            f'<script>if (!location.hash) location.hash = {json.dumps(start)};</script>\n'
            f'{embedded_scripts(data)}</body>\n</html>\n')


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def latent_table(fs: FeatureSource) -> dict[str, Any]:
    """Every latent of a feature database as compact rows, what the export pages and searches in the browser:
    `[latent, n_fired, density, max_act, score, explanation, indexed explanations or None, top tokens]`
    (the list page's columns, then the text the database's full-text index holds).

    Example:
        >>> from mechscope.apps.dashboard.api import Sources
        >>> table = latent_table(Sources.scan(["out/features.db"]).features["features"])   # doctest: +SKIP
    """
    rows: list[list[Any]] = []
    total = len(fs.ids)
    for offset in range(0, total, TABLE_CHUNK):
        page = fs.page("", "latent", "asc", offset, TABLE_CHUNK)
        rows.extend([r.latent, r.n_fired, r.density, r.max_act, r.score, r.explanation, None, ""] for r in page.rows)
    with fs.lock:
        indexed = fs.db.con.execute("SELECT latent, explanations, top_tokens FROM features_fts").fetchall()
    by_latent = {row[0]: row for row in rows}
    for latent, explanations, top_tokens in indexed:
        row = by_latent[int(latent)]
        row[6] = explanations if explanations and explanations != row[5] else None
        row[7] = top_tokens or ""
    return {"total": total, "rows": rows}


def _size(value: Any) -> int:
    return len(_dump(value).encode("utf-8"))


def export_data(sources: Sources, max_mb: float | None = DEFAULT_MAX_MB) -> dict[str, Any]:
    """The API answers the export embeds (see the module docstring), within `max_mb` megabytes of JSON.

    Every latent of every database is listed (paged, sorted and searched in the browser); the pages of
    latents that graph nodes link to come next, then every latent's page in id order while the budget
    lasts (None: no cap). Where the cap stops them, the database's table records `pages` (how many,
    latents 0..pages-1) and `max_mb`, and the pages say so. A budget too small for the lists is refused.

    Example:
        >>> from mechscope.apps.dashboard.api import Sources
        >>> export_data(Sources.scan(["."]))["/api/sources"]["sources"]
        []
    """
    budget = None if max_mb is None else int(max_mb * 1e6)
    data: dict[str, Any] = {"/api/sources": {"sources": [i.model_dump() for i in sources.infos], "model": None}}
    for doc_id, (kind, _) in sources.documents.items():
        model = {"patch": sources.heatmap, "heads": sources.heads, "graph": sources.graph}[kind](doc_id)
        data[f"/api/{kind}/{doc_id}"] = model.model_dump()
    tables = {db_id: latent_table(fs) for db_id, fs in sources.features.items()}
    for db_id, table in tables.items():
        data[table_key(db_id)] = {"db": db_id, **table, "pages": table["total"], "max_mb": max_mb}
    used = _size(data)
    if budget is not None and used > budget:
        raise MechscopeError(f"the latent lists and results alone take {used / 1e6:.1f} MB, above the export's cap "
                             f"of {max_mb} MB; raise the cap (--export-max-mb) or export fewer databases")
    for doc_id, (kind, _) in sources.documents.items():  # graph nodes' latents first: the hover cards need them
        if kind == "graph":
            for node in data[f"/api/graph/{doc_id}"]["nodes"]:
                if node.get("db") is not None and 0 <= node["latent"] < len(sources.features[node["db"]].ids):
                    used += _add_detail(data, sources, node["db"], node["latent"])
    for db_id, fs in sources.features.items():
        for latent in range(len(fs.ids)):
            if f"/api/features/{db_id}/latents/{latent}" in data:
                continue
            detail = fs.detail(db_id, latent).model_dump()
            cost = _size(detail) + len(db_id) + 40
            if budget is not None and used + cost > budget:
                data[table_key(db_id)]["pages"] = latent
                break
            data[f"/api/features/{db_id}/latents/{latent}"] = detail
            used += cost
    return data


def _add_detail(data: dict[str, Any], sources: Sources, db_id: str, latent: int) -> int:
    key = f"/api/features/{db_id}/latents/{latent}"
    if key in data:
        return 0
    data[key] = sources.feature_source(db_id).detail(db_id, latent).model_dump()
    return _size(data[key]) + len(key)


def table_key(db_id: str) -> str:
    """Where an export keeps the latent table of database `db_id` (not an API path: the server has no such route).

    Example:
        >>> table_key("features")
        '/export/features/features'
    """
    return f"/export/features/{db_id}"


def export_html(sources: Sources, path: str | Path, force: bool = False,
                max_mb: float | None = DEFAULT_MAX_MB) -> Path:
    """Write the self-contained dashboard of `sources` to `path` (never over a foreign file unless `force`),
    its embedded JSON capped at `max_mb` megabytes (`export_data`).

    Example:
        >>> from mechscope.apps.dashboard.api import Sources
        >>> export_html(Sources.scan(["."]), "dashboard.html").name
        'dashboard.html'
    """
    return write_text(path, standalone_html(export_data(sources, max_mb)), force)
