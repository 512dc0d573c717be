"""The JSON the dashboard's views render, as plain dicts: one shape for the API, the exports and the report.

This module needs nothing beyond the standard library, so the report writer can embed views
without the dashboard's extra installed.

Example:
    >>> heads_view("heads", [{"layer": 0, "head": 1, "induction": 0.5}])["n_heads"]
    2
"""

from __future__ import annotations

from typing import Any

HEATMAP_KEYS = ("site", "method", "mode", "by", "labels", "scores", "clean", "corrupt")


def heatmap_view(doc_id: str, result: dict[str, Any]) -> dict[str, Any]:
    """A patching result (`PatchResult.to_dict()` or `mechscope patch --json`) as the patching view reads it."""
    return {"id": doc_id, **{k: result.get(k) for k in HEATMAP_KEYS}}


def heads_view(doc_id: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Head detector rows (`HeadScores.to_json()`) as the heads grid reads them."""
    return {"id": doc_id, "n_layers": 1 + max(r["layer"] for r in rows), "n_heads": 1 + max(r["head"] for r in rows),
            "heads": rows}
