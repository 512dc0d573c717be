"""Choosing a circuit from edge scores: top-n, threshold, greedy growth from the logits, pruning.

A circuit is a boolean edge mask [n_dests, n_sources] over a `ComponentGraph`. Pruning
keeps only edges whose source is reachable from the input and whose destination node
still reaches the logits through circuit edges (a node cut off at either end cannot carry
anything from the prompt to the answer).

Example:
    >>> mask = top_n(scores, 200)                     # doctest: +SKIP
    >>> mask = prune(scores.graph, greedy(scores, 200))  # doctest: +SKIP
"""

from __future__ import annotations

import heapq

import torch
from torch import Tensor

from mechscope.circuits.discovery.component_graph import ComponentGraph
from mechscope.circuits.discovery.scores import EdgeScores
from mechscope.core.errors import MechscopeError


def _ranked(scores: EdgeScores, absolute: bool) -> Tensor:
    values = scores.scores.abs() if absolute else scores.scores
    return torch.where(scores.graph.valid, values.double(), torch.full((), float("-inf"), dtype=torch.float64))


def top_n(scores: EdgeScores, n: int, absolute: bool = True) -> Tensor:
    """The `n` highest-scoring edges (by |score|, or by signed score).

    Example:
        >>> from mechscope.circuits.discovery.scores import EdgeScores, masked
        >>> g = ComponentGraph(n_layers=2, n_heads=1)
        >>> scores = EdgeScores(g, masked(g, torch.ones(g.n_dests, g.n_sources)), "example")
        >>> scores.scores[g.edge_index("a1.h0->logits")] = 5.0
        >>> circuit_nodes(scores.graph, top_n(scores, 1))
        ['a1.h0', 'logits']
    """
    g = scores.graph
    if not 0 <= n <= g.n_edges:
        raise MechscopeError(f"top-n must be between 0 and {g.n_edges} (the graph's edges), got {n}.")
    flat = _ranked(scores, absolute).flatten()
    mask = torch.zeros(flat.numel(), dtype=torch.bool)
    mask[flat.argsort(descending=True, stable=True)[:n]] = True
    return mask.view(g.n_dests, g.n_sources) & g.valid


def threshold(scores: EdgeScores, tau: float, absolute: bool = True) -> Tensor:
    """Edges whose score (or |score|) is at least `tau`.

    Example:
        >>> from mechscope.circuits.discovery.scores import EdgeScores, masked
        >>> g = ComponentGraph(n_layers=2, n_heads=1)
        >>> scores = EdgeScores(g, masked(g, torch.ones(g.n_dests, g.n_sources)), "example")
        >>> scores.scores[g.edge_index("a1.h0->logits")] = 5.0
        >>> int(threshold(scores, 2.0).sum())
        1
    """
    return (_ranked(scores, absolute) >= tau) & scores.graph.valid


def _node_dests(g: ComponentGraph, source: int) -> list[int]:
    """Destinations that belong to the node of source `source` (none for the input)."""
    if source == 0:
        return []
    layer, within = divmod(source - 1, g.per_layer)
    if within < g.n_heads:
        return [g.qkv_dest(layer, within, w) for w in ("q", "k", "v")]
    return [g.mlp_dest(layer)]


def greedy(scores: EdgeScores, n: int, absolute: bool = True) -> Tensor:
    """Grow from the logits: repeatedly add the best edge into a node already in the circuit.

    Example:
        >>> from mechscope.circuits.discovery.scores import EdgeScores, masked
        >>> g = ComponentGraph(n_layers=2, n_heads=1)
        >>> scores = EdgeScores(g, masked(g, torch.ones(g.n_dests, g.n_sources)), "example")
        >>> scores.scores[g.edge_index("a1.h0->logits")] = 5.0
        >>> mask = greedy(scores, 2)                                      # the best edge into the logits, then into a1.h0
        >>> circuit_nodes(g, mask)[-2:], int(mask.sum())
        (['a1.h0', 'logits'], 2)
    """
    g = scores.graph
    ranked = _ranked(scores, absolute)
    mask = torch.zeros(g.n_dests, g.n_sources, dtype=torch.bool)
    heap: list[tuple[float, int, int]] = []
    added_nodes: set[int] = set()

    def open_dest(d: int) -> None:
        for s in range(g.n_upstream(d)):
            heapq.heappush(heap, (-float(ranked[d, s]), d, s))

    open_dest(g.logits_dest)
    while heap and int(mask.sum()) < n:
        _, d, s = heapq.heappop(heap)
        if mask[d, s]:
            continue
        mask[d, s] = True
        if s not in added_nodes:
            added_nodes.add(s)
            for dest in _node_dests(g, s):
                open_dest(dest)
    return mask


def prune(g: ComponentGraph, mask: Tensor) -> Tensor:
    """`mask` without edges of nodes that are not reachable from the input or do not reach the logits.

    Example:
        >>> g = ComponentGraph(n_layers=2, n_heads=1)
        >>> mask = torch.zeros(g.n_dests, g.n_sources, dtype=torch.bool)
        >>> for name in ["input->a0.h0.v", "a0.h0->m1", "a1.h0->logits"]:   # a1.h0 reads nothing: a dead end
        ...     mask[g.edge_index(name)] = True
        >>> int(prune(g, mask).sum())
        0
    """
    mask = mask & g.valid
    dest_node = torch.tensor([node_of_dest(g, d) for d in range(g.n_dests)])  # the source index of each dest's node
    # forward: a node is reachable when any circuit edge from a reachable source enters it
    reach = torch.zeros(g.n_sources + 1, dtype=torch.bool)
    reach[0] = True
    for d in range(g.n_dests):
        node = int(dest_node[d])
        if bool((mask[d] & reach[: g.n_sources]).any()):
            reach[node] = True
    # backward: a source reaches the logits when a circuit edge leaves it into a node that does
    alive = torch.zeros(g.n_sources + 1, dtype=torch.bool)
    alive[g.n_sources] = True  # the logits node
    for d in reversed(range(g.n_dests)):
        if alive[int(dest_node[d])]:
            alive[: g.n_sources] |= mask[d]
    keep_dest = alive[dest_node] & reach[dest_node]
    return mask & keep_dest[:, None] & reach[None, : g.n_sources] & alive[None, : g.n_sources]


def node_of_dest(g: ComponentGraph, d: int) -> int:
    """The node of destination `d` as a source index (`n_sources` for the logits).

    Example:
        >>> g = ComponentGraph(n_layers=2, n_heads=1)
        >>> g.source_names[node_of_dest(g, g.mlp_dest(1))], node_of_dest(g, g.logits_dest) == g.n_sources
        ('m1', True)
    """
    if d == g.logits_dest:
        return g.n_sources
    layer, within = divmod(d, g.dests_per_layer)
    if within < 3 * g.n_heads:
        return g.head_source(layer, within % g.n_heads)
    return g.mlp_source(layer)


def circuit_nodes(g: ComponentGraph, mask: Tensor) -> list[str]:
    """Names of the nodes an edge mask touches, in forward order.

    Example:
        >>> g = ComponentGraph(n_layers=2, n_heads=1)
        >>> mask = torch.zeros(g.n_dests, g.n_sources, dtype=torch.bool)
        >>> mask[g.edge_index("a0.h0->m1")] = True
        >>> circuit_nodes(g, mask)
        ['a0.h0', 'm1']
    """
    used = torch.zeros(g.n_sources + 1, dtype=torch.bool)
    used[: g.n_sources] |= mask.any(0)
    for d in mask.any(1).nonzero().flatten().tolist():
        used[node_of_dest(g, d)] = True
    names = g.node_names()
    return [names[i] for i in used.nonzero().flatten().tolist()]
