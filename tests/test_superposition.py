"""Tests of mechscope.toys.superposition: the known dense/sparse result, metrics, JSON, plots."""

from __future__ import annotations

import json

import pytest
import torch

from mechscope.toys.superposition import (
    SuperpositionConfig,
    superposition_stats,
    train_superposition,
)
from mechscope.toys.superposition_plots import plot_feature_directions, plot_norms_and_superposition


@pytest.fixture(scope="module")
def small_sweep():
    cfg = SuperpositionConfig(n_features=5, d_hidden=2, sparsities=(0.0, 0.9, 0.97), steps=2000, seed=0)
    return train_superposition(cfg)


def test_dense_features_use_m_dims_sparse_features_superpose(small_sweep) -> None:
    m = small_sweep.config.d_hidden
    dense, sparse, sparser = small_sweep.results
    assert dense.n_represented <= m + 1
    assert dense.n_represented >= m - 1
    assert sparse.n_represented > m
    assert sparser.n_represented > m
    # dense: the most important features, nearly orthogonal; sparse: packed with interference
    assert dense.norms[0] > 0.9
    assert max(dense.interference[:m]) < 0.1
    assert dense.dims_per_feature > 0.8
    assert sparse.dims_per_feature < 0.6
    assert max(sparse.interference) > 0.2


def test_sparse_superposition_n20_m5() -> None:
    cfg = SuperpositionConfig(
        n_features=20, d_hidden=5, sparsities=(0.0, 0.95), steps=1500, batch_size=256, seed=1
    )
    dense, sparse = train_superposition(cfg).results
    assert dense.n_represented <= 6
    assert sparse.n_represented > 5


def test_stats_hand_computed() -> None:
    # features 0, 1 antipodal (norm 1), feature 2 orthogonal with norm 0.4, feature 3 zero
    W = torch.tensor([[1.0, -1.0, 0.0, 0.0], [0.0, 0.0, 0.4, 0.0]])
    stats = superposition_stats(W)
    assert stats["norms"] == pytest.approx([1.0, 1.0, 0.4, 0.0])
    assert stats["n_represented"] == 2
    assert stats["interference"] == pytest.approx([1.0, 1.0, 0.0, 0.0])
    # m / ||W||_F^2 = 2 / (1 + 1 + 0.16)
    assert stats["dims_per_feature"] == pytest.approx(2 / 2.16)
    # D_i = ||W_i||^2 / sum_j (W_i_hat . W_j)^2: antipodal pair 1/2 each, lone feature 1
    assert stats["feature_dimensionality"] == pytest.approx([0.5, 0.5, 1.0, 0.0])


def test_deterministic_and_json(small_sweep) -> None:
    threads = torch.get_num_threads()
    again = train_superposition(SuperpositionConfig(n_features=5, d_hidden=2, sparsities=(0.0,), steps=50))
    once_more = train_superposition(
        SuperpositionConfig(n_features=5, d_hidden=2, sparsities=(0.0,), steps=50)
    )
    torch.testing.assert_close(again.results[0].W, once_more.results[0].W)
    assert torch.get_num_threads() == threads
    data = json.loads(small_sweep.to_json())
    assert data["provenance"]["seed"] == 0
    assert [r["sparsity"] for r in data["results"]] == [0.0, 0.9, 0.97]
    assert len(data["results"][0]["W"]) == 2 and len(data["results"][0]["W"][0]) == 5
    assert data["results"][1]["n_represented"] == small_sweep.results[1].n_represented


def test_restarts_keep_lowest_loss() -> None:
    cfg = SuperpositionConfig(
        n_features=5, d_hidden=2, sparsities=(0.9,), steps=200, instances_per_sparsity=3
    )
    single = SuperpositionConfig(
        n_features=5, d_hidden=2, sparsities=(0.9,), steps=200, instances_per_sparsity=1
    )
    assert train_superposition(cfg).results[0].loss <= train_superposition(single).results[0].loss + 0.01


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="sparsity"):
        SuperpositionConfig(sparsities=(1.0,))
    with pytest.raises(ValueError, match="steps"):
        SuperpositionConfig(steps=0)


def test_plots(small_sweep, tmp_path) -> None:
    fig = plot_feature_directions(small_sweep, tmp_path / "dirs.png")
    assert len(fig.axes) == 3
    assert (tmp_path / "dirs.png").stat().st_size > 1000
    fig = plot_norms_and_superposition(small_sweep, tmp_path / "norms.svg")
    assert (tmp_path / "norms.svg").read_text().startswith("<?xml")
    wide = train_superposition(SuperpositionConfig(n_features=4, d_hidden=3, sparsities=(0.0,), steps=5))
    with pytest.raises(ValueError, match="d_hidden == 2"):
        plot_feature_directions(wide)
