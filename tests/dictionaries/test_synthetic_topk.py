"""Ground-truth recovery on the default synthetic setting (see mechscope.dictionaries.synthetic): TopK family."""

from __future__ import annotations

import pytest

from mechscope.dictionaries.synthetic import run_synthetic


@pytest.mark.slow
@pytest.mark.parametrize("architecture", ["topk", "batchtopk"])
def test_topk_family_recovers_at_least_90_percent(architecture):
    result = run_synthetic(architecture, seed=0)
    assert result["architecture"] == architecture
    assert result["fraction_recovered"] >= 0.9, result
    assert result["mmcs"] >= 0.9, result
    assert abs(result["l0"] - 3) < 1.0, result  # k=3 active latents per token on average
