"""Feature interventions: free mode equals editing the real MLP's hidden units when MLPs are transcoders."""

from __future__ import annotations

import pytest
import torch
from circuit_helpers import model_made_of_transcoders, random_transcoders

from mechscope.circuits.interventions import FeatureEdit, constrained_run, generate, intervene, mlp_deltas
from mechscope.circuits.replacement import ReplacementModel
from mechscope.core import names
from tiny_models import tiny_ids, tiny_model


@pytest.fixture(scope="module")
def exact():
    model, tcs = model_made_of_transcoders()
    rm = ReplacementModel(model, tcs, zero_positions=0)
    ids = tiny_ids(1, 8)
    return model, rm, ids, rm.prepare(ids)


@pytest.mark.parametrize("edit", [dict(value=0.0), dict(scale=3.0), dict(value=2.5)])
def test_free_mode_equals_editing_the_real_mlp(exact, edit):
    model, rm, ids, state = exact
    layer, pos = 1, 5
    feat = int(state.features[layer][pos].argmax())
    assert state.features[layer][pos, feat] > 0
    got = intervene(rm, state, [FeatureEdit(layer, pos, feat, **edit)], mode="free")

    def hidden(act, hook):
        act = act.clone()
        old = act[0, pos, feat]
        act[0, pos, feat] = old * edit["scale"] if "scale" in edit else edit["value"]
        return act

    want = model.run_with_hooks(ids, fwd_hooks=[(names.mlp_post(layer), hidden)])[0]
    assert (got - want).abs().max() < 1e-4
    assert (got - state.logits).abs().max() > 1e-3  # the edit did something


def test_constrained_mode_is_the_direct_effect(exact):
    """In constrained mode the MLPs are frozen: an edit at the last layer moves the logits linearly."""
    model, rm, ids, state = exact
    layer = model.cfg.n_layers - 1
    feat = int(state.features[layer][-1].argmax())
    a = float(state.features[layer][-1, feat])
    once = intervene(rm, state, [FeatureEdit(layer, 7, feat, value=2 * a)]) - state.logits
    twice = intervene(rm, state, [FeatureEdit(layer, 7, feat, value=3 * a)]) - state.logits
    assert (twice - 2 * once).abs().max() < 1e-4
    assert once.abs().max() > 1e-4
    base = constrained_run(rm, state)
    assert (base.logits - state.logits).abs().max() < 1e-4
    deltas = mlp_deltas(rm, state, [FeatureEdit(layer, None, feat, value=0.0)])
    assert set(deltas) == {layer}


def test_generate_and_bad_edits():
    model = tiny_model("llama")
    rm = ReplacementModel(model, random_transcoders(model))
    ids = tiny_ids(1, 6)
    plain = generate(rm, ids, [], max_new_tokens=4)
    assert plain.shape == (10,) and torch.equal(plain[:6], ids[0])
    steered = generate(rm, ids, [FeatureEdit(2, None, 0, value=200.0)], max_new_tokens=4)
    assert not torch.equal(steered, plain)
    with pytest.raises(Exception, match="no feature"):
        intervene(rm, rm.prepare(ids), [FeatureEdit(9, 0, 0, value=1.0)])
    with pytest.raises(Exception, match="value or a scale"):
        FeatureEdit(0, 0, 0)
