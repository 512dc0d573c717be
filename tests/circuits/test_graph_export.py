"""circuit-tracer graph JSON: validates against its schema model and matches its own node/link builder."""

from __future__ import annotations

import importlib
import json
import types

import torch
from circuit_helpers import random_transcoders
from circuit_tracer.attribution.targets import LogitTarget
from circuit_tracer.frontend.graph_models import Model

from mechscope.circuits.attribution import attribute
from mechscope.circuits.export import graph_json
from mechscope.circuits.graph import prune
from tiny_models import VOCAB, tiny_ids, tiny_model

# the package's __init__ re-exports a function under the module's name
ct_files = importlib.import_module("circuit_tracer.utils.create_graph_files")


def _graph():
    model = tiny_model("llama")
    return attribute(model, random_transcoders(model), tiny_ids(1, 8), max_feature_nodes=100, batch_size=32)


def test_export_validates_and_matches_circuit_tracer():
    graph = _graph()
    doc = graph_json(graph, slug="tiny", scan="tiny-plt", d_vocab=VOCAB, provenance={"model": "tiny"})
    parsed = Model.model_validate(json.loads(json.dumps(doc)))
    assert parsed.metadata.schema_version == 1 and parsed.metadata.node_threshold == 0.8
    assert doc["metadata"]["edge_threshold"] == 0.98
    # circuit-tracer's own builder on the same graph and masks
    ref = types.SimpleNamespace(
        selected_features=graph.selected_features, active_features=graph.active_features,
        activation_values=graph.activation_values, n_pos=graph.n_pos, input_tokens=graph.input_tokens.tolist(),
        cfg=types.SimpleNamespace(n_layers=graph.n_layers), adjacency_matrix=graph.adjacency,
        logit_targets=[LogitTarget(label, int(t)) for label, t in zip(graph.logit_labels, graph.logit_tokens, strict=True)],
        logit_probabilities=graph.logit_probabilities)
    pruned = prune(graph)
    nodes = ct_files.create_nodes(ref, pruned.node_mask, None, pruned.cumulative_scores)
    used, links = ct_files.create_used_nodes_and_edges(ref, nodes, pruned.edge_mask)
    ref_nodes = {n.node_id: n.model_dump() for n in used}
    mine = {n["node_id"]: n for n in doc["nodes"]}
    assert set(mine) == set(ref_nodes)
    for node_id, node in mine.items():
        want = ref_nodes[node_id]
        for key in ("feature", "layer", "ctx_idx", "feature_type", "jsNodeId", "is_target_logit"):
            assert node[key] == want[key], (node_id, key)
        if want["influence"] is None:
            assert node["influence"] is None
        else:
            assert abs(node["influence"] - want["influence"]) < 1e-6
    assert {(x["source"], x["target"]) for x in doc["links"]} == {(x["source"], x["target"]) for x in links}
    assert len(doc["links"]) > 0


def test_custom_target_gets_a_virtual_id():
    graph = _graph()
    graph.logit_tokens = torch.full_like(graph.logit_tokens, -1)
    doc = graph_json(graph, slug="t", scan="s", d_vocab=VOCAB)
    logits = [n for n in doc["nodes"] if n["feature_type"] == "logit"]
    assert sorted(n["feature"] for n in logits) == [VOCAB + k for k in range(graph.n_logits)]
