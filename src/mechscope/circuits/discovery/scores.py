"""`EdgeScores`: one number per edge of a component graph, with how it was made; saved as safetensors + JSON.

Score convention: the effect an edge carries, `metric(all edges) - metric(without this
edge)`, estimated (EAP, EAP-IG) or measured (exact, ACDC thresholds). Positive edges
support the clean answer.

Example:
    >>> scores.top(5)                                     # doctest: +SKIP
    [('a9.h8->logits', 0.41), ...]
    >>> scores.save("scores")                # scores.safetensors + scores.json  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save
from torch import Tensor

from mechscope.circuits.discovery.component_graph import ComponentGraph
from mechscope.core.errors import MechscopeError
from mechscope.core.files import check_writable, write_bytes, write_json


@dataclass
class EdgeScores:
    """Scores [n_dests, n_sources] (zero where no edge) of `graph`, from `method`.

    Example:
        >>> g = ComponentGraph(n_layers=2, n_heads=1)
        >>> scores = EdgeScores(g, masked(g, torch.ones(g.n_dests, g.n_sources)), "example")
        >>> scores.scores[g.edge_index("a1.h0->logits")] = 5.0
        >>> scores.top(1)
        [('a1.h0->logits', 5.0)]
    """

    graph: ComponentGraph
    scores: Tensor
    method: str
    info: dict[str, Any] = field(default_factory=dict)

    def edge_values(self) -> Tensor:
        """Scores of every edge [n_edges], in `graph.edges` order."""
        e = self.graph.edges
        return self.scores[e[:, 0], e[:, 1]]

    def top(self, n: int = 10, absolute: bool = True) -> list[tuple[str, float]]:
        """The `n` highest-scoring edges by |score| (or by signed score) as (name, score)."""
        values = self.edge_values()
        order = (values.abs() if absolute else values).argsort(descending=True)[:n]
        edges = self.graph.edges
        return [(self.graph.edge_name(int(edges[i, 0]), int(edges[i, 1])), float(values[i])) for i in order]

    def to_dict(self, n_top: int = 50) -> dict[str, Any]:
        return {"method": self.method, "graph": self.graph.to_dict(), **self.info,
                "top_edges": [{"edge": e, "score": s} for e, s in self.top(n_top)]}

    def save(self, stem: str | Path, provenance: dict[str, Any], force: bool = False) -> tuple[Path, Path]:
        """`stem.safetensors` (the score matrix) and `stem.json` (graph, method, node names)."""
        stem = Path(stem)
        check_writable(stem.with_suffix(".json"), force)  # refuse before writing either file
        tensors = {"scores": self.scores.detach().float().contiguous().cpu()}
        meta = {"method": self.method, "format": "mechscope.edge_scores/1"}
        st = write_bytes(stem.with_suffix(".safetensors"), save(tensors, metadata=meta), force=force)
        body = {**self.to_dict(), "format": "mechscope.edge_scores/1", "source_names": self.graph.source_names,
                "dest_names": self.graph.dest_names, "layout": "scores[dest, source]; zero where no edge",
                "provenance": provenance}
        js = write_json(stem.with_suffix(".json"), body, force=force)
        return st, js

    @classmethod
    def load(cls, stem: str | Path) -> EdgeScores:
        """Read what `save` wrote."""
        import json

        stem = Path(stem)
        try:
            meta = json.loads(stem.with_suffix(".json").read_text())
            scores = load_file(str(stem.with_suffix(".safetensors")))["scores"]
        except (OSError, ValueError, KeyError) as err:
            raise MechscopeError(f"Cannot read edge scores at {stem}: {err}") from err
        g = meta["graph"]
        graph = ComponentGraph(g["n_layers"], g["n_heads"], g["has_mlp"], g["parallel"])
        info = {k: v for k, v in meta.items() if k not in ("method", "graph", "top_edges", "source_names",
                                                         "dest_names", "layout", "provenance", "format")}
        return cls(graph, scores, meta["method"], info)


def masked(graph: ComponentGraph, scores: Tensor) -> Tensor:
    """`scores` with zeros where there is no edge.

    Example:
        >>> g = ComponentGraph(n_layers=1, n_heads=1)
        >>> int(masked(g, torch.ones(g.n_dests, g.n_sources)).sum()) == g.n_edges
        True
    """
    return torch.where(graph.valid.to(scores.device), scores, torch.zeros((), dtype=scores.dtype))
