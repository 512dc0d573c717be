"""Edge scores: EAP against finite differences, EAP-IG against its per-step definition, corruptions."""

from __future__ import annotations

import pytest
import torch
from _discovery_helpers import tiny64, tiny_pairs

from mechscope.circuits.discovery.corruption import Corruption
from mechscope.circuits.discovery.eap import attribute, mask_gradient
from mechscope.circuits.discovery.graph_run import GraphModel
from mechscope.core.errors import MechscopeError


def _finite_difference(gm, pairs, corrupt, eps, edges=None):
    """Central difference of the mean metric in each edge's weight (an edge at 1 +- eps); `edges`
    is a list of (dest, source) pairs, every edge of the graph by default."""
    g = gm.graph
    edges = g.edges.tolist() if edges is None else edges
    out = torch.zeros(len(edges), dtype=torch.float64)
    mask = torch.ones(g.n_dests, g.n_sources, dtype=torch.float64)
    with torch.no_grad():
        for i, (d, s) in enumerate(edges):
            values = []
            for sign in (1, -1):
                mask[d, s] = 1 + sign * eps
                values.append(pairs.metric(gm.run(pairs.clean, None, mask, corrupt)).mean())
            mask[d, s] = 1
            out[i] = (values[0] - values[1]) / (2 * eps)
    return out


# GPT-2's LayerNorm runs in float64; Llama's RMSNorm computes in float32 inside, which bounds
# how closely a finite difference can agree (hence a larger step and tolerance there).
FD_CASES = [("gpt2", 1e-4, 1e-3), ("llama", 1e-2, 1e-2)]


@pytest.mark.slow  # two forward passes per edge (262 edges on GPT-2, 306 on Llama)
@pytest.mark.parametrize(("kind", "eps", "tol"), FD_CASES)
def test_eap_equals_finite_differences(kind, eps, tol):
    gm = GraphModel(tiny64(kind))
    pairs = tiny_pairs()
    scores = attribute(gm, pairs, method="eap")
    fd = _finite_difference(gm, pairs, gm.sources(pairs.corrupt), eps)
    eap = scores.edge_values()
    assert (eap - fd).norm() / fd.norm() < tol
    assert eap.abs().max() > 0


@pytest.mark.parametrize(("kind", "eps", "tol"), FD_CASES)
def test_eap_equals_finite_differences_on_every_kind_of_edge(kind, eps, tol):
    """The same check on a few edges into every destination kind (q, k, v, MLP, logits) and from
    every source kind (input, heads, MLPs)."""
    gm = GraphModel(tiny64(kind))
    g, pairs = gm.graph, tiny_pairs()
    last = g.n_layers - 1
    names = ["input->a0.h0.q", "input->a0.h1.k", "input->a0.h2.v", "input->m0", "a0.h3->m0",
             f"m0->a{last}.h1.q", f"a0.h2->a{last}.h0.k", f"a0.h1->a{last}.h3.v", f"a{last}.h2->m{last}",
             "input->logits", f"a{last}.h1->logits", f"m{last}->logits"]
    edges = [g.edge_index(n) for n in names]
    eap = attribute(gm, pairs, method="eap").scores
    fd = _finite_difference(gm, pairs, gm.sources(pairs.corrupt), eps, edges)
    got = torch.stack([eap[d, s] for d, s in edges]).double()
    assert (got - fd).norm() / fd.norm() < tol
    assert bool((fd != 0).all())


def test_eap_ig_is_the_mean_of_per_step_gradients():
    gm = GraphModel(tiny64("llama"))
    pairs = tiny_pairs()
    steps = 4
    ig = attribute(gm, pairs, method="eap-ig", steps=steps).scores
    clean, corrupt = gm.sources(pairs.clean), gm.sources(pairs.corrupt)
    per_step = []
    for k in range(1, steps + 1):
        a = k / steps
        start = corrupt[:, :, 0] + a * (clean[:, :, 0] - corrupt[:, :, 0])
        per_step.append(mask_gradient(gm, pairs, corrupt, fixed_delta=clean - corrupt, input_value=start))
    expected = torch.stack(per_step).mean(0) / len(pairs) * gm.graph.valid
    torch.testing.assert_close(ig.double(), expected, atol=1e-6, rtol=1e-6)
    # one step at the clean input is EAP itself
    one = attribute(gm, pairs, method="eap-ig", steps=1).scores
    torch.testing.assert_close(one, attribute(gm, pairs, method="eap").scores, atol=1e-6, rtol=1e-6)


def test_exact_scores_are_single_edge_removals_and_ig_activations_add_up():
    gm = GraphModel(tiny64("gpt2"))
    pairs = tiny_pairs()
    g = gm.graph
    exact = attribute(gm, pairs, method="exact")
    corrupt = gm.sources(pairs.corrupt)
    d, s = g.edge_index("a1.h2->logits")
    mask = torch.ones(g.n_dests, g.n_sources, dtype=torch.float64)
    with torch.no_grad():
        full = pairs.metric(gm.run(pairs.clean, None, None, None)).mean()
        mask[d, s] = 0
        removed = pairs.metric(gm.run(pairs.clean, None, mask, corrupt)).mean()
        empty = pairs.metric(gm.run(pairs.clean, None, torch.zeros_like(mask), corrupt)).mean()
    assert float(exact.scores[d, s]) == pytest.approx(float(full - removed), abs=1e-12)
    # integrated gradients over edge weights: the scores sum to metric(full) - metric(empty)
    ig_act = attribute(gm, pairs, method="eap-ig-act", steps=32)
    assert float(ig_act.scores.sum()) == pytest.approx(float(full - empty), rel=0.05)


@pytest.mark.parametrize("mode", ["zero", "mean", "resample"])
def test_other_corruptions(mode):
    gm = GraphModel(tiny64("llama"))
    pairs = tiny_pairs(n=4)
    corruption = Corruption(gm, pairs, mode)
    values = corruption.values(slice(0, 4))
    clean = gm.sources(pairs.clean)
    if mode == "zero":
        assert values.abs().max() == 0
    elif mode == "mean":
        torch.testing.assert_close(values[0, 0], clean.mean(dim=(0, 1)))
    else:
        perm = corruption._perm
        assert not torch.equal(perm, torch.arange(4))
        torch.testing.assert_close(values, clean[perm])
    scores = attribute(gm, pairs, method="eap", corruption=mode)
    assert torch.isfinite(scores.scores).all() and scores.scores.abs().max() > 0


def test_bad_method_and_corruption_names():
    gm = GraphModel(tiny64("gpt2"))
    with pytest.raises(MechscopeError, match="eap-ig"):
        attribute(gm, tiny_pairs(), method="eap_ig")
    with pytest.raises(MechscopeError, match="resample"):
        attribute(gm, tiny_pairs(), corruption="resampel")
