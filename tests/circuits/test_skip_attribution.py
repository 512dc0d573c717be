"""Attribution with skip transcoders: the skip term is linear in the MLP input, so it is part of the
frozen replacement model; edges stay measured direct effects, and both scores are 1.0 on a model whose
MLPs are exactly their skip transcoders."""

from __future__ import annotations

import pytest
import torch
from circuit_helpers import TranscoderMLP, random_transcoders

from mechscope.circuits.attribution import attribute, salient_logits
from mechscope.circuits.graph import graph_scores
from mechscope.circuits.interventions import FeatureEdit, constrained_run, mlp_deltas, target_values
from mechscope.circuits.replacement import ReplacementModel, replacement_logits
from mechscope.dictionaries import make_dictionary
from mechscope.dictionaries.transcoder_set import PerLayerTranscoders
from tiny_models import tiny_ids, tiny_model


def skip_transcoders(model, d_sae: int = 32, seed: int = 0, scale: float = 0.2) -> PerLayerTranscoders:
    """`random_transcoders` with a random skip matrix on every layer (and non-trivial unit scales)."""
    d = model.cfg.d_model
    base = random_transcoders(model, d_sae=d_sae, seed=seed)
    tcs = []
    for layer, t in enumerate(base.transcoders):
        cfg = {**t.cfg.to_dict(), "skip": True}
        del cfg["architecture"]
        s = make_dictionary(t.cfg.architecture, **cfg)
        s.load_state_dict({**t.state_dict(), "W_skip": scale * torch.randn(
            d, d, generator=torch.Generator().manual_seed(seed + 200 + layer)) / d**0.5})
        s.cfg.input_scale, s.cfg.output_scale = 1.5, 0.75
        with torch.no_grad():  # keep the same model-unit features after the rescale
            s.W_enc.div_(1.5)
            s.W_dec.mul_(0.75)
            s.b_dec.mul_(0.75)
        tcs.append(s)
    return PerLayerTranscoders(tcs)


class SkipTranscoderMLP(TranscoderMLP):
    """An MLP that computes exactly a ReLU skip transcoder: `down(relu(gate(x))) + x @ W_skip.T`."""

    def __init__(self, transcoder) -> None:
        super().__init__(transcoder)
        self.register_buffer("skip_weight", transcoder.skip_weight().detach().clone())

    def forward(self, x):
        return super().forward(x) + x @ self.skip_weight.T


def model_made_of_skip_transcoders(seed: int = 0):
    from mechscope import HookedModel
    from tiny_models import tiny_hf_model

    hf = tiny_hf_model("llama", seed)
    tcs = skip_transcoders(HookedModel(hf, name="tiny-llama"), seed=seed)
    for layer, t in zip(hf.model.layers, tcs.transcoders, strict=True):
        layer.mlp = SkipTranscoderMLP(t)
    return HookedModel(hf, name="tiny-llama-skip-transcoder-mlps"), tcs


@pytest.fixture(scope="module")
def setup():
    model = tiny_model("llama")
    tcs = skip_transcoders(model)
    rm = ReplacementModel(model, tcs)
    ids = tiny_ids(1, 8)
    return model, tcs, rm, ids, attribute(model, tcs, ids, replacement=rm)


def test_the_skip_term_is_in_the_reconstruction_and_the_local_model_is_exact(setup):
    model, tcs, rm, ids, _ = setup
    state = rm.prepare(ids)
    for layer in range(model.cfg.n_layers):
        skip = tcs.skip(layer, state.mlp_in[layer])
        assert skip.abs().max() > 1e-2
        expected = tcs.decode_to(layer, state.features) + skip
        torch.testing.assert_close(state.reconstruction[layer], expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(rm.local_logits(state), state.logits, atol=1e-4, rtol=1e-4)


def test_edges_equal_measured_direct_effects_through_skip_paths(setup):
    """Doubling a source in the constrained model (where skip terms follow their live inputs) moves each
    target by its edge weight; without the skip paths in the gradient the edges would differ.

    The tiny model's norms amplify strongly (its residual stream is small), so edges reach the
    hundreds and the comparison is relative to each column's largest edge (float32 rounding)."""
    model, tcs, rm, ids, graph = setup
    state = rm.prepare(ids)
    vectors = torch.stack([t.vector for t in salient_logits(model, state.logits[-1])])
    base = target_values(rm, graph, constrained_run(rm, state), vectors)
    sources = torch.randperm(graph.n_features, generator=torch.Generator().manual_seed(0))[:50].tolist()
    worst = 0.0

    def error(run, col: int) -> float:
        edges = graph.adjacency[:, col]
        return float((target_values(rm, graph, run, vectors) - base - edges).abs().max() / (1 + edges.abs().max()))

    for col in sources:
        layer, pos, feat = graph.active_features[graph.selected_features[col]].tolist()
        run = constrained_run(rm, state, mlp_deltas(rm, state, [FeatureEdit(layer, pos, feat, scale=2.0)]))
        worst = max(worst, error(run, col))
    P = state.n_pos
    for layer, pos in [(0, 3), (model.cfg.n_layers - 1, P - 1)]:  # error nodes
        delta = torch.zeros(P, model.cfg.d_model)
        delta[pos] = state.errors[layer][pos]
        run = constrained_run(rm, state, {layer: delta})
        worst = max(worst, error(run, graph.error_slice.start + layer * P + pos))
    for pos in range(P):  # token nodes
        delta = torch.zeros(P, model.cfg.d_model)
        delta[pos] = state.embed[pos]
        run = constrained_run(rm, state, embed_delta=delta)
        worst = max(worst, error(run, graph.token_slice.start + pos))
    assert worst < 1e-5, worst
    # the same transcoders without their skip terms give other edges: the skip paths are counted
    plain = random_transcoders(model)
    for t_plain, t_skip in zip(plain.transcoders, tcs.transcoders, strict=True):
        t_plain.cfg.input_scale, t_plain.cfg.output_scale = 1.5, 0.75
        t_plain.load_state_dict({k: v for k, v in t_skip.state_dict().items() if k != "W_skip"})
    no_skip = attribute(model, plain, ids)
    assert no_skip.active_features.shape == graph.active_features.shape
    assert (no_skip.adjacency - graph.adjacency).abs().max() > 1e-3


def test_scores_are_one_when_mlps_are_skip_transcoders():
    model, tcs = model_made_of_skip_transcoders()
    ids = tiny_ids(1, 8)
    torch.testing.assert_close(replacement_logits(model, tcs, ids), model(ids), atol=1e-4, rtol=1e-4)
    rm = ReplacementModel(model, tcs, zero_positions=0)
    state = rm.prepare(ids)
    assert max(float(e.abs().max()) for e in state.errors) < 1e-5
    graph = attribute(model, tcs, ids, replacement=rm)
    assert graph.info["skip"] is True
    scores = graph_scores(graph)
    assert scores.replacement == pytest.approx(1.0, abs=1e-6)
    assert scores.completeness == pytest.approx(1.0, abs=1e-6)
    # the same set without its skip terms leaves them in the error nodes: both scores fall
    for t in tcs.transcoders:
        with torch.no_grad():
            t.W_skip.zero_()
    zeroed = graph_scores(attribute(model, tcs, ids, replacement=ReplacementModel(model, tcs, zero_positions=0)))
    assert zeroed.replacement < 0.99 and zeroed.completeness < 0.99

