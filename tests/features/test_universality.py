"""Universality: two synthetic-benchmark dictionaries trained with different seeds match each other
wherever both recover a true feature; activation correlation and span alignment by hand."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mechscope.apps.cli import main
from mechscope.dictionaries import Trainer, TrainerConfig, make_dictionary, save_dictionary
from mechscope.dictionaries.synthetic import SyntheticData
from mechscope.features.universality import (
    activation_match,
    align_by_spans,
    correlation_matrix,
    decoder_match,
    shifted_baseline,
)


def _train(seed: int, steps: int = 1500) -> torch.nn.Module:
    data = SyntheticData(seed=0)  # the same true features and data; the dictionaries differ by their seed
    sae = make_dictionary("topk", d_in=data.d_model, d_sae=128, seed=seed, k=3)
    cfg = TrainerConfig(total_steps=steps, lr=3e-3, seed=seed, progress=False, log_every=steps)
    Trainer(sae, cfg).fit(data.batches(512, steps))
    return sae.eval()


@pytest.fixture(scope="module")
def pair():
    return _train(1), _train(2), SyntheticData(seed=0).features


@pytest.mark.slow  # trains two dictionaries (about 40 s on two cores)
def test_synthetic_dictionaries_match_where_both_recover_a_feature(pair, tmp_path) -> None:
    a, b, truth = pair
    u = truth / truth.norm(dim=1, keepdim=True)
    cos_a = (u.double() @ (a.W_dec / a.W_dec.norm(dim=1, keepdim=True)).double().t()).detach()
    cos_b = (u.double() @ (b.W_dec / b.W_dec.norm(dim=1, keepdim=True)).double().t()).detach()
    both = [i for i in range(len(u)) if cos_a[i].max() > 0.9 and cos_b[i].max() > 0.9]
    assert len(both) >= 0.8 * len(u)
    result = decoder_match(a.W_dec, b.W_dec, threshold=0.9)
    pairs = {r: (c, v) for r, c, v in result["hungarian_pairs"]}
    agree = [i for i in both if pairs[int(cos_a[i].argmax())][0] == int(cos_b[i].argmax())]
    assert len(agree) >= 0.95 * len(both)  # Hungarian pairs the two recoveries of a true feature
    assert all(pairs[int(cos_a[i].argmax())][1] > 0.8 for i in agree)
    assert result["fraction_above_threshold"] >= 0.9 * len(both) / 128
    # brute force: mean max cosine
    W_a, W_b = a.W_dec.detach().double(), b.W_dec.detach().double()
    W_a, W_b = W_a / W_a.norm(dim=1, keepdim=True), W_b / W_b.norm(dim=1, keepdim=True)
    assert result["mean_max_a_to_b"] == pytest.approx(float((W_a @ W_b.t()).max(1).values.mean()), abs=1e-12)
    # activations on the same synthetic tokens agree with the decoder matching for the shared features
    x = SyntheticData(seed=0).sample(4096)
    with torch.no_grad():
        acts = activation_match(a.encode(x), b.encode(x), threshold=0.9)
    act_pairs = {r: c for r, c, _ in acts["hungarian_pairs"]}
    assert sum(act_pairs[int(cos_a[i].argmax())] == int(cos_b[i].argmax()) for i in both) >= 0.9 * len(both)
    # CLI: JSON and plot
    save_dictionary(a, tmp_path / "a")
    save_dictionary(b, tmp_path / "b")
    out = tmp_path / "match.json"
    assert main(["features", "match", str(tmp_path / "a"), str(tmp_path / "b"), "--threshold", "0.9",
                 "--json", str(out), "--png", str(tmp_path / "match.png")]) == 0
    written = json.loads(out.read_text())
    assert written["decoder"]["hungarian_mean"] == pytest.approx(result["hungarian_mean"])
    assert (tmp_path / "match.png").read_bytes()[:4] == b"\x89PNG"


def test_correlation_and_alignment_by_hand() -> None:
    a = torch.tensor([[0.0, 1.0], [1.0, 1.0], [2.0, 1.0]])  # latent 1 is constant
    b = torch.tensor([[0.0], [2.0], [4.0]])
    np.testing.assert_allclose(correlation_matrix(a, b), [[1.0], [0.0]])
    # A: "ab" "cde"; B: "a" "bc" "de" -> A token 0 overlaps B 0, 1; A token 1 overlaps B 1, 2
    aligned = align_by_spans([(0, 2), (2, 5)], [(0, 1), (1, 3), (3, 5)], torch.tensor([[1.0], [5.0], [2.0]]))
    assert aligned.tolist() == [[5.0], [5.0]]


def test_correlation_equals_the_centred_formula_across_blocks() -> None:
    g = torch.Generator().manual_seed(0)
    a = torch.relu(torch.randn(500, 40, generator=g) - 2.0)  # sparse, as dictionary codes are
    b = torch.relu(torch.randn(500, 70, generator=g) - 2.0)
    a[:, 3] = 0.0  # dead latent
    b[:, 5] = 2.5 * a[:, 7] + 1.0  # an affine copy: correlation 1
    ca, cb = a.double() - a.double().mean(0), b.double() - b.double().mean(0)
    want = (ca.t() @ cb) / (ca.norm(dim=0)[:, None] * cb.norm(dim=0)[None, :]).clamp_min(1e-12)
    want[3] = 0.0
    got = correlation_matrix(a, b, block=16)  # blocks of B's latents, the last one partial
    np.testing.assert_allclose(got, want.numpy(), rtol=0, atol=1e-12)
    assert got[7, 5] == pytest.approx(1.0, abs=1e-12) and not got[3].any()


def test_shifted_baseline_breaks_the_alignment_only() -> None:
    g = torch.Generator().manual_seed(1)
    a = torch.relu(torch.randn(400, 30, generator=g) - 1.5)
    aligned = activation_match(a, a.clone())
    assert aligned["mean_max_a_to_b"] == pytest.approx(1.0, abs=1e-12)
    null = shifted_baseline(a, a.clone(), threshold=0.7)
    assert null["shift"] == 200 and null["tokens"] == 400
    want = correlation_matrix(a, torch.cat([a[200:], a[:200]]))  # row t of B is row t - 200 of A
    assert null["mean_max_a_to_b"] == pytest.approx(float(want.max(1).mean()), abs=1e-12)
    assert null["mean_max_a_to_b"] < 0.5 and null["fraction_best_a_above_threshold"] == 0.0


def test_different_widths_need_activations() -> None:
    with pytest.raises(Exception, match="different spaces"):
        decoder_match(torch.randn(4, 8), torch.randn(4, 6))


@pytest.mark.slow
def test_activation_matching_on_real_models(default_model, tmp_path) -> None:
    """Same model: a dictionary matches itself; across SmolLM2 and Gemma 3 270M the text is aligned by spans."""
    from mechscope.features.universality import text_activations

    sae = make_dictionary("topk", d_in=576, d_sae=64, k=4, seed=0, hook_name="blocks.3.hook_resid_post",
                          model_name=default_model.cfg.name)
    save_dictionary(sae, tmp_path / "a")
    out = tmp_path / "self.json"
    assert main(["features", "match", str(tmp_path / "a"), str(tmp_path / "a"), "--activations", "--tokens", "100",
                 "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    acts, spans = text_activations(default_model, sae, "The Eiffel Tower is in Paris.")
    assert acts.shape[0] == len(spans) and spans[0][0] == 0
    live = [i for i, v in enumerate(result["activations"]["best_a"]) if v > 0]
    assert live and all(abs(result["activations"]["best_a"][i] - 1.0) < 1e-9 for i in live)
    assert result["decoder"]["hungarian_mean"] == pytest.approx(1.0)
    gemma = make_dictionary("topk", d_in=640, d_sae=32, k=4, seed=0, hook_name="blocks.3.hook_resid_post",
                            model_name="gemma3-270m")
    save_dictionary(gemma, tmp_path / "b")
    assert main(["features", "match", str(tmp_path / "a"), str(tmp_path / "b"), "--activations", "--tokens", "100",
                 "--json", str(tmp_path / "cross.json")]) == 0
    cross = json.loads((tmp_path / "cross.json").read_text())
    assert "decoder" not in cross and cross["activations"]["tokens"] >= 100
    assert len(cross["activations"]["hungarian_pairs"]) == 32
