"""The JSON the dashboard's views render, as plain dicts: one shape for the API, the exports and the report.

This module needs nothing beyond the standard library, so the report writer and the static
graph page can embed views without the dashboard's extra installed.

Example:
    >>> heads_view("heads", [{"layer": 0, "head": 1, "induction": 0.5}])["n_heads"]
    2
"""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path
from typing import Any

from mechscope.core.errors import MechscopeError
from mechscope.features.database import FeatureDatabase

HEATMAP_KEYS = ("site", "method", "mode", "by", "labels", "scores", "clean", "corrupt")
EXAMPLE_KEYS = ("kind", "rank", "interval", "token_index", "context", "position", "center", "act", "tokens", "text",
                "acts")
NOT_FEATURES = ("embedding", "logit", "mlp reconstruction error")


def heatmap_view(doc_id: str, result: dict[str, Any]) -> dict[str, Any]:
    """A patching result (`PatchResult.to_dict()` or `mechscope patch --json`) as the patching view reads it.

    Example:
        >>> heatmap_view("patch", {"site": "resid_pre", "by": ["layer"], "scores": [0.1, 0.9]})["site"]
        'resid_pre'
    """
    return {"id": doc_id, **{k: result.get(k) for k in HEATMAP_KEYS}}


def heads_view(doc_id: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Head detector rows (`HeadScores.to_json()`) as the heads grid reads them.

    Example:
        >>> heads_view("heads", [{"layer": 1, "head": 2, "induction": 0.8}])["n_layers"]
        2
    """
    return {"id": doc_id, "n_layers": 1 + max(r["layer"] for r in rows), "n_heads": 1 + max(r["head"] for r in rows),
            "heads": rows}


# -- feature databases ---------------------------------------------------------------------------
def open_read_only(path: str | Path) -> FeatureDatabase:
    """A feature database opened with SQLite's `mode=ro` (usable from the server's threads).

    Example:
        >>> db = open_read_only("out/features.db")                            # doctest: +SKIP
        >>> db.d_sae                                                         # doctest: +SKIP
        9216
    """
    path = Path(path)
    con = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False)
    return FeatureDatabase(con, path)


def latent_detail_view(db_id: str, db: FeatureDatabase, latent: int, hist_edges: list[float]) -> dict[str, Any]:
    """Everything the feature page shows of `latent`: `FeatureDatabase.latent` and `.examples`, as the API answers.

    Example:
        >>> db = open_read_only("out/features.db")                            # doctest: +SKIP
        >>> latent_detail_view("features", db, 12, db.meta()["hist_edges"])["stats"]["n_fired"]   # doctest: +SKIP
    """
    info = db.latent(latent)
    examples = {kind: [{k: e[k] for k in EXAMPLE_KEYS} for e in db.examples(latent, kind)]
                for kind in ("top", "interval", "random")}
    stats = {k: info[k] for k in ("n_fired", "density", "max_act", "mean_act", "sum_act", "decoder_norm")}
    return {"db": db_id, "latent": latent, "stats": stats, "hist": info["hist"], "hist_edges": hist_edges,
            "logits_positive": info["logits_positive"], "logits_negative": info["logits_negative"],
            "decoder_cosine": info["decoder_cosine"], "cooccurrence": info["cooccurrence"],
            "explanations": info["explanations"], "examples": examples}


# -- graphs --------------------------------------------------------------------------------------
def graph_view(doc_id: str, doc: dict[str, Any], databases: dict[str, str] | None = None) -> dict[str, Any]:
    """A circuit-tracer graph document or a `mechscope circuit --json` record, placed for the graph view.

    `databases` maps a dictionary's sha256 to the id of a feature database collected over it: a
    graph's layer is linked to the database whose `dictionary_sha256` equals the one the graph
    records for that layer (`mechscope.dictionaries`, written by `circuits.export.graph_json`).

    Example:
        >>> record = {"circuit": {"edges": [{"edge": "a0.h1->m0", "score": 0.5}, {"edge": "m0->logits", "score": -0.2}]}}
        >>> graph_view("c", record)["kind"]
        'circuit'
    """
    if "nodes" in doc:
        return attribution_view(doc_id, doc, databases or {})
    return circuit_view(doc_id, doc)


def _layer_row(layer: str, n_layers: int) -> int:
    """circuit-tracer layers: "E" (embeddings) below layer 0, logits (layer n_layers + 1... ) on top."""
    return 0 if layer == "E" else min(int(layer) + 1, n_layers + 1)


def attribution_view(doc_id: str, d: dict[str, Any], databases: dict[str, str]) -> dict[str, Any]:
    """A circuit-tracer graph placed by token position (column) and layer (row); each feature node
    gets its `latent` and the `db` holding that latent's examples (None where none is linked).

    Example:
        >>> doc = {"metadata": {"prompt_tokens": ["Hi"]}, "links": [], "nodes": [
        ...     {"node_id": "E_26_0", "feature_type": "embedding", "layer": "E", "ctx_idx": 0},
        ...     {"node_id": "0_12_0", "feature_type": "cross layer transcoder", "layer": "0", "ctx_idx": 0},
        ...     {"node_id": "1_99_0", "feature_type": "logit", "layer": "1", "ctx_idx": 0}]}
        >>> view = attribution_view("g", doc, {})
        >>> view["row_labels"], view["nodes"][1]["latent"]
        (['emb', 'L0', 'logit'], 12)
    """
    numeric = [int(n["layer"]) for n in d["nodes"] if n["feature_type"] not in ("embedding", "logit")]
    n_layers = 1 + max(numeric, default=0)
    links = [{"layer": int(x["layer"]), "dictionary_sha256": x.get("dictionary_sha256"),
              "db": databases.get(x["dictionary_sha256"]) if x.get("dictionary_sha256") else None}
             for x in d.get("mechscope", {}).get("dictionaries", [])]
    by_layer = {x["layer"]: x["db"] for x in links}
    nodes = []
    for n in d["nodes"]:
        node = {**n, "row": _layer_row(n["layer"], n_layers) if n["feature_type"] != "logit" else n_layers + 1,
                "col": int(n["ctx_idx"])}
        if n["feature_type"] not in NOT_FEATURES:
            node["latent"] = int(str(n["node_id"]).split("_")[1])
            node["db"] = by_layer.get(int(n["layer"]))
        nodes.append(node)
    tokens = [str(t) for t in d["metadata"].get("prompt_tokens", [])]
    return {"id": doc_id, "kind": "attribution", "metadata": d["metadata"], "nodes": nodes, "links": d["links"],
            "row_labels": ["emb", *[f"L{i}" for i in range(n_layers)], "logit"], "col_labels": tokens,
            "dictionaries": links}


def _component(name: str, n_layers: int) -> tuple[int, int, str]:
    """(row, col, type) of a component node: `input`, `a{l}.h{h}`, `m{l}`, `logits`."""
    if name == "input":
        return 0, 0, "input"
    if name == "logits":
        return 2 * n_layers + 1, 0, "logits"
    match = re.fullmatch(r"a(\d+)\.h(\d+)", name)
    if match:
        return 1 + 2 * int(match[1]), int(match[2]), "attention head"
    match = re.fullmatch(r"m(\d+)", name)
    if match:
        return 2 + 2 * int(match[1]), 0, "mlp"
    raise MechscopeError(f"unknown circuit node {name!r}")


def circuit_view(doc_id: str, d: dict[str, Any]) -> dict[str, Any]:
    """A `mechscope circuit --json` record: components by layer (rows: attention, then MLP) and head (column).

    Example:
        >>> record = {"circuit": {"edges": [{"edge": "a0.h1->m0", "score": 0.5}, {"edge": "m0->logits", "score": -0.2}]}}
        >>> circuit_view("c", record)["row_labels"]
        ['input', 'attn 0', 'mlp 0', 'logits']
    """
    info = d.get("graph", {})
    n_layers = int(info.get("n_layers", 0))
    links, influence = [], {}
    for edge in d["circuit"]["edges"]:
        src, _, dst = edge["edge"].partition("->")
        dst = re.sub(r"\.[qkv]$", "", dst)
        links.append({"source": src, "target": dst, "weight": edge["score"]})
        for node in (src, dst):
            influence[node] = influence.get(node, 0.0) + abs(edge["score"])
    if not n_layers:
        n_layers = 1 + max((int(m) for n in influence for m in re.findall(r"^[am](\d+)", n)), default=0)
    nodes = []
    for name, value in influence.items():
        row, col, kind = _component(name, n_layers)
        nodes.append({"node_id": name, "feature_type": kind, "influence": value, "layer": str(row), "row": row,
                      "col": col, "clerp": name, "activation": None})
    rows = ["input"] + [x for layer in range(n_layers) for x in (f"attn {layer}", f"mlp {layer}")] + ["logits"]
    n_heads = int(info.get("n_heads", 1 + max((n["col"] for n in nodes), default=0)))
    metadata = {k: d.get(k) for k in ("task", "method", "n_pairs")} | {"evaluation": {
        k: v for k, v in d["circuit"].items() if k not in ("nodes", "edges")}}
    return {"id": doc_id, "kind": "circuit", "metadata": metadata, "nodes": nodes, "links": links, "row_labels": rows,
            "col_labels": [f"h{h}" for h in range(n_heads)], "dictionaries": []}
