"""Synthetic ground truth: recovery metrics, the data generator and short runs of every architecture.

Recovery with the defaults across the family is in test_synthetic_family.py."""

from __future__ import annotations

import pytest
import torch

from mechscope.dictionaries import make_dictionary
from mechscope.dictionaries.synthetic import (
    SyntheticData,
    fraction_recovered,
    mean_max_cosine_similarity,
    run_synthetic,
)


def test_metrics_on_hand_made_decoders():
    true = torch.eye(3)
    decoder = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.8, 0.6], [0.0, 0.0, -1.0]])
    # max cosines: 1.0, 0.8, 0.6
    assert mean_max_cosine_similarity(true, decoder) == pytest.approx(0.8)
    assert fraction_recovered(true, decoder) == pytest.approx(1 / 3)
    assert fraction_recovered(true, true) == 1.0


def test_synthetic_data_is_sparse_superposed_and_seeded():
    data = SyntheticData(seed=3)
    assert data.features.shape == (64, 32)
    torch.testing.assert_close(data.features.norm(dim=1), torch.ones(64))
    x = data.sample(2000)
    assert torch.equal(SyntheticData(seed=3).sample(2000), x)
    assert not torch.equal(SyntheticData(seed=4).sample(2000), x)
    assert data.probs.max() == pytest.approx(0.08) and data.probs.min() == pytest.approx(0.01)


def test_family_members_hold_their_true_l0_law_and_offset():
    data = SyntheticData(seed=0, n_features=96, frequency_law="power", alpha=0.8, true_l0=4.0, mean_offset=3.0)
    assert data.expected_l0 == pytest.approx(4.0, rel=1e-6)
    torch.testing.assert_close(data.offset.norm(), torch.tensor(3.0))
    ranked = data.probs.double().sort(descending=True).values
    zipf = (torch.arange(2, 97, dtype=torch.float64) / torch.arange(1, 96, dtype=torch.float64)) ** 0.8
    torch.testing.assert_close(ranked[:-1] / ranked[1:], zipf, rtol=1e-5, atol=0)  # frequency ~ rank^-0.8
    # the mean token is the offset plus the expected feature sum (magnitudes average 1)
    x = data.sample(40_000)
    expected_mean = data.offset + (data.probs_with_pairs() @ data.features)
    torch.testing.assert_close(x.mean(0), expected_mean, atol=0.03, rtol=0)
    with pytest.raises(ValueError, match="more than n_features"):
        SyntheticData(n_features=8, n_correlated_pairs=0, true_l0=9.0)


@pytest.mark.parametrize("architecture", ["relu", "topk", "batchtopk", "jumprelu", "gated"])
def test_short_run_reports_and_beats_the_untrained_decoder(architecture):
    result = run_synthetic(architecture, seed=1, steps=300, batch_size=256)
    untrained = make_dictionary(architecture, d_in=32, d_sae=128, seed=1, **result["dictionary_kwargs"])
    before = mean_max_cosine_similarity(SyntheticData(seed=1).features, untrained.W_dec.detach())
    assert {"architecture", "mmcs", "fraction_recovered", "l0", "explained_variance", "steps"} <= set(result)
    assert result["architecture"] == architecture and result["steps"] == 300
    assert 0.0 <= result["fraction_recovered"] <= 1.0
    assert result["mmcs"] > before, (result["mmcs"], before)
    # ReLU-L1 held at the true L0 (target_l0) pays for sparsity with shrunken activations: lower EV
    assert result["explained_variance"] > (0.2 if architecture == "relu" else 0.5), result
