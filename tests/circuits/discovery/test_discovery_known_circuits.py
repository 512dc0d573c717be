"""Known circuits: every method recovers a hand-planted circuit and the trained induction toy's circuit."""

from __future__ import annotations

import pytest
import torch

from mechscope import HookedModel
from mechscope.circuits.discovery.acdc import acdc
from mechscope.circuits.discovery.eap import attribute
from mechscope.circuits.discovery.graph_run import GraphModel
from mechscope.circuits.discovery.induction import induction_pairs, induction_reference
from mechscope.circuits.discovery.roc import edge_roc, edges_from_names
from mechscope.circuits.discovery.tasks import Pairs
from mechscope.toys.attn_only import AttnOnlyConfig, AttnOnlyForCausalLM

PLANTED = ["input->a0.h1.v", "input->a1.h2.q", "input->a1.h2.k", "input->a1.h2.v",
           "a0.h1->a1.h2.q", "a0.h1->a1.h2.k", "a0.h1->a1.h2.v",
           "input->logits", "a0.h1->logits", "a1.h2->logits"]


def planted_model() -> HookedModel:
    """Two attention-only layers of four heads where only a0.h1 and a1.h2 write to the residual
    stream and only a1.h2 has content-dependent attention (every other head's W_Q, W_K are 0).
    Every edge outside `PLANTED` therefore has exactly no effect."""
    torch.manual_seed(0)
    cfg = AttnOnlyConfig(vocab_size=16, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         max_position_embeddings=16, positions="learned", initializer_range=0.3)
    hf = AttnOnlyForCausalLM(cfg).double().eval()
    d_head = 8
    live = {0: 1, 1: 2}
    with torch.no_grad():
        for layer, block in enumerate(hf.model.layers):
            attn = block.self_attn
            attn.o_proj.bias.zero_()
            for head in range(4):
                cols = slice(head * d_head, (head + 1) * d_head)
                if head != live[layer]:
                    attn.o_proj.weight[:, cols] = 0
                if not (layer == 1 and head == 2):
                    for proj in (attn.q_proj, attn.k_proj):
                        proj.weight[cols] = 0
                        proj.bias[cols] = 0
    return HookedModel(hf, name="planted")


def _argmax_pairs(model: HookedModel, clean: torch.Tensor, corrupt: torch.Tensor) -> Pairs:
    """Logit difference between the clean and the corrupt run's top next tokens."""
    with torch.no_grad():
        good = model(clean)[:, -1].argmax(-1)
        bad = model(corrupt)[:, -1].argmax(-1)
    keep = good != bad
    n = clean.shape[1]
    return Pairs(clean[keep], corrupt[keep], None, torch.full((int(keep.sum()),), n - 1), good[keep, None],
                 bad[keep, None])


@pytest.fixture(scope="module")
def planted():
    model = planted_model()
    gen = torch.Generator().manual_seed(3)
    clean, corrupt = torch.randint(0, 16, (24, 8), generator=gen), torch.randint(0, 16, (24, 8), generator=gen)
    gm = GraphModel(model)
    return gm, _argmax_pairs(model, clean, corrupt), edges_from_names(gm.graph, PLANTED)


@pytest.mark.parametrize("method", ["eap", "eap-ig", "eap-ig-act", "clean-corrupted", "exact"])
def test_every_score_method_recovers_the_planted_circuit(planted, method):
    gm, pairs, reference = planted
    scores = attribute(gm, pairs, method=method, steps=5)
    outside = scores.scores.abs()[gm.graph.valid & ~reference]
    assert float(outside.max()) < 1e-12  # edges outside the circuit carry exactly nothing
    assert edge_roc(gm.graph, scores.scores, reference).auc >= 0.95


def test_acdc_recovers_the_planted_circuit(planted):
    gm, pairs, reference = planted
    result = acdc(gm, pairs, thresholds=[1e-9, 1e-4], check=True)
    assert result.max_scratch_difference < 1e-9
    assert not bool((result.masks[0] & ~reference).any())  # no edge outside the circuit survives
    assert edge_roc(gm.graph, result.scores.scores, reference).auc >= 0.95


# -- the trained induction toy ----------------------------------------------------------------------
# Pairs and reference circuit: see `mechscope.circuits.discovery.induction` (the first copy
# shuffled, so the same tokens are in context and induction points at another token; the
# reference holds the layer-0 values, K- and V-composition, the layer-1 values and outputs).
@pytest.fixture(scope="module")
def induction(tmp_path_factory):
    from mechscope.core.loading import load_model
    from mechscope.toys.induction import InductionToyConfig, train_induction_toy

    folder = tmp_path_factory.mktemp("toy") / "induction"
    train_induction_toy(InductionToyConfig(steps=800, eval_every=400), out_dir=folder)
    gm = GraphModel(load_model(str(folder)))
    pairs = induction_pairs(n=24, span=12, seed=0)
    return gm, pairs, edges_from_names(gm.graph, induction_reference(n_heads=2))


@pytest.mark.slow
def test_induction_toy_circuit_is_recovered(induction):
    gm, pairs, reference = induction
    scores = {m: attribute(gm, pairs, method=m, steps=5) for m in ("eap", "eap-ig", "eap-ig-act", "clean-corrupted",
                                                                   "exact")}
    aucs = {m: edge_roc(gm.graph, s.scores, reference).auc for m, s in scores.items()}
    result = acdc(gm, pairs, thresholds=[0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0], check=True)
    aucs["acdc"] = edge_roc(gm.graph, result.scores.scores, reference).auc
    assert result.max_scratch_difference < 1e-5
    assert min(aucs["exact"], aucs["eap-ig"], aucs["eap-ig-act"], aucs["acdc"]) >= 0.95, aucs
    # EAP and clean-corrupted take gradients only where the induction attention is saturated
    # (see the next test), so they rank the K-composition edges low
    assert min(aucs["eap"], aucs["clean-corrupted"]) >= 0.8, aucs
    assert all(name in induction_reference(2) for name, _ in scores["eap-ig"].top(4))


@pytest.mark.slow
def test_induction_attention_saturates_so_eap_misses_k_composition(induction):
    """The metric is flat in a K-composition edge's weight near 1 (the clean run), where EAP
    takes its gradient, and steep further down, where EAP-IG's interpolation also looks."""
    gm, pairs, _ = induction
    g = gm.graph
    corrupt = gm.sources(pairs.corrupt)
    eap = attribute(gm, pairs, method="eap").scores
    ig = attribute(gm, pairs, method="eap-ig", steps=5).scores
    d, s = g.edge_index("a0.h0->a1.h0.k")
    mask = torch.ones(g.n_dests, g.n_sources, dtype=gm.model.dtype)

    def metric(weight: float) -> float:
        mask[d, s] = weight
        with torch.no_grad():
            return float(pairs.metric(gm.run(pairs.clean, None, mask, corrupt)).mean())

    with torch.no_grad():
        corrupted = float(pairs.metric(gm.model(pairs.corrupt)).mean())
    removed = metric(1.0) - metric(0.0)
    assert removed > 0.3 * (metric(1.0) - corrupted)  # a large part of the whole effect
    assert metric(1.0) - metric(0.8) < 0.1 * removed  # flat at the clean end
    assert abs(float(eap[d, s])) < 0.2 * removed < float(ig[d, s])
