"""Ground-truth recovery on the default synthetic setting (see mechscope.dictionaries.synthetic):
dictionaries with a sparsity penalty (ReLU-L1, JumpReLU-L0, Gated-L1)."""

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


@pytest.mark.slow
@pytest.mark.parametrize("architecture,minimum", [("relu", 0.8), ("jumprelu", 0.9), ("gated", 0.8)])
def test_penalised_dictionaries_recover_features(architecture, minimum):
    result = run_synthetic(architecture, seed=0)
    assert result["architecture"] == architecture
    assert result["fraction_recovered"] >= minimum, result
    assert result["explained_variance"] > 0.8, result


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


@pytest.mark.parametrize("architecture", ["relu", "topk", "batchtopk", "jumprelu", "gated"])
def test_short_run_reports_and_beats_the_untrained_decoder(architecture):
    result = run_synthetic(architecture, seed=1, steps=300, batch_size=256)
    untrained = make_dictionary(architecture, d_in=32, d_sae=128, seed=1, **result["dictionary_kwargs"])
    before = mean_max_cosine_similarity(SyntheticData(seed=1).features, untrained.W_dec.detach())
    assert {"architecture", "mmcs", "fraction_recovered", "l0", "explained_variance", "steps"} <= set(result)
    assert result["architecture"] == architecture and result["steps"] == 300
    assert 0.0 <= result["fraction_recovered"] <= 1.0
    assert result["mmcs"] > before, (result["mmcs"], before)
    assert result["explained_variance"] > 0.5, result
