"""Attribution patching and integrated gradients against activation patching."""

from __future__ import annotations

import pytest
import torch
from _patching_helpers import ANSWER, WRONG, pair_ids

from mechscope.core import names
from mechscope.methods.metrics import LogitDiff
from mechscope.methods.patching import patch_sweep
from mechscope.methods.patching.attribution import attribution_every_site, attribution_sweep, correlation
from tiny_models import tiny_model

KW = dict(answer=ANSWER, wrong=WRONG)


def _patch_ln_final(model, clean, corrupt, pos, mode):
    """Oracle: patch ln_final.hook_normalized at one position by hand; normalized recovery."""
    metric = LogitDiff(torch.tensor(ANSWER), torch.tensor(WRONG))
    base, source = (corrupt, clean) if mode == "denoise" else (clean, corrupt)
    _, cache = model.run_with_cache(source, names=[names.LN_FINAL])

    def hook(act, point):
        act = act.clone()
        act[:, pos] = cache[names.LN_FINAL][:, pos]
        return act

    with torch.no_grad():
        patched = metric(model.run_with_hooks(base, fwd_hooks=[(names.LN_FINAL, hook)])).mean()
        c, k = metric(model(clean)).mean(), metric(model(corrupt)).mean()
    return float((patched - k) / (c - k))


@pytest.mark.parametrize("kind", ["llama", "gpt2", "gpt_neox"])
@pytest.mark.parametrize("mode", ["denoise", "noise"])
def test_attribution_is_exact_where_the_metric_is_linear(kind, mode):
    model = tiny_model(kind)
    clean, corrupt = pair_ids()
    estimate = attribution_sweep(model, clean, corrupt, site="ln_final", by="pos", mode=mode, **KW)
    for pos in range(clean.shape[1]):
        assert abs(float(estimate.scores[pos]) - _patch_ln_final(model, clean, corrupt, pos, mode)) < 1e-4


@pytest.mark.parametrize("kind", ["llama", "gemma2"])
def test_integrated_gradients_approach_activation_patching(kind):
    model = tiny_model(kind)
    clean, corrupt = pair_ids()
    for site in ("attn_out", "mlp_out"):
        exact = patch_sweep(model, clean, corrupt, site=site, by="layer", **KW).scores
        first = attribution_sweep(model, clean, corrupt, site=site, by="layer", **KW).scores
        ig = attribution_sweep(model, clean, corrupt, site=site, by="layer", method="ig", steps=48, **KW).scores
        assert (ig - exact).abs().max() < 5e-3, (site, ig, exact)
        assert (ig - exact).abs().max() <= (first - exact).abs().max() + 1e-6


def test_every_site_matches_single_site_calls_and_reports_agreement():
    model = tiny_model("qwen2")
    clean, corrupt = pair_ids()
    every = attribution_every_site(model, clean, corrupt, **KW)
    assert set(every) == {"resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "z"}
    assert every["z"].by == ("layer", "head", "pos")
    single = attribution_sweep(model, clean, corrupt, site="mlp_out", by="layer,pos", compare=True, **KW)
    assert torch.allclose(every["mlp_out"].scores, single.scores, atol=1e-6)
    reference = torch.tensor(single.extra["activation_scores"])
    assert single.extra["activation_correlation"] == pytest.approx(correlation(single.scores, reference))
    assert single.extra["activation_correlation"] > 0.5
    # Head scores by (layer, head) are the sums of the (layer, head, pos) scores.
    by_head = attribution_sweep(model, clean, corrupt, site="z", by="layer,head", **KW)
    assert torch.allclose(by_head.scores, every["z"].scores.sum(-1), atol=1e-5)


def test_correlation_values():
    a = torch.tensor([1.0, 2.0, 3.0])
    assert correlation(a, 2 * a + 1) == pytest.approx(1.0)
    assert correlation(a, -a) == pytest.approx(-1.0)
