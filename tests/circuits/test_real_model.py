"""Circuit tracing on the real default model and Gemma 3 270M (untrained transcoders: the checks are exact)."""

from __future__ import annotations

import pytest
import torch

from mechscope.circuits.attribution import attribute, salient_logits
from mechscope.circuits.interventions import FeatureEdit, constrained_run, mlp_deltas, target_values
from mechscope.circuits.replacement import ReplacementModel
from mechscope.core import names
from mechscope.dictionaries import make_dictionary
from mechscope.dictionaries.transcoder_set import PerLayerTranscoders

PROMPT = "The Eiffel Tower is in the city of"


def _transcoders(model, d_sae: int = 64) -> PerLayerTranscoders:
    d = model.cfg.d_model
    tcs = [make_dictionary("relu", d_in=d, d_sae=d_sae, d_out=d, seed=layer, hook_name_out=names.mlp_out(layer))
           for layer in range(model.cfg.n_layers)]
    for t in tcs:
        with torch.no_grad():
            t.W_dec.mul_(0.05)
    return PerLayerTranscoders(tcs)


@pytest.mark.slow
def test_default_model_graph_is_exact(default_model):
    model = default_model
    tcs = _transcoders(model)
    rm = ReplacementModel(model, tcs)
    state = rm.prepare(PROMPT)
    real = model(state.ids)[0].float()
    assert (rm.local_logits(state) - real).abs().max() < 1e-4
    graph = attribute(model, tcs, PROMPT, max_feature_nodes=128, batch_size=64, replacement=rm)
    assert graph.logit_labels[0] == " Paris"
    vectors = torch.stack([t.vector for t in salient_logits(model, state.logits[-1])])
    base = target_values(rm, graph, constrained_run(rm, state), vectors)[0]
    cols = torch.randperm(graph.n_features, generator=torch.Generator().manual_seed(0))[:50].tolist()
    deltas: dict[int, torch.Tensor] = {}
    for b, col in enumerate(cols):  # copy b of one batched run doubles source b
        layer, pos, feat = graph.active_features[graph.selected_features[col]].tolist()
        for out_layer, delta in mlp_deltas(rm, state, [FeatureEdit(layer, pos, feat, scale=2.0)]).items():
            deltas.setdefault(out_layer, torch.zeros(len(cols), *delta.shape))[b] = delta
    measured = target_values(rm, graph, constrained_run(rm, state, deltas, batch=len(cols)), vectors) - base
    worst = float((measured - graph.adjacency[:, cols].T).abs().max())
    assert worst < 5e-4, worst


@pytest.mark.slow
def test_gemma3_local_replacement_is_exact():
    import mechscope

    model = mechscope.load_model("gemma3-270m")
    rm = ReplacementModel(model, _transcoders(model, d_sae=16))
    state = rm.prepare(PROMPT)
    assert (rm.local_logits(state) - model(state.ids)[0].float()).abs().max() < 1e-4
