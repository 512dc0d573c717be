"""A static HTML page of an attribution graph, drawn by the dashboard's own graph view.

The page is `dashboard.standalone.standalone_html` with the graph's view JSON embedded: columns are
token positions, rows are layers (embeddings at the bottom, logits on top), node size grows with
influence, edges are coloured by sign; hovering a feature node shows its top examples when one of
the given feature databases was collected over that layer's transcoder (matched by the
`dictionary_sha256` the graph records per layer), and says so when none was. It opens from disk
with no server and loads nothing from elsewhere.

Example:
    >>> html = graph_html(doc, title="Dallas", databases=["out/l3.db"])  # doc from graph_json  # doctest: +SKIP
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mechscope.apps.dashboard.standalone import standalone_html
from mechscope.apps.dashboard.views import graph_view, latent_detail_view, open_read_only
from mechscope.core.errors import MechscopeError
from mechscope.features.database import is_feature_database

GRAPH_ID = "graph"


def graph_data(doc: dict[str, Any], databases: Sequence[str | Path] = ()) -> dict[str, Any]:
    """The JSON the page embeds ({API path: answer}): the graph placed for the view, and the pages of
    the latents its nodes link to in `databases` (feature database files).

    Example:
        >>> doc = {"metadata": {"prompt_tokens": ["Hi"]}, "links": [], "nodes": [
        ...     {"node_id": "E_26_0", "feature_type": "embedding", "layer": "E", "ctx_idx": 0},
        ...     {"node_id": "0_12_0", "feature_type": "cross layer transcoder", "layer": "0", "ctx_idx": 0},
        ...     {"node_id": "1_99_0", "feature_type": "logit", "layer": "1", "ctx_idx": 0}]}
        >>> graph_data(doc)["/api/graph/graph"]["col_labels"]
        ['Hi']
    """
    dbs, sha_to_id, infos = {}, {}, [{"id": GRAPH_ID, "kind": "graph", "name": "graph", "detail": {}}]
    for path in map(Path, databases):
        if not is_feature_database(path):
            raise MechscopeError(f"{path} is not a mechscope feature database (write one with `mechscope features collect`)")
        stem = re.sub(r"[^A-Za-z0-9_.-]", "_", path.stem)[:60] or "features"
        db_id = f"{stem}-{len(dbs)}" if stem in dbs or stem == GRAPH_ID else stem
        dbs[db_id] = open_read_only(path)
        meta = dbs[db_id].meta()
        if meta.get("dictionary_sha256"):
            sha_to_id.setdefault(meta["dictionary_sha256"], db_id)
        infos.append({"id": db_id, "kind": "features", "name": path.name,
                      "detail": {k: meta.get(k) for k in ("d_sae", "model", "hook_name", "n_tokens", "dictionary_sha256")}})
    view = graph_view(GRAPH_ID, doc, sha_to_id)
    data: dict[str, Any] = {"/api/sources": {"sources": infos, "model": None}, f"/api/graph/{GRAPH_ID}": view}
    for node in view["nodes"]:
        if node.get("db") is not None:
            db = dbs[node["db"]]
            if 0 <= node["latent"] < db.d_sae:
                data[f"/api/features/{node['db']}/latents/{node['latent']}"] = latent_detail_view(
                    node["db"], db, node["latent"], [float(x) for x in db.meta().get("hist_edges", [])])
    for db in dbs.values():
        db.con.close()
    return data


def graph_html(doc: dict[str, Any], title: str, databases: Sequence[str | Path] = ()) -> str:
    """The page for a circuit-tracer graph document (`circuits.export.graph_json`), hover examples from `databases`.

    Example:
        >>> doc = {"metadata": {"prompt_tokens": ["Hi"]}, "links": [], "nodes": [
        ...     {"node_id": "E_26_0", "feature_type": "embedding", "layer": "E", "ctx_idx": 0},
        ...     {"node_id": "0_12_0", "feature_type": "cross layer transcoder", "layer": "0", "ctx_idx": 0},
        ...     {"node_id": "1_99_0", "feature_type": "logit", "layer": "1", "ctx_idx": 0}]}
        >>> graph_html(doc, title="Hi").startswith("<!doctype html>")
        True
    """
    return standalone_html(graph_data(doc, databases), title=title, start=f"#/graph/{GRAPH_ID}")
