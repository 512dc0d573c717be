"""Splicing dictionaries into a model: exact with the error term, reconstruction without, clear width errors."""

from __future__ import annotations

import pytest
import torch

from mechscope.dictionaries import make_dictionary
from mechscope.dictionaries.errors import DictionaryConfigError
from mechscope.dictionaries.splice import (
    feature_attribution,
    run_with_sae,
    run_with_sae_cache,
    sae_features,
    sae_hook_names,
    spliced,
)
from tiny_models import tiny_ids, tiny_model

SITE = "blocks.1.hook_resid_post"


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama")


def _sae(arch: str = "topk", d_in: int = 64, hook: str = SITE, **kw):
    extra = {"k": 8} if arch in ("topk", "batchtopk") else {}
    return make_dictionary(arch, d_in=d_in, d_sae=128, hook_name=hook, seed=0, **extra, **kw)


@pytest.mark.parametrize("arch", ["topk", "relu", "jumprelu"])
def test_error_term_gives_clean_logits(model, arch):
    ids = tiny_ids(2, 12)
    sae = _sae(arch)
    clean = model(ids)
    with_error = run_with_sae(model, ids, sae, use_error_term=True)
    without = run_with_sae(model, ids, sae)
    torch.testing.assert_close(with_error, clean, atol=1e-5, rtol=1e-5)
    assert (without - clean).abs().max() > 1e-2  # a random SAE changes the output when spliced


def test_splice_replaces_the_site_by_the_reconstruction(model):
    ids = tiny_ids(2, 12)
    sae = _sae()
    _, cache = model.run_with_cache(ids, names=[SITE])
    recon = sae(cache[SITE].reshape(-1, 64)).reconstruction.reshape(2, 12, 64)
    expected = model.run_with_hooks(ids, fwd_hooks=[(SITE, lambda act, hook: recon)])
    torch.testing.assert_close(run_with_sae(model, ids, sae), expected, atol=1e-5, rtol=1e-5)
    with spliced(model, sae):
        torch.testing.assert_close(model(ids), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model(ids), model.run_with_hooks(ids), atol=0, rtol=0)  # hooks removed


def test_features_and_errors(model):
    ids = tiny_ids(2, 12)
    sae = _sae()
    _, cache = model.run_with_cache(ids, names=[SITE])
    x = cache[SITE].reshape(-1, 64)
    feats = sae_features(model, sae, ids)
    assert feats.shape == (2, 12, 128)
    torch.testing.assert_close(feats.reshape(-1, 128), sae.encode(x), atol=1e-6, rtol=1e-6)
    res = run_with_sae_cache(model, ids, sae, use_error_term=True)
    torch.testing.assert_close(res.features[SITE], feats, atol=1e-6, rtol=1e-6)
    error = res.errors[SITE].reshape(-1, 64)
    torch.testing.assert_close(error, x - sae(x).reconstruction, atol=1e-5, rtol=1e-5)


def test_per_head_site_and_transcoder(model):
    ids = tiny_ids(2, 8)
    z = "blocks.0.attn.hook_z"
    sae = _sae("relu", d_in=64, hook=z)
    torch.testing.assert_close(run_with_sae(model, ids, sae, use_error_term=True), model(ids), atol=1e-5, rtol=1e-5)
    tc = make_dictionary("relu", d_in=64, d_out=64, d_sae=128, hook_name="blocks.0.ln2.hook_normalized",
                         hook_name_out="blocks.0.hook_mlp_out", seed=0)
    _, cache = model.run_with_cache(ids, names=["blocks.0.ln2.hook_normalized"])
    pred = tc.decode(tc.encode(cache["blocks.0.ln2.hook_normalized"].reshape(-1, 64))).reshape(2, 8, 64)
    expected = model.run_with_hooks(ids, fwd_hooks=[("blocks.0.hook_mlp_out", lambda act, hook: pred)])
    torch.testing.assert_close(run_with_sae(model, ids, tc), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(run_with_sae(model, ids, tc, use_error_term=True), model(ids), atol=1e-5, rtol=1e-5)


def test_width_mismatch_names_both_widths(model):
    sae = _sae(d_in=32)
    with pytest.raises(DictionaryConfigError, match=r"width is 32.*width 64"):
        run_with_sae(model, tiny_ids(1, 4), sae)
    with pytest.raises(DictionaryConfigError, match=r"width is 32.*width 64"):
        sae_features(model, sae, tiny_ids(1, 4))
    with pytest.raises(DictionaryConfigError, match="hook_name"):
        sae_features(model, make_dictionary("relu", d_in=64, d_sae=8), tiny_ids(1, 4))


# -- gradients through spliced dictionaries ------------------------------------------------------

@pytest.fixture
def model64():
    """GPT-2 in float64 (Llama's RMSNorm computes in float32 whatever the dtype, too coarse for differences)."""
    m = tiny_model("gpt2", seed=3)
    m.hf_model.double()
    return m


def _metric(logits):
    return logits[:, -1, 5] - logits[:, -1, 7]


@pytest.mark.parametrize("use_error_term", [True, False])
@pytest.mark.parametrize("arch", ["relu", "topk"])
def test_feature_gradients_equal_finite_differences(model64, arch, use_error_term):
    """dM/df from autograd equals central differences of M with one latent nudged at one position."""
    ids = tiny_ids(2, 7)
    sae = _sae(arch).double()
    name = f"{SITE}.hook_sae_acts_post"
    with torch.enable_grad():
        res = run_with_sae_cache(model64, ids, sae, use_error_term=use_error_term)
        grad, = torch.autograd.grad(_metric(res.logits).sum(), res.features[SITE])
    assert grad.abs().max() > 1e-3  # the old splice gave exactly zero with the error term
    feats = res.features[SITE].detach()
    eps = 1e-4
    active = feats[1, 4].nonzero().flatten()[:3].tolist()
    for pos, latent in [(4, j) for j in active] + [(2, 0), (6, 3)]:
        def nudge(delta, _pos=pos, _latent=latent):
            def fn(act, hook):
                act = act.clone()
                act[:, _pos, _latent] += delta
                return act
            with torch.no_grad():
                return float(_metric(run_with_sae(model64, ids, sae, use_error_term=use_error_term,
                                                  fwd_hooks=[(name, fn)])).sum())
        fd = (nudge(eps) - nudge(-eps)) / (2 * eps)
        auto = float(grad[:, pos, latent].sum())
        assert abs(fd - auto) <= 1e-3 * max(abs(fd), 1e-3), f"latent {latent} pos {pos}: fd {fd:.6g} autograd {auto:.6g}"


def test_error_term_is_a_constant_and_editing_nothing_changes_nothing(model64):
    ids = tiny_ids(2, 7)
    sae = _sae("relu").double()
    clean = model64(ids)
    kept = run_with_sae(model64, ids, sae, use_error_term=True,
                        fwd_hooks=[(f"{SITE}.hook_sae_acts_post", lambda a, h: a.clone())])
    torch.testing.assert_close(kept, clean, atol=1e-10, rtol=0)
    with torch.enable_grad():
        res = run_with_sae_cache(model64, ids, sae, use_error_term=True)
    assert not res.errors[SITE].requires_grad and res.features[SITE].requires_grad


def test_dictionary_hook_points_read_and_edit(model64):
    ids = tiny_ids(1, 6)
    sae = _sae("relu").double()
    seen = {}

    def keep(act, hook):
        seen[hook.name] = (act.clone(), hook.layer())

    res = run_with_sae_cache(model64, ids, sae, use_error_term=True,
                             fwd_hooks=[(n, keep) for n in sae_hook_names(sae)])
    _, cache = model64.run_with_cache(ids, names=[SITE])
    feats, layer = seen[f"{SITE}.hook_sae_acts_post"]
    assert layer == 1
    torch.testing.assert_close(feats, res.features[SITE])
    recon = seen[f"{SITE}.hook_sae_recons"][0]
    torch.testing.assert_close(recon + seen[f"{SITE}.hook_sae_error"][0], cache[SITE], atol=1e-10, rtol=0)
    # zeroing the error term by its hook point is the same as splicing without it
    no_error = run_with_sae(model64, ids, sae, use_error_term=True,
                            fwd_hooks=[(f"{SITE}.hook_sae_error", lambda a, h: a * 0)])
    torch.testing.assert_close(no_error, run_with_sae(model64, ids, sae), atol=1e-10, rtol=0)
    with pytest.raises(DictionaryConfigError, match="hook_sae_acts_post"):
        run_with_sae(model64, ids, sae, fwd_hooks=[(f"{SITE}.hook_sae_acts", keep)])


def test_feature_attribution_is_grad_times_delta(model64):
    """Attribution patching on latents: estimate = (f_clean - f_corrupt) * grad; checked against a
    real feature patch, which it predicts to first order (exactly, as the patch shrinks)."""
    clean, corrupt = tiny_ids(1, 7, seed=4), tiny_ids(1, 7, seed=5)
    sae = _sae("relu").double()
    attr = feature_attribution(model64, clean, corrupt, sae, _metric)[SITE]
    assert attr.shape == (1, 7, 128)
    f_clean = run_with_sae_cache(model64, clean, sae, use_error_term=True).features[SITE]
    f_corrupt = run_with_sae_cache(model64, corrupt, sae, use_error_term=True).features[SITE]
    base = float(_metric(model64(corrupt)).sum().detach())
    pos, latent = divmod(int((f_clean - f_corrupt)[0].abs().argmax()), 128)
    t = 1e-4  # patch a small fraction of the way: the change is t * attribution + O(t^2)

    def patch(act, hook):
        act = act.clone()
        act[:, pos, latent] += t * (f_clean - f_corrupt)[:, pos, latent]
        return act

    patched = float(_metric(run_with_sae(model64, corrupt, sae, use_error_term=True,
                                         fwd_hooks=[(f"{SITE}.hook_sae_acts_post", patch)])).sum().detach())
    estimate = float(attr[0, pos, latent])
    assert abs((patched - base) / t - estimate) <= 1e-3 * max(abs(estimate), 1e-3)
