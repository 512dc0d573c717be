"""ROC curves of edge or node scores against a known circuit, and the area under them.

Items are ranked by score (higher = more likely in the circuit); each distinct score value
is one threshold, so tied items enter together. The curve runs from (0, 0) (nothing
selected) to (1, 1) (everything selected); the area is the trapezoid rule over it, which
equals the probability that a random circuit item outranks a random other item (ties
counting one half).

Example:
    >>> r = roc(torch.tensor([0.9, 0.1, 0.8, 0.3]), torch.tensor([True, False, True, False]))
    >>> r.auc
    1.0
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from mechscope.circuits.discovery.component_graph import ComponentGraph
from mechscope.circuits.discovery.select import node_of_dest
from mechscope.core.errors import MechscopeError


@dataclass(frozen=True)
class ROC:
    """False and true positive rates at each threshold (from the strictest), and the area.

    Example:
        >>> ROC(fpr=[0.0, 1.0], tpr=[1.0, 1.0], auc=1.0).to_dict()["auc"]
        1.0
    """

    fpr: list[float]
    tpr: list[float]
    auc: float

    def to_dict(self) -> dict:
        return {"fpr": self.fpr, "tpr": self.tpr, "auc": self.auc}


def roc(scores: Tensor, reference: Tensor) -> ROC:
    """ROC of `scores` [n] against the boolean `reference` [n] (True = in the known circuit).

    Example:
        >>> roc(torch.tensor([0.9, 0.1, 0.8, 0.3]), torch.tensor([True, False, False, True])).auc
        0.75
    """
    scores, reference = scores.flatten().double(), reference.flatten().bool()
    if scores.shape != reference.shape:
        raise MechscopeError(f"{scores.numel()} scores but {reference.numel()} reference labels.")
    n_pos, n_neg = int(reference.sum()), int((~reference).sum())
    if n_pos == 0 or n_neg == 0:
        raise MechscopeError("An ROC curve needs both circuit and non-circuit items in the reference.")
    order = scores.argsort(descending=True)
    s, r = scores[order], reference[order]
    tp, fp = torch.cumsum(r, 0).double(), torch.cumsum(~r, 0).double()
    last_of_tie = torch.ones_like(s, dtype=torch.bool)
    last_of_tie[:-1] = s[1:] != s[:-1]
    tpr = torch.cat([torch.zeros(1, dtype=torch.float64), tp[last_of_tie] / n_pos])
    fpr = torch.cat([torch.zeros(1, dtype=torch.float64), fp[last_of_tie] / n_neg])
    auc = float(torch.trapezoid(tpr, fpr))
    return ROC(fpr.tolist(), tpr.tolist(), auc)


def edge_roc(graph: ComponentGraph, scores: Tensor, reference: Tensor) -> ROC:
    """ROC over every edge: `scores` and `reference` are [n_dests, n_sources] (|score| ranks).

    Example:
        >>> g = ComponentGraph(n_layers=2, n_heads=1)
        >>> reference = edges_from_names(g, ["a1.h0->logits"])
        >>> scores = torch.zeros(g.n_dests, g.n_sources)
        >>> scores[g.edge_index("a1.h0->logits")] = -3.0             # ranked by |score|
        >>> edge_roc(g, scores, reference).auc
        1.0
    """
    e = graph.edges
    return roc(scores.abs()[e[:, 0], e[:, 1]], reference[e[:, 0], e[:, 1]])


def node_scores(graph: ComponentGraph, scores: Tensor) -> Tensor:
    """Per node [n_sources + 1] (input, heads, MLPs, logits): the largest |score| of an edge touching it.

    Example:
        >>> g = ComponentGraph(n_layers=2, n_heads=1)
        >>> scores = torch.zeros(g.n_dests, g.n_sources)
        >>> scores[g.edge_index("a1.h0->logits")] = -3.0
        >>> node_scores(g, scores).tolist()                             # input, a0.h0, m0, a1.h0, m1, logits
        [0.0, 0.0, 0.0, 3.0, 0.0, 3.0]
    """
    a = scores.abs().double() * graph.valid
    out = torch.zeros(graph.n_sources + 1, dtype=torch.float64)
    out[: graph.n_sources] = a.max(0).values
    for d in range(graph.n_dests):
        node = node_of_dest(graph, d)
        out[node] = torch.maximum(out[node], a[d].max())
    return out


def edges_from_names(graph: ComponentGraph, names: list[str]) -> Tensor:
    """A boolean edge mask from edge names like `a0.h1->a1.h0.k`.

    Example:
        >>> g = ComponentGraph(n_layers=2, n_heads=1)
        >>> int(edges_from_names(g, ["input->a0.h0.q", "m1->logits"]).sum())
        2
    """
    mask = torch.zeros(graph.n_dests, graph.n_sources, dtype=torch.bool)
    for name in names:
        mask[graph.edge_index(name)] = True
    return mask
