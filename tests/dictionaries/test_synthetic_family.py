"""With the defaults and only `k` (TopK, BatchTopK) or `target_l0` (ReLU-L1, JumpReLU, Gated) given,
a dictionary recovers at least 90% of the true features above cosine 0.9 on the synthetic family
(mechscope.dictionaries.synthetic.FAMILY) and ends at the asked sparsity.

Every architecture passes on the built-in member. On the other members the defaults do not yet hold
for every architecture (docs/dictionaries.md has the full table, made by scripts/synthetic_family.py,
failures marked); the pairs below are those that pass there, kept here so they stay passing."""

from __future__ import annotations

import pytest

from mechscope.dictionaries.synthetic import family_member, run_synthetic

CASES = [("builtin", arch) for arch in ("relu", "topk", "batchtopk", "jumprelu", "gated")] + [
    ("power-l4-offset", "relu"), ("power-l4-offset", "topk"), ("power-l4-offset", "gated"), ("wide-l2", "topk"),
    ("power-l4-offset", "batchtopk"), ("wide-l2", "batchtopk"),
]


@pytest.mark.slow
@pytest.mark.parametrize("member,architecture", CASES)
def test_defaults_recover_the_features(member, architecture):
    result = run_synthetic(architecture, seed=0, data=family_member(member))
    assert result["fraction_recovered"] >= 0.9, (member, architecture, result["fraction_recovered"], result["mmcs"])
    sparsity = result["dictionary_kwargs"].get("k", result["true_l0"])
    assert abs(result["l0"] - sparsity) <= 0.1 * sparsity + 0.05, (member, architecture, result["l0"], sparsity)
