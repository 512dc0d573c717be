"""Influence, pruning and scores: the closed form on a hand-made graph, and circuit-tracer's own functions."""

from __future__ import annotations

import types

import pytest
import torch
from circuit_helpers import random_transcoders
from circuit_tracer import graph as ct_graph  # the reference: circuit-tracer 0.5.0 (make install, --no-deps)

from mechscope.circuits.attribution import attribute
from mechscope.circuits.graph import (
    AttributionGraph,
    graph_scores,
    influence,
    normalize,
    prune,
    pruned_scores,
)
from tiny_models import tiny_ids, tiny_model


def test_influence_equals_closed_form():
    gen = torch.Generator().manual_seed(0)
    n = 12
    A = torch.randn(n, n, generator=gen, dtype=torch.float64).tril(-1)  # acyclic: edges go to later nodes
    A[torch.rand(n, n, generator=gen) < 0.4] = 0
    w = torch.zeros(n, dtype=torch.float64)
    w[-2:] = torch.tensor([0.7, 0.3], dtype=torch.float64)
    An = normalize(A)
    closed = w @ (torch.linalg.inv(torch.eye(n, dtype=torch.float64) - An) - torch.eye(n, dtype=torch.float64))
    assert torch.allclose(influence(A, w), closed, atol=1e-12)
    # by hand on three nodes: 0 -> 1 (2), 0 -> 2 (1), 1 -> 2 (3); influence on node 2
    small = torch.tensor([[0.0, 0.0, 0.0], [2.0, 0.0, 0.0], [1.0, 3.0, 0.0]])
    assert influence(small, torch.tensor([0.0, 0.0, 1.0])).tolist() == [1.0, 0.75, 0.0]


def test_cycle_is_an_error():
    A = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    with pytest.raises(Exception, match="cycle"):
        influence(A, torch.tensor([1.0, 0.0]))


@pytest.fixture(scope="module")
def graph() -> AttributionGraph:
    model = tiny_model("llama")
    return attribute(model, random_transcoders(model), tiny_ids(1, 8), max_feature_nodes=120, batch_size=32)


def _as_circuit_tracer(g: AttributionGraph):
    """circuit-tracer's Graph with the same adjacency (only the fields its functions read)."""
    obj = ct_graph.Graph.__new__(ct_graph.Graph)
    obj.adjacency_matrix = g.adjacency.clone()
    obj.input_tokens = g.input_tokens
    obj.logit_targets = [types.SimpleNamespace() for _ in range(g.n_logits)]
    obj.logit_probabilities = g.logit_probabilities
    obj.selected_features = g.selected_features
    obj.cfg = types.SimpleNamespace(n_layers=g.n_layers)
    return obj


@pytest.mark.parametrize(("node_threshold", "edge_threshold"), [(0.8, 0.98), (0.5, 0.9), (0.95, 0.995)])
def test_pruning_matches_circuit_tracer(graph, node_threshold, edge_threshold):
    mine = prune(graph, node_threshold, edge_threshold)
    ref = ct_graph.prune_graph(_as_circuit_tracer(graph), node_threshold, edge_threshold)
    assert torch.equal(mine.node_mask, ref.node_mask)
    assert torch.equal(mine.edge_mask, ref.edge_mask)
    assert torch.allclose(mine.cumulative_scores, ref.cumulative_scores, atol=1e-6)
    assert 0 < int(mine.node_mask.sum()) < graph.adjacency.shape[0]


def test_scores_match_circuit_tracer(graph):
    mine = graph_scores(graph)
    replacement, completeness = ct_graph.compute_graph_scores(_as_circuit_tracer(graph))
    assert mine.replacement == pytest.approx(replacement, abs=1e-6)
    assert mine.completeness == pytest.approx(completeness, abs=1e-6)
    assert 0 < mine.replacement < 1 and 0 < mine.completeness < 1
    pruned = pruned_scores(graph, prune(graph))
    assert 0 < pruned.replacement <= 1 and 0 < pruned.completeness <= 1


def test_node_influence_matches_circuit_tracer(graph):
    w = graph.logit_weights()
    assert torch.allclose(influence(graph.adjacency, w), ct_graph.compute_node_influence(graph.adjacency, w), atol=1e-6)


def test_save_and_load(graph, tmp_path):
    graph.save(tmp_path / "g", provenance={"model": "tiny"})
    back = AttributionGraph.load(tmp_path / "g")
    assert torch.equal(back.adjacency, graph.adjacency) and back.logit_labels == graph.logit_labels
    assert back.node_label(0).startswith("L")
