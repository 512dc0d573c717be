"""Skip transcoders: `W_skip` starts at zero, is trained jointly, and survives every on-disk layout."""

from __future__ import annotations

import pytest
import torch

from mechscope.dictionaries import make_dictionary
from mechscope.dictionaries.errors import DictionaryConfigError
from mechscope.dictionaries.formats import load_dictionary, save_dictionary
from mechscope.dictionaries.trainer import Trainer, TrainerConfig
from mechscope.dictionaries.transcoder_set import PerLayerTranscoders, load_transcoder_set

D, F = 16, 32
ARCHS = {"relu": {}, "jumprelu": {}, "topk": {"k": 4}, "batchtopk": {"k": 4}, "gated": {}}


def _skip_transcoder(arch: str = "jumprelu", seed: int = 0, skip: bool = True, **fields):
    t = make_dictionary(arch, d_in=D, d_sae=F, d_out=D, hook_name_out="blocks.0.hook_mlp_out", skip=skip,
                        seed=seed, **{**ARCHS[arch], **fields})
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        if skip:
            t.W_skip.copy_(0.3 * torch.randn(D, D, generator=gen))
        t.b_enc.copy_(0.1 * torch.randn(F, generator=gen))
        t.b_dec.copy_(0.1 * torch.randn(D, generator=gen))
        if arch == "jumprelu":
            t.log_threshold.copy_(torch.log(0.05 + 0.2 * torch.rand(F, generator=gen)))
    return t.eval()


def _x(n: int = 24, seed: int = 5) -> torch.Tensor:
    return torch.randn(n, D, generator=torch.Generator().manual_seed(seed))


def test_skip_starts_at_zero_and_needs_a_transcoder():
    t = make_dictionary("jumprelu", d_in=D, d_sae=F, d_out=D, hook_name_out="blocks.0.hook_mlp_out", skip=True)
    assert t.W_skip.shape == (D, D) and t.W_skip.abs().sum() == 0
    assert t.cfg.to_dict()["skip"] is True
    plain = make_dictionary("jumprelu", d_in=D, d_sae=F, d_out=D, hook_name_out="blocks.0.hook_mlp_out")
    assert "skip" not in plain.cfg.to_dict() and not hasattr(plain, "W_skip")
    with pytest.raises(DictionaryConfigError, match="needs a transcoder"):
        make_dictionary("relu", d_in=D, d_sae=F, skip=True)
    with pytest.raises(DictionaryConfigError, match="pass the input too"):
        t.decode(torch.zeros(3, F))


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_forward_adds_the_skip_term_and_trains_it(arch):
    t = _skip_transcoder(arch, input_scale=2.0, output_scale=0.5).train()
    x, y = _x(), _x(seed=6)
    out = t(x, y)
    f = t.encode(x)
    expected = (f @ t.W_dec + t.b_dec) / 0.5 + (x * 2.0) @ t.W_skip.T / 0.5
    torch.testing.assert_close(out.reconstruction, expected, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(t.decode(f, x), expected, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(t.skip_output(x), x @ t.skip_weight().T, atol=1e-5, rtol=1e-5)
    # the loss's MSE is that of the full prediction, and W_skip receives its gradient
    torch.testing.assert_close(out.losses["mse"], ((expected - y) * 0.5).pow(2).sum(-1).mean(), atol=1e-4, rtol=1e-4)
    out.loss.backward()
    assert t.W_skip.grad is not None and t.W_skip.grad.abs().sum() > 0


def test_training_learns_a_linear_map_the_features_cannot():
    """Targets `A x` (a dense linear map) with few features: the skip transcoder fits them, the plain one does not."""
    gen = torch.Generator().manual_seed(0)
    A = torch.randn(D, D, generator=gen) / D**0.5
    xs = torch.randn(64 * 128, D, generator=gen)
    ys = xs @ A.T

    def fit(skip: bool) -> float:
        t = make_dictionary("topk", d_in=D, d_sae=8, d_out=D, k=1, hook_name_out="blocks.0.hook_mlp_out",
                            skip=skip, seed=0)
        batches = ((xs[i:i + 128], ys[i:i + 128]) for i in range(0, len(xs), 128))
        Trainer(t, TrainerConfig(total_steps=64, lr=1e-2, progress=False, log_every=1000)).fit(batches)
        with torch.no_grad():
            x, y = _x(512, 9), _x(512, 9) @ A.T
            return float((t.decode(t.encode(x), x) - y).pow(2).sum() / (y - y.mean(0)).pow(2).sum())

    with_skip, without = fit(True), fit(False)
    assert with_skip < 0.05, with_skip
    assert without > 0.3, without


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_mechscope_layout_round_trip(arch, tmp_path):
    t = _skip_transcoder(arch, input_scale=3.0, output_scale=0.25)
    back = load_dictionary(save_dictionary(t, tmp_path / arch)).eval()
    assert back.cfg.skip and back.cfg.to_dict() == t.cfg.to_dict()
    torch.testing.assert_close(back.W_skip, t.W_skip)
    x = _x()
    torch.testing.assert_close(back.decode(back.encode(x), x), t.decode(t.encode(x), x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", ["relu", "jumprelu"])
def test_saelens_skip_transcoders_read_our_files(arch, tmp_path):
    sae_lens = pytest.importorskip("sae_lens")
    t = _skip_transcoder(arch, input_scale=3.0, output_scale=0.25)
    folder = save_dictionary(t, tmp_path / arch)
    theirs = sae_lens.SAE.load_from_disk(folder)
    assert type(theirs).__name__ == {"relu": "SkipTranscoder", "jumprelu": "JumpReLUSkipTranscoder"}[arch]
    x = _x()
    with torch.no_grad():
        mine = t.decode(t.encode(x), x)
        assert t.encode(x).count_nonzero() > 0
        torch.testing.assert_close(theirs(x), mine, atol=1e-4, rtol=1e-4)
    # a folder without our config block (as SAELens writes it) loads as a skip transcoder too
    import json

    cfg = json.loads((folder / "cfg.json").read_text())
    del cfg["mechscope"]
    (folder / "cfg.json").write_text(json.dumps(cfg))
    back = load_dictionary(folder)
    assert back.cfg.skip
    torch.testing.assert_close(back.decode(back.encode(x), x), mine, atol=1e-4, rtol=1e-4)


def _set(skips: list[bool]) -> PerLayerTranscoders:
    tcs = []
    for layer, skip in enumerate(skips):
        t = _skip_transcoder("jumprelu", seed=layer, skip=skip, input_scale=1.5, output_scale=0.5)
        t.cfg.hook_name_out = f"blocks.{layer}.hook_mlp_out"
        t.cfg.apply_b_dec_to_input = False
        tcs.append(t)
    return PerLayerTranscoders(tcs)


def test_set_reconstruction_includes_the_skip_term(tmp_path):
    tcs = _set([True, False])
    assert tcs.has_skip
    x = [_x(seed=1), _x(seed=2)]
    acts = [tcs.encode(layer, x[layer]) for layer in range(2)]
    recon = tcs.reconstruct(acts, x)
    for layer, t in enumerate(tcs.transcoders):
        torch.testing.assert_close(recon[layer], t.decode(acts[layer], x[layer]), atol=1e-5, rtol=1e-5)
    assert (recon[0] - tcs.decode_to(0, acts)).abs().max() > 1e-2  # the skip term is there
    with pytest.raises(DictionaryConfigError, match="needs the MLP inputs"):
        tcs.reconstruct(acts)
    back = load_transcoder_set(tcs.save(tmp_path / "set"))
    torch.testing.assert_close(back.reconstruct(acts, x)[0], recon[0], atol=1e-5, rtol=1e-5)


def test_circuit_tracer_layout_loads_in_circuit_tracer_and_back(tmp_path):
    """Our `W_skip` file loads in circuit-tracer's own loader with the same outputs, and back with equal weights."""
    pytest.importorskip("circuit_tracer")
    from circuit_tracer.transcoder.single_layer_transcoder import TranscoderSet, load_relu_transcoder
    from safetensors.torch import load_file

    tcs = _set([True, True])
    files = tcs.save_circuit_tracer(tmp_path / "ct")
    refs = {layer: load_relu_transcoder(str(p), layer, device=torch.device("cpu"), lazy_encoder=False,
                                        lazy_decoder=False) for layer, p in enumerate(files)}
    ref_set = TranscoderSet(refs, feature_input_hook="ln2.hook_normalized", feature_output_hook="hook_mlp_out")
    assert ref_set.skip_connection
    back = PerLayerTranscoders.from_circuit_tracer(files)
    for layer in range(len(files)):
        x = _x(seed=10 + layer) * 2
        ours = tcs.encode(layer, x)
        assert ours.count_nonzero() > 0
        with torch.no_grad():
            torch.testing.assert_close(refs[layer].encode(x), ours, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(refs[layer](x), tcs.transcoders[layer].decode(ours, x), atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(ref_set.compute_skip(layer, x), tcs.skip(layer, x), atol=1e-5, rtol=1e-5)
        # back: equal model-unit weights, and a second write gives the same file contents
        t, b = tcs.transcoders[layer], back.transcoders[layer]
        assert b.cfg.skip
        torch.testing.assert_close(b.skip_weight(), t.skip_weight(), atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(b.W_enc * b.cfg.input_scale, t.W_enc * t.cfg.input_scale, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(b.W_dec / b.cfg.output_scale, t.W_dec / t.cfg.output_scale, atol=1e-6, rtol=1e-6)
    again = back.save_circuit_tracer(tmp_path / "again")
    for first, second in zip(files, again, strict=True):
        a, b = load_file(str(first)), load_file(str(second))
        assert sorted(a) == sorted(b) and "W_skip" in a
        for key in a:
            torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=1e-6)


def test_circuit_tracer_layout_of_a_mixed_set_has_zero_skips(tmp_path):
    from safetensors.torch import load_file

    files = _set([True, False]).save_circuit_tracer(tmp_path / "ct")
    w0, w1 = load_file(str(files[0])), load_file(str(files[1]))
    assert w0["W_skip"].abs().sum() > 0 and w1["W_skip"].abs().sum() == 0


def test_splice_and_evaluation_use_the_skip_term():
    """Spliced into a model (no error term), a skip transcoder's site holds decode(f, x); evaluation counts it."""
    from mechscope.core import names
    from mechscope.dictionaries.evaluate import evaluate_activations
    from mechscope.dictionaries.splice import run_with_sae
    from tiny_models import tiny_ids, tiny_model

    model = tiny_model("llama")
    d = model.cfg.d_model
    t = make_dictionary("relu", d_in=d, d_sae=F, d_out=d, hook_name=names.ln2(0), hook_name_out=names.mlp_out(0),
                        skip=True, seed=0)
    with torch.no_grad():
        t.W_skip.copy_(0.3 * torch.randn(d, d, generator=torch.Generator().manual_seed(1)) / d**0.5)
    ids = tiny_ids(1, 6)
    seen = {}

    def keep(act, hook):
        seen[hook.name] = act.detach().clone()

    run_with_sae(model, ids, t, fwd_hooks=[(names.ln2(0), keep), (names.mlp_out(0), keep)])
    x = seen[names.ln2(0)][0]
    torch.testing.assert_close(seen[names.mlp_out(0)][0], t.decode(t.encode(x), x), atol=1e-5, rtol=1e-5)
    y = t.decode(t.encode(x), x)
    exact = evaluate_activations(t, [x], [y])
    assert exact.fvu < 1e-6
    with torch.no_grad():
        t.W_skip.zero_()
    assert evaluate_activations(t, [x], [y]).fvu > 1e-3
