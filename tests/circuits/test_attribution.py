"""Attribution graphs: every edge is a measured effect, batch sizes agree, the pass count follows the formula."""

from __future__ import annotations

import math

import pytest
import torch
from circuit_helpers import model_made_of_transcoders, random_transcoders

from mechscope.circuits.attribution import Target, attribute, salient_logits
from mechscope.circuits.graph import graph_scores
from mechscope.circuits.interventions import FeatureEdit, constrained_run, mlp_deltas, target_values
from mechscope.circuits.replacement import ReplacementModel
from tiny_models import tiny_ids, tiny_model


@pytest.fixture(scope="module")
def setup():
    model = tiny_model("llama")
    tcs = random_transcoders(model)
    rm = ReplacementModel(model, tcs)
    ids = tiny_ids(1, 8)
    graph = attribute(model, tcs, ids, batch_size=64, replacement=rm)
    return model, tcs, rm, ids, graph


def test_node_layout_and_targets(setup):
    model, _, rm, ids, graph = setup
    state = rm.prepare(ids)
    n = graph.n_features + model.cfg.n_layers * 8 + 8 + graph.n_logits
    assert graph.adjacency.shape == (n, n)
    assert (graph.active_features[:, 1] > 0).all()  # BOS position zeroed
    probs = torch.softmax(state.logits[-1], -1)
    top = torch.sort(probs, descending=True)
    k = graph.n_logits
    assert graph.logit_tokens.tolist() == top.indices[:k].tolist()
    # the smallest set reaching 0.95, at most 10
    assert k == 10 or (top.values[:k].sum() >= 0.95 and top.values[:k - 1].sum() < 0.95)
    # rows of error and token nodes are empty; logit rows receive edges
    assert graph.adjacency[graph.error_slice.start:graph.token_slice.stop].abs().sum() == 0
    assert graph.adjacency[-k:].abs().sum() > 0


def test_edges_equal_measured_direct_effects(setup):
    """Doubling a source in the constrained model moves each target by its edge weight."""
    model, _, rm, ids, graph = setup
    state = rm.prepare(ids)
    vectors = torch.stack([t.vector for t in salient_logits(model, state.logits[-1])])
    base = target_values(rm, graph, constrained_run(rm, state), vectors)
    gen = torch.Generator().manual_seed(0)
    sources = torch.randperm(graph.n_features, generator=gen)[:60].tolist()
    worst = 0.0
    for col in sources:
        layer, pos, feat = graph.active_features[graph.selected_features[col]].tolist()
        run = constrained_run(rm, state, mlp_deltas(rm, state, [FeatureEdit(layer, pos, feat, scale=2.0)]))
        measured = target_values(rm, graph, run, vectors) - base
        worst = max(worst, float((measured - graph.adjacency[:, col]).abs().max()))
    L, P = model.cfg.n_layers, state.n_pos
    for layer, pos in [(0, 0), (0, 5), (1, 3), (L - 1, P - 1)]:  # error nodes
        delta = torch.zeros(P, model.cfg.d_model)
        delta[pos] = state.errors[layer][pos]
        run = constrained_run(rm, state, {layer: delta})
        col = graph.error_slice.start + layer * P + pos
        worst = max(worst, float((target_values(rm, graph, run, vectors) - base - graph.adjacency[:, col]).abs().max()))
    for pos in range(P):  # token nodes
        delta = torch.zeros(P, model.cfg.d_model)
        delta[pos] = state.embed[pos]
        run = constrained_run(rm, state, embed_delta=delta)
        col = graph.token_slice.start + pos
        worst = max(worst, float((target_values(rm, graph, run, vectors) - base - graph.adjacency[:, col]).abs().max()))
    assert worst < 1e-5, worst


def test_batch_sizes_agree_and_pass_count(setup):
    model, tcs, rm, ids, graph = setup
    one = attribute(model, tcs, ids, batch_size=1, replacement=rm)
    assert (one.adjacency - graph.adjacency).abs().max() < 1e-6
    assert one.info["backward_passes"] == graph.n_logits + graph.n_features
    assert graph.info["backward_passes"] == math.ceil(graph.n_logits / 64) + math.ceil(graph.n_features / 64)


def test_feature_budget_keeps_the_most_influential(setup):
    model, tcs, rm, ids, graph = setup
    small = attribute(model, tcs, ids, batch_size=7, max_feature_nodes=40, update_interval=2, replacement=rm)
    assert small.n_features == 40
    assert small.info["backward_passes"] == math.ceil(small.n_logits / 7) + math.ceil(40 / 7)
    # rows of the visited features are the full graph's rows restricted to the kept columns
    full_rows = graph.adjacency[small.selected_features]
    keep = torch.cat([small.selected_features, torch.arange(graph.n_features, graph.adjacency.shape[1])])
    assert (full_rows[:, keep] - small.adjacency[:40]).abs().max() < 1e-6


def test_custom_targets_are_linear(setup):
    """A logit-difference target's row is the difference of the two tokens' rows."""
    model, tcs, rm, ids, graph = setup
    W = model.lm_head.weight.detach()
    diff = Target("3 - 5", -1, 1.0, W[3] - W[5])
    g = attribute(model, tcs, ids, targets=[diff, Target("3", 3, 0.5, W[3]), Target("5", 5, 0.5, W[5])],
                  replacement=rm)
    assert g.logit_labels == ["3 - 5", "3", "5"]
    rows = g.adjacency[-3:]
    assert (rows[0] - (rows[1] - rows[2])).abs().max() < 1e-5
    assert rows[0].abs().max() > 1e-3


def test_scores_are_one_when_mlps_are_transcoders():
    model, tcs = model_made_of_transcoders()
    rm = ReplacementModel(model, tcs, zero_positions=0)
    graph = attribute(model, tcs, tiny_ids(1, 8), replacement=rm)
    scores = graph_scores(graph)
    assert scores.replacement == pytest.approx(1.0, abs=1e-6)
    assert scores.completeness == pytest.approx(1.0, abs=1e-6)
