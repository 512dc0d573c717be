"""The shared score formulas (core/scores.py) against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from mechscope.core.errors import MechscopeError
from mechscope.core.scores import check_recoverable, kl_divergence, normalized_recovery


def test_kl_divergence_hand_value_and_log_prob_inputs() -> None:
    # p = [1/2, 1/2], q = [1/4, 3/4]: KL = 1/2 log(2) + 1/2 log(2/3)
    p_logits = torch.log(torch.tensor([0.5, 0.5]))
    q_logits = torch.log(torch.tensor([0.25, 0.75])) + 3.0   # a shift of the logits changes nothing
    expected = 0.5 * math.log(2.0) + 0.5 * math.log(2.0 / 3.0)
    assert kl_divergence(p_logits, q_logits).item() == pytest.approx(expected, abs=1e-6)
    # log-probabilities give the same value as logits (log-softmax leaves them unchanged)
    log_q = torch.log_softmax(q_logits, dim=-1)
    assert kl_divergence(p_logits, log_q).item() == pytest.approx(expected, abs=1e-6)
    # not symmetric: KL(q || p) = 1/4 log(1/2) + 3/4 log(3/2)
    reverse = 0.25 * math.log(0.5) + 0.75 * math.log(1.5)
    assert kl_divergence(q_logits, p_logits).item() == pytest.approx(reverse, abs=1e-6)


def test_kl_divergence_is_per_row_over_the_last_axis() -> None:
    ref = torch.tensor([[[0.0, 0.0], [0.0, 0.0]]])
    other = torch.tensor([[[0.0, 0.0], [math.log(3.0), 0.0]]])   # second row: q = [3/4, 1/4]
    out = kl_divergence(ref, other)
    assert out.shape == (1, 2)
    assert out[0, 0].item() == pytest.approx(0.0, abs=1e-7)
    assert out[0, 1].item() == pytest.approx(0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25), abs=1e-6)


def test_normalized_recovery_hand_values_and_refusals() -> None:
    assert normalized_recovery(torch.tensor([3.0, 5.0, 7.0]), clean=7.0, corrupt=3.0).tolist() == [0.0, 0.5, 1.0]
    # a lower clean value (a loss): recovering CE from 4.0 (ablated) toward 2.0 (clean) at 2.5 is 0.75
    assert float(normalized_recovery(2.5, clean=2.0, corrupt=4.0)) == pytest.approx(0.75)
    assert normalized_recovery(torch.tensor([1, 2]), clean=2.0, corrupt=0.0).dtype.is_floating_point
    with pytest.raises(MechscopeError, match="same on both prompts"):
        check_recoverable(1.0, 1.0 + 1e-9)
    with pytest.raises(MechscopeError, match="NaN or Inf"):
        normalized_recovery(1.0, clean=float("nan"), corrupt=0.0)


def test_the_methods_metrics_names_are_the_core_functions() -> None:
    from mechscope.methods import metrics

    assert metrics.kl_divergence is kl_divergence
    assert metrics.normalized_recovery is normalized_recovery
    assert metrics.check_recoverable is check_recoverable
