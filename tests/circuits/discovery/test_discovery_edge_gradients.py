"""The fast edge gradients (one plain forward and backward) against the reference mask formulation."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from _discovery_helpers import tiny64, tiny_pairs

from mechscope.circuits.discovery.eap import mask_gradient
from mechscope.circuits.discovery.edge_gradients import edge_gradient, flat_sources, norm_vjp, norm_vjp_closed
from mechscope.circuits.discovery.graph_run import GraphModel
from mechscope.core.errors import MechscopeError
from mechscope.core.families import get_module
from mechscope.core.norms import norm_spec
from tiny_models import CONFIGS


def _relative(got, want):
    return float((got - want).norm() / want.norm())


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_fast_edge_gradient_equals_the_mask_formulation(kind):
    """Every family (grouped-query Llama/Mistral/Qwen2 ungrouped, Gemma 2/3 post-attention norms,
    parallel GPT-NeoX): the same [n_dests, n_sources] gradient, with this run's sources, with a
    fixed delta and a moved input node (EAP-IG's steps), and with every edge weighted below one."""
    gm = GraphModel(tiny64(kind))
    g, pairs = gm.graph, tiny_pairs()
    clean, corrupt = gm.sources(pairs.clean), gm.sources(pairs.corrupt)
    want = mask_gradient(gm, pairs, corrupt) * g.valid
    got = edge_gradient(gm, pairs, corrupt)
    assert _relative(got, want) < 1e-5
    assert bool((got[~g.valid] == 0).all())
    assert bool((got[g.valid] != 0).float().mean() > 0.9)  # nearly every edge carries a gradient

    start = corrupt[:, :, 0] + 0.3 * (clean[:, :, 0] - corrupt[:, :, 0])
    want = mask_gradient(gm, pairs, corrupt, fixed_delta=clean - corrupt, input_value=start) * g.valid
    got = edge_gradient(gm, pairs, None, fixed_delta=flat_sources(clean - corrupt), input_value=start)
    assert _relative(got, want) < 1e-5

    for weight in (0.25, 0.0):  # every edge weighted (EAP-IG on activations), down to the empty circuit
        want = mask_gradient(gm, pairs, corrupt, weight=weight) * g.valid
        assert _relative(edge_gradient(gm, pairs, corrupt, weight=weight), want) < 1e-5


def test_fast_edge_gradient_with_broadcast_corruption_and_padding():
    """Zero ablation ([1, 1, n_sources, d_model]) and left-padded prompts give the reference numbers."""
    gm = GraphModel(tiny64("llama"))
    mask = torch.ones_like(tiny_pairs(n=3).clean)
    mask[0, :2] = 0
    pairs = replace(tiny_pairs(n=3), attention_mask=mask)
    zero = torch.zeros(1, 1, gm.graph.n_sources, gm.cfg.d_model, dtype=torch.float64)
    want = mask_gradient(gm, pairs, zero) * gm.graph.valid
    got = edge_gradient(gm, pairs, zero)
    assert _relative(got, want) < 1e-5


def test_fast_edge_gradient_needs_one_kind_of_delta():
    gm = GraphModel(tiny64("gpt2"))
    pairs = tiny_pairs()
    with pytest.raises(MechscopeError, match="exactly one"):
        edge_gradient(gm, pairs, None)
    delta = flat_sources(gm.sources(pairs.clean) - gm.sources(pairs.corrupt))
    with pytest.raises(MechscopeError, match="corrupted sources"):
        edge_gradient(gm, pairs, None, fixed_delta=delta, weight=0.5)


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_closed_form_norm_vjp_matches_autograd(kind):
    """LayerNorm and RMSNorm (Gemma's 1 + w included), for several cotangents at once."""
    model = tiny64(kind)
    norm = get_module(model.layers[1], model.family.ln1)
    spec = norm_spec(norm, model.family.norm_offset)
    generator = torch.Generator().manual_seed(0)
    x = 3 * torch.randn(2, 5, model.cfg.d_model, generator=generator, dtype=torch.float64) + 1
    c = torch.randn(7, 2, 5, model.cfg.d_model, generator=generator, dtype=torch.float64)
    want = norm_vjp(norm, x, c)
    assert _relative(norm_vjp_closed(spec, norm.weight, x, c), want) < 1e-6  # HF's RMSNorm runs in float32
    inplace, narrow = c.clone(), torch.empty_like(c, dtype=torch.float32)
    norm_vjp_closed(spec, norm.weight, x, inplace, out=inplace)
    norm_vjp_closed(spec, norm.weight, x, c, out=narrow)
    assert _relative(inplace, want) < 1e-6 and _relative(narrow.double(), want) < 1e-6
    xr = x.clone().requires_grad_(True)
    (one,) = torch.autograd.grad(norm(xr), xr, c[3])  # the batched autograd form, one cotangent at a time
    torch.testing.assert_close(want[3], one)
