"""Directions (latent, CAA, reading vector, probe, user vector), their files, and the coefficient sweep."""

from __future__ import annotations

import json
import math

import pytest
import torch

from _tokenizers import WhitespaceTokenizer
from mechscope.core.errors import MechscopeError, OutputExistsError
from mechscope.core.provenance import provenance
from mechscope.dictionaries import make_dictionary
from mechscope.features.steering import (
    Add,
    Clamp,
    directions_by_layer,
    first_principal_component,
    from_latent,
    from_probe,
    from_vector,
    load_directions,
    mean_difference,
    projection_accuracy,
    read_activations,
    reading_vector,
    save_directions,
)
from mechscope.features.steering.sweep import (
    Concept,
    keyword_incidence,
    parse_values,
    plot_sweep,
    steering_sweep,
)
from mechscope.methods.probe_models import fit_logistic
from tiny_lm import tiny_lm

SITE = "blocks.1.hook_resid_post"
POS = ["a b c", "d e f g", "h i"]
NEG = ["x y z", "u v w t", "r s"]


@pytest.fixture(scope="module")
def model():
    return tiny_lm("llama")


def test_latent_direction_is_the_decoder_row_in_model_units() -> None:
    sae = make_dictionary("topk", d_in=64, d_sae=32, k=4, hook_name=SITE, input_scale=2.0, seed=0)
    d = from_latent(sae, 5)
    assert d.hook_name == SITE and d.source["latent"] == 5
    torch.testing.assert_close(d.vector, sae.W_dec[5].detach() / 2.0)
    x = torch.zeros(1, 32)
    x[0, 5] = 3.0  # decoding one active latent moves the reconstruction by 3 * the direction
    torch.testing.assert_close(sae.decode(x) - sae.decode(torch.zeros(1, 32)), 3.0 * d.vector[None], atol=1e-6,
                               rtol=0)


def test_mean_difference_and_reading_vector_match_hand_computation(model) -> None:
    pos, neg = read_activations(model, POS, SITE), read_activations(model, NEG, SITE)
    _, cache = model.run_with_cache("a b c", names=[SITE])
    torch.testing.assert_close(pos[0], cache[SITE][0, -1])  # last token of the first text
    caa = mean_difference(model, POS, NEG, SITE)
    torch.testing.assert_close(caa.vector, pos.mean(0) - neg.mean(0))
    rv = reading_vector(model, POS, NEG, SITE)
    assert rv.source["kind"] == "reading_vector" and rv.norm == pytest.approx(1.0, abs=1e-5)
    assert float((pos - neg).mean(0) @ rv.vector) >= 0
    assert projection_accuracy(caa, pos, neg) >= 2 / 3


def test_directions_by_layer_match_one_layer_at_a_time(model) -> None:
    both = directions_by_layer(model, POS, NEG, "resid_post", layers=[0, 2])
    assert [d.hook_name for d in both] == ["blocks.0.hook_resid_post", "blocks.2.hook_resid_post"]
    torch.testing.assert_close(both[1].vector, mean_difference(model, POS, NEG, "blocks.2.hook_resid_post").vector)
    rv = directions_by_layer(model, POS, NEG, layers=[1], method="reading_vector")[0]
    torch.testing.assert_close(rv.vector, reading_vector(model, POS, NEG, SITE).vector)
    with pytest.raises(MechscopeError, match="method="):
        directions_by_layer(model, POS, NEG, method="median")


def test_first_principal_component_finds_a_planted_axis() -> None:
    """Pairs that all differ by about 3 along one axis, plus noise of larger spread than 3's jitter elsewhere:
    the spread around the mean difference is noise, so PCA of the centred differences would miss the axis."""
    gen = torch.Generator().manual_seed(0)
    axis = torch.randn(16, generator=gen)
    axis /= axis.norm()
    diffs = (3 + 0.1 * torch.randn(200, 1, generator=gen)) * axis + 0.5 * torch.randn(200, 16, generator=gen)
    assert float(first_principal_component(diffs) @ axis) > 0.98
    assert float(first_principal_component(-diffs) @ axis) < -0.98


def test_chosen_token_positions() -> None:
    model = tiny_lm("llama")
    model.tokenizer = WhitespaceTokenizer()  # has offsets, which reading at a chosen token needs
    model.tokenizer.pad_token_id = 1
    caa = mean_difference(model, ["a b c"], ["x y z"], SITE, positive_tokens=["b"], negative_tokens=["y"])
    _, a = model.run_with_cache("a b c", names=[SITE])
    _, b = model.run_with_cache("x y z", names=[SITE])
    torch.testing.assert_close(caa.vector, a[SITE][0, 2] - b[SITE][0, 2])  # BOS, a, b: 'b' is index 2


def test_probe_direction_separates_the_classes(model) -> None:
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(40, 64, generator=gen)
    y = (X[:, 3] > 0).long()
    probe = fit_logistic(X, y)
    d = from_probe(model, probe, SITE)
    assert ((X @ d.vector > (X @ d.vector).median()) == y.bool()).float().mean() > 0.9
    with pytest.raises(MechscopeError, match="out of range"):
        from_probe(model, probe, SITE, class_index=2)


def test_directions_round_trip_and_refuse_foreign_files(model, tmp_path) -> None:
    dirs = [mean_difference(model, POS, NEG, SITE), from_vector(model, torch.arange(64.0), SITE, label="ramp")]
    tensors, meta = save_directions(tmp_path / "sent", dirs, provenance(model))
    back = load_directions(tmp_path / "sent")
    assert [d.hook_name for d in back] == [SITE, SITE]
    assert torch.equal(back[0].vector, dirs[0].vector) and back[1].source["label"] == "ramp"
    assert "provenance" in json.loads(meta.read_text())
    save_directions(tmp_path / "sent", dirs, provenance(model))  # ours: may be replaced
    (tmp_path / "other.safetensors").write_bytes(b"not ours")
    with pytest.raises(OutputExistsError):
        save_directions(tmp_path / "other", dirs, provenance(model))
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(MechscopeError, match="not a readable"):
        load_directions(tmp_path / "bad")


def test_parse_values_and_keywords() -> None:
    assert parse_values("-4..4:3") == [-4.0, 0.0, 4.0]
    with pytest.raises(MechscopeError, match="Cannot read"):
        parse_values("a..b")
    assert keyword_incidence(["Golden Gate", "nothing"], ["gate"]) == 0.5


def test_sweep_measures_each_coefficient(model) -> None:
    sae = make_dictionary("relu", d_in=64, d_sae=32, hook_name=SITE, seed=0)
    latent = 3
    concept = Concept(keywords=["zzz"], sae=sae, latent=latent)
    result = steering_sweep(model, ["a b c", "d e"], lambda c: [Clamp(sae, latent, c)], [0.0, 2.0], concept=concept,
                            neutral_texts=["p q r s", "t u v"], max_new_tokens=4, progress=False)
    zero, two = result.points
    assert zero.kl_neutral == pytest.approx(0.0, abs=1e-6) or zero.kl_neutral >= 0
    assert two.kl_neutral > zero.kl_neutral >= -1e-7
    for p in result.points:
        assert math.isfinite(p.perplexity) and p.perplexity > 1 and p.keyword_incidence == 0.0
        assert 0 <= p.latent_incidence <= 1 and len(p.texts) == 2
    data = result.to_dict()
    assert data["interventions"][0]["kind"] == "clamp" and "provenance" in data
    fig = plot_sweep(result, "tiny")
    assert len(fig.axes) == 3


def test_sweep_kl_is_zero_at_coefficient_zero(model) -> None:
    d = mean_difference(model, POS, NEG, SITE)
    result = steering_sweep(model, "a b", lambda c: [Add(d, c)], [0.0, 1.0], max_new_tokens=3, progress=False)
    assert result.points[0].kl_neutral == 0.0 and result.points[1].kl_neutral > 0


def test_concept_latents_find_a_planted_latent(model) -> None:
    from mechscope.features.steering.concepts import concept_latents, peak_activations

    sae = make_dictionary("relu", d_in=64, d_sae=32, hook_name=SITE, seed=0)
    peaks = peak_activations(model, sae, POS + NEG)
    assert peaks.shape == (6, 32) and (peaks >= 0).all()
    with torch.no_grad():
        sae.b_enc.fill_(-10.0)  # silence every latent ...
        _, cache = model.run_with_cache("a b c", names=[SITE])
        sae.W_enc[:, 9] = 0.0  # ... but latent 9, which fires on the concept texts' token 'c'
        sae.b_enc[9] = 0.0
        sae.W_enc[:, 9] = cache[SITE][0, -1] / cache[SITE][0, -1].norm() ** 2
    best = concept_latents(model, sae, ["a b c"], ["x y z"], n=3)
    assert best[0].latent == 9 and best[0].concept_peak > 0.99 and best[0].score > 0
