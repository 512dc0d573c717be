"""Cross-layer transcoders: training with the existing trainer, circuit-tracer's layout, and graphs."""

from __future__ import annotations

import copy

import pytest
import torch
from circuit_helpers import random_transcoders
from circuit_tracer.transcoder.cross_layer_transcoder import load_clt

from mechscope.circuits.attribution import attribute, salient_logits
from mechscope.circuits.interventions import FeatureEdit, constrained_run, mlp_deltas, target_values
from mechscope.circuits.replacement import ReplacementModel
from mechscope.dictionaries import Trainer, TrainerConfig
from mechscope.dictionaries.clt import CLTConfig, CLTSet, CrossLayerTranscoder
from mechscope.dictionaries.errors import DictionaryConfigError
from mechscope.dictionaries.transcoder_set import PerLayerTranscoders, load_transcoder_set
from tiny_models import tiny_ids, tiny_model


def _clt_like(per_layer, cross_scale: float = 0.0, seed: int = 0) -> CLTSet:
    """A JumpReLU CLT whose same-layer parts copy a per-layer JumpReLU set (cross-layer decoders scaled)."""
    t0 = per_layer.transcoders[0]
    L, d, F = per_layer.n_layers, t0.cfg.d_in, t0.cfg.d_sae
    clt = CrossLayerTranscoder(CLTConfig.make(L, d, F), seed=seed)
    with torch.no_grad():
        for layer, t in enumerate(per_layer.transcoders):
            clt.W_enc[layer].copy_(t.W_enc * t.cfg.input_scale)
            clt.b_enc[layer].copy_(t.b_enc)
            clt.log_threshold[layer].copy_(t.log_threshold)
            clt.W_dec[layer].mul_(cross_scale)
            clt.W_dec[layer][:, 0].copy_(t.W_dec / t.cfg.output_scale)
            clt.b_dec[layer * d:(layer + 1) * d].copy_(t.b_dec / t.cfg.output_scale)
    return CLTSet(clt)


@pytest.fixture(scope="module")
def tiny():
    model = tiny_model("llama")
    per_layer = random_transcoders(model, architecture="jumprelu")
    return model, per_layer


def test_zero_cross_layer_decoders_give_the_per_layer_graph(tiny):
    model, per_layer = tiny
    ids = tiny_ids(1, 8)
    a = attribute(model, per_layer, ids, batch_size=32)
    b = attribute(model, _clt_like(per_layer), ids, batch_size=32)
    assert torch.equal(a.active_features, b.active_features)
    assert a.adjacency.shape == b.adjacency.shape and a.n_features > 20
    assert (a.adjacency - b.adjacency).abs().max() < 1e-5


def test_cross_layer_edges_are_measured_effects(tiny):
    model, per_layer = tiny
    tcs = _clt_like(per_layer, cross_scale=1.0)
    rm = ReplacementModel(model, tcs)
    ids = tiny_ids(1, 8)
    state = rm.prepare(ids)
    assert (rm.local_logits(state) - model(ids)[0]).abs().max() < 1e-4
    graph = attribute(model, tcs, ids, batch_size=16, replacement=rm)
    vectors = torch.stack([t.vector for t in salient_logits(model, state.logits[-1])])
    base = target_values(rm, graph, constrained_run(rm, state), vectors)
    layer0 = (graph.active_features[graph.selected_features, 0] == 0).nonzero().squeeze(1)[:20].tolist()
    worst = 0.0
    for col in layer0:  # layer-0 features write to every layer
        layer, pos, feat = graph.active_features[graph.selected_features[col]].tolist()
        deltas = mlp_deltas(rm, state, [FeatureEdit(layer, pos, feat, scale=2.0)])
        assert len(deltas) == model.cfg.n_layers
        measured = target_values(rm, graph, constrained_run(rm, state, deltas), vectors) - base
        worst = max(worst, float((measured - graph.adjacency[:, col]).abs().max()))
    assert len(layer0) >= 10 and worst < 1e-5


def test_circuit_tracer_layout_round_trip(tiny, tmp_path):
    model, per_layer = tiny
    tcs = _clt_like(per_layer, cross_scale=0.5)
    tcs.clt.cfg.input_scale, tcs.clt.cfg.output_scale = 2.0, 0.5  # stored weights are in model units
    with torch.no_grad():
        tcs.clt.W_enc.div_(2.0)
        for w in tcs.clt.W_dec:
            w.mul_(0.5)
        tcs.clt.b_dec.mul_(0.5)
    tcs.save(tmp_path / "clt")
    back = load_transcoder_set(tmp_path / "clt")
    assert isinstance(back, CLTSet)
    x = torch.randn(model.cfg.n_layers, 6, model.cfg.d_model)
    acts = [tcs.encode(layer, x[layer]) for layer in range(tcs.n_layers)]
    acts_back = [back.encode(layer, x[layer]) for layer in range(tcs.n_layers)]
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(acts, acts_back, strict=True))
    ours = torch.stack(tcs.reconstruct(acts))
    # circuit-tracer reads the same files and reconstructs the same outputs
    ref = load_clt(str(tmp_path / "clt"), dtype=torch.float32, lazy_decoder=False, device=torch.device("cpu"))
    assert torch.allclose(ref(x), ours, atol=1e-5)
    assert torch.allclose(torch.stack(back.reconstruct(acts_back)), ours, atol=1e-5)


@pytest.mark.parametrize("activation", ["jumprelu", "topk"])
def test_trains_with_the_existing_trainer(tiny, activation):
    model, _ = tiny
    L, d = model.cfg.n_layers, model.cfg.d_model
    gen = torch.Generator().manual_seed(0)
    mix = torch.randn(L * d, L * d, generator=gen) / (L * d) ** 0.5

    def batches():
        while True:
            x = torch.randn(256, L * d, generator=gen)
            yield x, (x @ mix).relu()

    extra = {"k": 8} if activation == "topk" else {"sparsity_coefficient": 1e-4}
    clt = CrossLayerTranscoder(CLTConfig.make(L, d, 32, activation=activation, **extra), seed=0)
    x, y = next(batches())

    def fvu() -> float:  # fraction of variance unexplained, model units
        with torch.no_grad():
            return float((clt(x, y).reconstruction - y).pow(2).sum() / (y - y.mean(0)).pow(2).sum())

    before = fvu()
    result = Trainer(clt, TrainerConfig(total_steps=150, lr=3e-3, progress=False, log_every=150, resample_every=0)).fit(batches())
    assert result.steps == 150
    assert fvu() < 0.55 * before, (before, fvu())
    assert clt.encode(x).shape == (256, L * 32)


def test_bad_configs():
    with pytest.raises(DictionaryConfigError, match="topk needs"):
        CLTConfig.make(2, 4, 8, activation="topk")
    with pytest.raises(DictionaryConfigError, match="use CLTConfig.make"):
        CLTConfig(d_in=8, d_sae=16, n_layers=2, d_model=4, features_per_layer=4)


@pytest.mark.parametrize("architecture", ["jumprelu", "relu"])
def test_per_layer_circuit_tracer_layout(tiny, tmp_path, architecture):
    from circuit_tracer.transcoder.single_layer_transcoder import load_relu_transcoder

    model, per_layer = tiny
    tcs = copy.deepcopy(per_layer) if architecture == "jumprelu" else random_transcoders(model)
    tcs.transcoders[1].cfg.input_scale, tcs.transcoders[1].cfg.output_scale = 3.0, 0.25
    files = tcs.save_circuit_tracer(tmp_path / "ct")
    back = PerLayerTranscoders.from_circuit_tracer(files)
    x = torch.randn(7, model.cfg.d_model) * 3
    for layer, path in enumerate(files):
        ours = tcs.encode(layer, x)
        assert ours.count_nonzero() > 0
        assert torch.allclose(back.encode(layer, x), ours, atol=1e-5)
        ref = load_relu_transcoder(str(path), layer, device=torch.device("cpu"), lazy_encoder=False, lazy_decoder=False)
        assert torch.allclose(ref.encode(x), ours, atol=1e-5)
        assert torch.allclose(ref.decode(ours), tcs.decode_to(layer, [ours] * (layer + 1)), atol=1e-5)
