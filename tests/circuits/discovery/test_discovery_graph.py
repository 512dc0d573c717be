"""The component graph: counting rule, and edge removal that is exact against hand-written hooks."""

from __future__ import annotations

import pytest
import torch
from _discovery_helpers import tiny64, tiny_pairs

from mechscope.circuits.discovery.component_graph import ComponentGraph
from mechscope.circuits.discovery.graph_run import GraphModel
from mechscope.core import names
from mechscope.core.errors import MechscopeError
from tiny_models import CONFIGS


def test_counting_rule_reproduces_the_default_model_sizes():
    g = ComponentGraph(n_layers=30, n_heads=9)
    assert (g.n_sources, g.n_dests, g.n_edges) == (301, 841, 123_211)
    assert int(g.valid.sum()) == g.n_edges == len(g.edges)
    # a layer-2 head input reads the input and layers 0-1; the layer-2 MLP also reads layer 2's heads
    assert g.n_upstream(g.qkv_dest(2, 0, "k")) == 1 + 2 * 10
    assert g.n_upstream(g.mlp_dest(2)) == 1 + 2 * 10 + 9
    parallel = ComponentGraph(n_layers=30, n_heads=9, parallel=True)
    assert parallel.n_upstream(parallel.mlp_dest(2)) == 1 + 2 * 10
    assert g.edge_index("a0.h3->m0") == (g.mlp_dest(0), g.head_source(0, 3))
    with pytest.raises(MechscopeError, match="does not come before"):
        g.edge_index("m3->a1.h0.q")
    with pytest.raises(MechscopeError, match="a0.h3"):
        g.edge_index("a0.h33->m0")


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_full_circuit_is_clean_and_empty_circuit_is_corrupt(kind):
    model = tiny64(kind)
    gm = GraphModel(model)
    pairs = tiny_pairs()
    g = gm.graph
    with torch.no_grad():
        clean, corrupt = model(pairs.clean), model(pairs.corrupt)
        cs = gm.sources(pairs.corrupt)
        ones = torch.ones(g.n_dests, g.n_sources, dtype=torch.float64)
        assert torch.equal(gm.run(pairs.clean, None, None, None), clean)
        full = gm.run(pairs.clean, None, ones, cs)
        empty = gm.run(pairs.clean, None, torch.zeros_like(ones), cs)
    torch.testing.assert_close(full, clean, atol=1e-5, rtol=0)
    torch.testing.assert_close(empty, corrupt, atol=1e-5, rtol=0)
    # the sources add up to the residual stream (biases aside): check on the logits' input
    assert cs.shape == (3, 7, g.n_sources, model.cfg.d_model)


def _hand_patched(model, ids, layer, hook_name, rebuild):
    """Run the plain model with one activation replaced by `rebuild(resid_before_norm)`."""
    store = {}

    def keep(act, hook):
        store["resid"] = act

    def replace(act, hook):
        return rebuild(store["resid"], act)

    read = names.resid_pre(layer) if layer is not None else names.resid_post(model.cfg.n_layers - 1)
    with torch.no_grad():
        return model.run_with_hooks(ids, fwd_hooks=[(read, keep), (hook_name, replace)])


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_single_edge_removal_matches_hand_written_hooks(kind):
    model = tiny64(kind)
    gm = GraphModel(model)
    g = gm.graph
    pairs = tiny_pairs()
    clean_src, corrupt_src = gm.sources(pairs.clean), gm.sources(pairs.corrupt)
    layer = model.layers[2]
    fam = model.family
    cases = []
    # logits <- a1.h2: the final norm reads the residual minus that head's (clean - corrupt)
    s = g.head_source(1, 2)
    cases.append((g.logits_dest, s, None, names.LN_FINAL_OUT,
                  lambda r, a, s=s: model.final_norm.forward(r - (clean_src[:, :, s] - corrupt_src[:, :, s]))))
    # a2.h1.q <- input: only head 1's query is recomputed from the edited residual
    ln1 = layer.get_submodule(fam.ln1)
    q_site = model.sites[names.block(2, "attn.hook_q")]

    def rebuild_q(r, act):
        q = q_site.read(q_site.module.forward(ln1.forward(r - (clean_src[:, :, 0] - corrupt_src[:, :, 0]))))
        out = act.clone()
        out[:, :, 1] = q[:, :, 1]
        return out

    cases.append((g.qkv_dest(2, 1, "q"), 0, 2, names.block(2, "attn.hook_q"), rebuild_q))
    for dest, source, read_layer, hook_name, rebuild in cases:
        mask = torch.ones(g.n_dests, g.n_sources, dtype=torch.float64)
        mask[dest, source] = 0
        with torch.no_grad():
            ours = gm.run(pairs.clean, None, mask, corrupt_src)
        expected = _hand_patched(model, pairs.clean, read_layer, hook_name, rebuild)
        torch.testing.assert_close(ours, expected, atol=1e-9, rtol=1e-9)
        assert (ours - model(pairs.clean)).abs().max() > 1e-9  # the edge changed the output


def test_ungrouped_copy_shares_weights_and_computes_the_same():
    model = tiny64("llama")
    gm = GraphModel(model)
    assert model.cfg.n_kv_heads == 2 and gm.model.cfg.n_kv_heads == 4
    assert gm.model.hf_model.lm_head.weight is model.hf_model.lm_head.weight
    ids = tiny_pairs().clean
    with torch.no_grad():
        torch.testing.assert_close(gm.model(ids), model(ids), atol=1e-12, rtol=0)
