"""Splicing dictionaries into a model: exact with the error term, reconstruction without, clear width errors."""

from __future__ import annotations

import pytest
import torch

from mechscope.dictionaries import make_dictionary
from mechscope.dictionaries.errors import DictionaryConfigError
from mechscope.dictionaries.splice import run_with_sae, run_with_sae_cache, sae_features, spliced
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
