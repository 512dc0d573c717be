"""Circuit selection, evaluation, ACDC and ROC on tiny random models."""

from __future__ import annotations

import pytest
import torch
from _discovery_helpers import tiny64, tiny_pairs

from mechscope.circuits.discovery.acdc import acdc
from mechscope.circuits.discovery.component_graph import ComponentGraph
from mechscope.circuits.discovery.eap import attribute
from mechscope.circuits.discovery.evaluate import Evaluation, Evaluator, default_sizes
from mechscope.circuits.discovery.graph_run import GraphModel
from mechscope.circuits.discovery.roc import edges_from_names, node_scores, roc
from mechscope.circuits.discovery.scores import EdgeScores
from mechscope.circuits.discovery.select import circuit_nodes, greedy, prune, threshold, top_n
from mechscope.core.errors import MechscopeError, OutputExistsError


@pytest.fixture(scope="module")
def llama():
    gm = GraphModel(tiny64("llama"))
    pairs = tiny_pairs()
    return gm, pairs, attribute(gm, pairs, method="eap-ig", steps=3)


def test_full_and_empty_circuits_give_faithfulness_one_and_zero(llama):
    gm, pairs, scores = llama
    ev = Evaluator(gm, pairs)
    g = gm.graph
    with torch.no_grad():
        clean = pairs.metric(gm.model(pairs.clean)).double().mean()
        corrupt = pairs.metric(gm.model(pairs.corrupt)).double().mean()
    assert ev.clean == pytest.approx(float(clean), abs=1e-5)
    assert ev.corrupted == pytest.approx(float(corrupt), abs=1e-5)
    assert ev(g.valid).faithfulness == pytest.approx(1.0, abs=1e-5)
    assert ev(torch.zeros_like(g.valid)).faithfulness == pytest.approx(0.0, abs=1e-5)
    curve = ev.curve(scores, default_sizes(g.n_edges, points=5))
    assert [c.n_edges for c in curve] == default_sizes(g.n_edges, points=5)
    assert curve[0].faithfulness == pytest.approx(0.0, abs=1e-5)
    assert curve[-1].faithfulness == pytest.approx(1.0, abs=1e-5)
    half = Evaluation(10, metric=0.5 * (ev.clean + ev.corrupted), clean=ev.clean, corrupted=ev.corrupted)
    assert half.faithfulness == pytest.approx(0.5) and half.to_dict()["faithfulness"] == pytest.approx(0.5)
    with pytest.raises(MechscopeError, match="same on both prompts"):
        _ = Evaluation(10, metric=1.0, clean=2.0, corrupted=2.0).faithfulness


def test_selection_rules(llama):
    gm, _, scores = llama
    g = gm.graph
    values = scores.edge_values()
    mask = top_n(scores, 20)
    assert int(mask.sum()) == 20 and not bool((mask & ~g.valid).any())
    assert scores.scores.abs()[mask].min() >= scores.scores.abs()[g.valid & ~mask].max()
    signed = top_n(scores, 20, absolute=False)
    assert scores.scores[signed].min() >= scores.scores[g.valid & ~signed].max()
    tau = float(values.abs().sort(descending=True).values[19])
    assert torch.equal(threshold(scores, tau), mask)
    grown = greedy(scores, 25)
    assert int(grown.sum()) == 25 and bool(grown[g.logits_dest].any())
    with pytest.raises(MechscopeError, match="top-n"):
        top_n(scores, g.n_edges + 1)


def test_pruning_drops_nodes_cut_off_from_either_end():
    g = ComponentGraph(n_layers=3, n_heads=2, has_mlp=False)
    mask = edges_from_names(g, ["input->a0.h0.v", "a0.h0->a1.h1.k", "a1.h1->logits",  # a full path
                                "a0.h1->logits",                                        # a0.h1 has no input
                                "input->a1.h0.q", "a0.h0->a1.h0.v"])                    # a1.h0 reaches nothing
    kept = prune(g, mask)
    assert circuit_nodes(g, kept) == ["input", "a0.h0", "a1.h1", "logits"]
    assert int(kept.sum()) == 3
    assert torch.equal(prune(g, kept), kept)


def test_acdc_incremental_equals_scratch_and_counts_do_not_grow(llama):
    gm, pairs, _ = llama
    result = acdc(gm, pairs, thresholds=[1e-3, 1e-4, 1e-2], check=True)
    assert result.thresholds == [1e-4, 1e-3, 1e-2]
    assert result.max_scratch_difference < 1e-6
    assert result.counts == sorted(result.counts, reverse=True) and result.counts[0] < gm.graph.n_edges
    for small, large in zip(result.masks, result.masks[1:], strict=False):
        assert not bool((large & ~small).any())  # nested circuits
    s = result.scores.scores
    assert torch.equal(s == 1e-2, result.masks[-1])
    # the smallest threshold's circuit is faithful to within what it was allowed to lose
    ev = Evaluator(gm, pairs)
    assert abs(ev(result.masks[0]).faithfulness - 1) < 0.5


def test_roc_endpoints_oracle_and_random():
    reference = torch.zeros(2000, dtype=torch.bool)
    reference[:200] = True
    oracle = roc(reference.double() + 0.01 * torch.rand(2000), reference)
    assert (oracle.fpr[0], oracle.tpr[0]) == (0.0, 0.0) and (oracle.fpr[-1], oracle.tpr[-1]) == (1.0, 1.0)
    assert oracle.auc == 1.0
    random = roc(torch.rand(2000, generator=torch.Generator().manual_seed(0)), reference)
    assert abs(random.auc - 0.5) < 0.05
    # ties enter together: all-equal scores give the diagonal
    assert roc(torch.zeros(10), torch.arange(10) < 3).auc == pytest.approx(0.5)
    with pytest.raises(MechscopeError):
        roc(torch.zeros(3), torch.ones(3, dtype=torch.bool))


def test_node_scores_and_saved_scores_roundtrip(llama, tmp_path):
    gm, _, scores = llama
    nodes = node_scores(gm.graph, scores.scores)
    assert nodes.shape == (gm.graph.n_sources + 1,) and float(nodes[-1]) == float(scores.scores[-1].abs().max())
    st, js = scores.save(tmp_path / "s", provenance={"model": "tiny"})
    back = EdgeScores.load(tmp_path / "s")
    torch.testing.assert_close(back.scores, scores.scores.float())
    assert back.method == "eap-ig" and back.graph == gm.graph and back.info["steps"] == 3
    (tmp_path / "mine.json").write_text("{}")  # a file the user wrote is never replaced silently
    with pytest.raises(OutputExistsError):
        scores.save(tmp_path / "mine", provenance={})
