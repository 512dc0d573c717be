"""A static HTML view of a pruned attribution graph: hand-written SVG, no scripts, nothing loaded from outside.

Columns are token positions, rows are layers (token embeddings at the bottom, logits at the
top); a node's radius grows with its influence share and a link's opacity with its weight
(red positive, blue negative). Hovering a node shows its label, activation and influence.

Example:
    >>> html = graph_html(doc, title="Dallas")     # doc from circuits.export.graph_json   # doctest: +SKIP
"""

from __future__ import annotations

import html as html_lib
from typing import Any

from mechscope.core.files import MARKER

_W, _H, _PAD = 1100, 760, 60


def graph_html(doc: dict[str, Any], title: str) -> str:
    """The page for a circuit-tracer graph document (`circuits.export.graph_json`)."""
    meta = doc["metadata"]
    tokens = meta["prompt_tokens"]
    n_pos = max(len(tokens), 1)
    layers = [int(n["layer"]) for n in doc["nodes"] if n["layer"] != "E"]
    top = max(layers, default=1)

    def xy(node: dict[str, Any]) -> tuple[float, float]:
        row = -1 if node["layer"] == "E" else int(node["layer"])
        x = _PAD + (node["ctx_idx"] + 0.5) * (_W - 2 * _PAD) / n_pos
        y = _H - _PAD - (row + 1) * (_H - 2 * _PAD) / (top + 1)
        return x, y

    # spread nodes that share a cell so they stay visible
    cells: dict[tuple[Any, int], int] = {}
    pos: dict[str, tuple[float, float]] = {}
    for node in doc["nodes"]:
        key = (node["layer"], node["ctx_idx"])
        k = cells.get(key, 0)
        cells[key] = k + 1
        x, y = xy(node)
        pos[node["node_id"]] = (x + (k % 6 - 2.5) * 7, y + (k // 6) * 7)
    biggest = max((abs(link["weight"]) for link in doc["links"]), default=1.0) or 1.0
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{_W}" height="{_H}" font-family="sans-serif" font-size="11">']
    for link in doc["links"]:
        (x1, y1), (x2, y2) = pos[link["source"]], pos[link["target"]]
        colour = "#c0392b" if link["weight"] > 0 else "#2e6fd1"
        opacity = 0.08 + 0.8 * abs(link["weight"]) / biggest
        parts.append(f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" stroke="{colour}" '
                     f'stroke-opacity="{opacity:.2f}"/>')
    fills = {"embedding": "#7f8c8d", "logit": "#27ae60", "mlp reconstruction error": "#e0a030"}
    for node in doc["nodes"]:
        x, y = pos[node["node_id"]]
        share = node.get("influence")
        radius = 3.0 if share is None else 3.0 + 5.0 * (1.0 - min(float(share), 1.0))
        label = node.get("clerp") or f'{node["feature_type"]} {node["node_id"]}'
        hover = f"{label}; activation {node.get('activation')}; cumulative influence {share}"
        parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{radius:.1f}" fill="{fills.get(node["feature_type"], "#8e44ad")}">'
                     f"<title>{html_lib.escape(hover)}</title></circle>")
    for i, tok in enumerate(tokens):
        x = _PAD + (i + 0.5) * (_W - 2 * _PAD) / n_pos
        parts.append(f'<text x="{x:.1f}" y="{_H - 20}" text-anchor="middle">{html_lib.escape(repr(tok))}</text>')
    parts.append("</svg>")
    scores = doc.get("mechscope", {}).get("scores", {})
    lines = [f"{k}: replacement {v['replacement']:.3f}, completeness {v['completeness']:.3f}" for k, v in scores.items()]
    return "\n".join([
        "<!DOCTYPE html>", MARKER, "<html><head><meta charset='utf-8'>", f"<title>{html_lib.escape(title)}</title>",
        "</head><body>", f"<h2>{html_lib.escape(title)}</h2>", f"<p>{html_lib.escape(meta['prompt'])}</p>",
        f"<p>{len(doc['nodes'])} nodes, {len(doc['links'])} links (node threshold {meta['node_threshold']}, "
        f"edge threshold {meta.get('edge_threshold')}). " + html_lib.escape("; ".join(lines)) + "</p>",
        "<p>Rows: embeddings (bottom), layers, logits (top). Grey: tokens, purple: features, orange: "
        "errors, green: logits. Larger circles: more influence. Red links positive, blue negative.</p>",
        *parts, "</body></html>"])
