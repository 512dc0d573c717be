"""Evaluation: formulas against hand computations, and downstream loss at its two extremes."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mechscope.core.corpus import iter_token_contexts
from mechscope.dictionaries import make_dictionary
from mechscope.dictionaries.evaluate import density_figure, evaluate_activations, evaluate_dictionary
from mechscope.dictionaries.metrics import explained_variance
from tiny_lm import tiny_lm, write_corpus

SITE = "blocks.1.hook_resid_post"
D = 64


@pytest.fixture(scope="module")
def model():
    return tiny_lm("llama")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus"))


def _identity_sae():
    """ReLU SAE with W_enc = [I, -I], W_dec = [I; -I]: relu(x) - relu(-x) = x exactly."""
    sae = make_dictionary("relu", d_in=D, d_sae=2 * D, hook_name=SITE)
    eye = torch.eye(D)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], 1))
        sae.W_dec.copy_(torch.cat([eye, -eye], 0))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


def _eval(sae, model, corpus, **kw):
    return evaluate_dictionary(sae, model, source=corpus, split=None, n_tokens=300, context_length=16,
                               batch_size=4, **kw)


def test_exact_reconstruction_recovers_all_loss(model, corpus):
    r = _eval(_identity_sae(), model, corpus)
    assert r.n_tokens == 20 * 15  # 20 contexts of 16 tokens, BOS left out
    assert r.mse < 1e-9 and r.explained_variance == pytest.approx(1.0, abs=1e-9)
    assert r.ce_sae == pytest.approx(r.ce_clean, abs=1e-5)
    assert r.ce_loss_recovered == pytest.approx(1.0, abs=1e-4) and r.kl == pytest.approx(0.0, abs=1e-6)
    assert r.ce_zero > r.ce_clean
    # The clean CE equals a hand computation over the same contexts.
    ids = torch.cat(list(iter_token_contexts(model.tokenizer, corpus, 16, batch_size=4, max_contexts=20, split=None)))
    with torch.no_grad():
        logits = model(ids)
    ce = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).double(), ids[:, 1:].reshape(-1))
    assert r.ce_clean == pytest.approx(float(ce), rel=1e-6)


def test_zero_decoder_recovers_nothing(model, corpus):
    sae = _identity_sae()
    with torch.no_grad():
        sae.W_dec.zero_()
    r = _eval(sae, model, corpus)
    assert r.ce_loss_recovered == pytest.approx(0.0, abs=1e-6) and r.ce_sae == pytest.approx(r.ce_zero)
    assert r.explained_variance < 0 and r.kl > 0


def test_partial_reconstruction_is_between(model, corpus):
    sae = make_dictionary("topk", d_in=D, d_sae=128, k=4, hook_name=SITE, seed=0)
    r = _eval(sae, model, corpus)
    assert r.l0 == pytest.approx(4.0)
    assert math.isfinite(r.ce_loss_recovered) and r.kl > 0
    d = r.to_dict()
    for key in ("mse", "explained_variance", "l0", "dead_fraction", "dense_fraction", "ce_loss_recovered", "kl"):
        assert isinstance(d[key], float), key
    assert sum(d["density_histogram"]["counts"]) + d["density_histogram"]["dead"] == 128


def test_reconstruction_metrics_match_formulas():
    gen = torch.Generator().manual_seed(0)
    sae = make_dictionary("topk", d_in=16, d_sae=32, k=3, seed=1)
    with torch.no_grad():
        sae.b_enc[:4] = -1e6  # never fire
        sae.b_enc[4:6] = 100.0  # always among the top k
    xs = [torch.randn(50, 16, generator=gen) + 2.0 for _ in range(3)]
    r = evaluate_activations(sae, xs)
    x = torch.cat(xs)
    with torch.no_grad():
        f = sae.encode(x)
        x_hat = sae.decode(f)
    assert r.n_tokens == 150
    assert r.explained_variance == pytest.approx(explained_variance(x, x_hat), rel=1e-9)
    assert r.fvu == pytest.approx(1 - r.explained_variance)
    assert r.mse == pytest.approx(float((x - x_hat).double().pow(2).sum(1).mean()), rel=1e-6)
    assert r.l0 == pytest.approx(3.0)
    density = (f > 0).double().mean(0)
    assert r.dead_fraction == pytest.approx(float((density == 0).double().mean()))
    assert r.dense_fraction == pytest.approx(float((density > 0.1).double().mean()))
    assert r.dead_fraction >= 4 / 32 and r.dense_fraction >= 2 / 32


def test_density_figure_renders(model, corpus, tmp_path):
    from mechscope.apps.output import figure_png

    r = _eval(make_dictionary("topk", d_in=D, d_sae=128, k=4, hook_name=SITE, seed=0), model, corpus)
    png = figure_png(density_figure(r))
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000


@pytest.mark.slow
def test_real_model_error_term_and_eval(default_model):
    from mechscope.dictionaries.splice import run_with_sae

    site = "blocks.3.hook_resid_post"
    sae = make_dictionary("topk", d_in=576, d_sae=1152, k=16, hook_name=site, seed=0)
    ids = default_model.to_tokens(["The Eiffel Tower is in the city of", "def f(x): return x"])
    torch.testing.assert_close(run_with_sae(default_model, ids, sae, use_error_term=True), default_model(ids),
                               atol=1e-3, rtol=1e-4)
    r = evaluate_dictionary(sae, default_model, source="pydoc", n_tokens=254, context_length=128, batch_size=2)
    assert r.n_tokens == 254 and r.ce_zero > r.ce_clean and r.l0 == pytest.approx(16.0)


@pytest.mark.parametrize("kind", ["llama", "gpt2", "gpt_neox", "gemma2"])
def test_replayed_prefix_equals_a_full_hooked_run(kind):
    from mechscope.core import names
    from mechscope.dictionaries.evaluate import _replay_start, _run_from
    from tiny_models import tiny_ids

    m = tiny_lm(kind)
    ids = tiny_ids(2, 10)
    start = _replay_start(m, ids, "blocks.2.hook_resid_post", "blocks.2.hook_resid_post")
    assert start == 2
    _, cache = m.run_with_cache(ids, names=[names.resid_pre(2)])
    hooks = [("blocks.2.hook_resid_post", lambda a, h: a * 0.5)]
    torch.testing.assert_close(_run_from(m, ids, start, cache[names.resid_pre(2)], hooks),
                               m.run_with_hooks(ids, fwd_hooks=hooks), atol=1e-6, rtol=1e-6)


def test_ce_loss_recovered_is_normalized_recovery_with_zero_ablation_as_corrupt(caplog) -> None:
    from mechscope.dictionaries.evaluate import _ce_recovered

    # CE 4.0 with the site zeroed, 2.0 clean, 2.5 spliced: (4.0 - 2.5) / (4.0 - 2.0) = 0.75
    assert _ce_recovered(2.5, ce_clean=2.0, ce_zero=4.0) == pytest.approx(0.75)
    assert _ce_recovered(5.0, ce_clean=2.0, ce_zero=4.0) == pytest.approx(-0.5)   # worse than deleting the site
    with caplog.at_level("WARNING", logger="mechscope.dictionaries.evaluate"):
        assert math.isnan(_ce_recovered(2.5, ce_clean=2.0, ce_zero=2.0))
    assert "undefined" in caplog.text
