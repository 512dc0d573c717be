"""Metric definitions pinned by hand-computed values (one explained-variance definition, two ways to reach it)."""

from __future__ import annotations

import pytest
import torch

from mechscope.dictionaries.metrics import explained_variance, explained_variance_from_sums


def test_explained_variance_hand_computed():
    # mean = (1, 1); sum_b ||x_b - mean||^2 = 2 + 2 + 4 = 8; squared error = (3 - 1)^2 = 4; EV = 1 - 4/8
    x = torch.tensor([[0.0, 0.0], [2.0, 0.0], [1.0, 3.0]])
    x_hat = torch.tensor([[0.0, 0.0], [2.0, 0.0], [1.0, 1.0]])
    assert explained_variance(x, x_hat) == 0.5
    # streaming: the same value from sums accumulated over two chunks
    sums = [(float((a - b).pow(2).sum()), float(a.pow(2).sum()), a.sum(0)) for a, b in ((x[:1], x_hat[:1]), (x[1:], x_hat[1:]))]
    total = explained_variance_from_sums(sum(s[0] for s in sums), sum(s[1] for s in sums), sums[0][2] + sums[1][2], 3)
    assert total == pytest.approx(0.5, abs=1e-12)
    assert explained_variance(x[:1], x_hat[:1]) != explained_variance(x[:1], x_hat[:1])  # one token: no variance, NaN
