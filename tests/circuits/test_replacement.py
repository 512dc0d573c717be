"""The local replacement model: exact logits, linearity under the freezes, and the replacement model."""

from __future__ import annotations

import pytest
import torch
from circuit_helpers import model_made_of_transcoders, random_transcoders

from mechscope.circuits.replacement import (
    ReplacementError,
    ReplacementModel,
    replacement_logits,
    unembed_input_hook,
)
from mechscope.core import names
from mechscope.core.attention import using_implementation
from tiny_models import tiny_ids, tiny_model


@pytest.mark.parametrize("kind", ["llama", "gemma3", "qwen2", "gpt2"])
def test_local_replacement_reproduces_logits(kind):
    model = tiny_model(kind)
    rm = ReplacementModel(model, random_transcoders(model))
    ids = tiny_ids(1, 9)
    state = rm.prepare(ids)
    real = model(ids)[0]
    assert (rm.local_logits(state) - real).abs().max() < 1e-4
    # without the error terms the transcoders alone are far from the model (random transcoders)
    assert (rm.local_logits(state, use_error=False) - real).abs().max() > 1e-2


def _target_grad(rm, state, ids, create_graph=False):
    """Gradient of a fixed logit direction at the last position w.r.t. the token embeddings."""
    leaf = {}

    def embed(act, hook):
        leaf["E"] = act.detach().clone().requires_grad_(True)
        return leaf["E"]

    final = {}

    def keep(act, hook):
        final["x"] = act

    with torch.enable_grad(), rm.frozen(state, hooks=[(names.EMBED, embed), (unembed_input_hook(rm.model), keep)]):
        rm.model(ids)
    u = torch.linspace(-1, 1, final["x"].shape[-1])
    target = final["x"][0, -1] @ u
    (g,) = torch.autograd.grad(target, leaf["E"], create_graph=create_graph)
    return g, leaf["E"]


def test_frozen_model_is_linear_in_the_embeddings():
    model = tiny_model("llama")
    rm = ReplacementModel(model, random_transcoders(model))
    ids = tiny_ids(1, 9)
    state = rm.prepare(ids)
    g, E = _target_grad(rm, state, ids, create_graph=True)
    v = torch.randn_like(g)
    if g.requires_grad:
        (hvp,) = torch.autograd.grad((g * v).sum(), E, allow_unused=True)
        assert hvp is None or hvp.abs().max() < 1e-5
    # the same gradient for another prompt run with the first prompt's frozen patterns and norms
    other = tiny_ids(1, 9, seed=7)
    assert not torch.equal(other, ids)
    g_other, _ = _target_grad(rm, state, other)
    assert (g_other - g.detach()).abs().max() < 1e-6


def test_unfrozen_model_is_not_linear():
    """The check above can fail: without the freezes the same Hessian-vector product is not zero."""
    model = tiny_model("llama")
    ids = tiny_ids(1, 9)
    leaf = {}

    def embed(act, hook):
        leaf["E"] = act.detach().clone().requires_grad_(True)
        return leaf["E"]

    with torch.enable_grad(), using_implementation(model.hf_model, "eager"):  # SDPA has no double backward
        logits = model.run_with_hooks(ids, fwd_hooks=[(names.EMBED, embed)])
        (g,) = torch.autograd.grad(logits[0, -1, 3], leaf["E"], create_graph=True)
        (hvp,) = torch.autograd.grad((g * torch.randn_like(g)).sum(), leaf["E"])
    assert hvp.abs().max() > 1e-4


def test_transcoder_mlps_have_zero_error():
    model, tcs = model_made_of_transcoders()
    rm = ReplacementModel(model, tcs, zero_positions=0)
    state = rm.prepare(tiny_ids(1, 9))
    assert max(float(e.abs().max()) for e in state.errors) < 1e-5
    ids = tiny_ids(2, 9)
    assert (replacement_logits(model, tcs, ids) - model(ids)).abs().max() < 1e-4


def test_bad_inputs():
    model = tiny_model("llama")
    tcs = random_transcoders(tiny_model("gemma3"), d_sae=8)
    tcs.n_layers = 5
    with pytest.raises(Exception, match="5 layers"):
        ReplacementModel(model, tcs)
    rm = ReplacementModel(model, random_transcoders(model))
    with pytest.raises(ReplacementError, match="one prompt"):
        rm.prepare(tiny_ids(2, 5))
