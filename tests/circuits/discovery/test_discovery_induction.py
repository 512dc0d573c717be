"""The induction task: shuffled-copy pairs hold the same tokens, and induction answers differ."""

from __future__ import annotations

import pytest
import torch

from mechscope.circuits.discovery.component_graph import ComponentGraph
from mechscope.circuits.discovery.induction import induction_pairs, induction_reference
from mechscope.circuits.discovery.roc import edges_from_names
from mechscope.core.errors import MechscopeError


def _follower(ids: torch.Tensor, span: int, token: int) -> int:
    """The token after `token` in the first copy `ids[1 : 1 + span]`."""
    first = ids[1 : 1 + span].tolist()
    return first[first.index(token) + 1]


def test_pairs_differ_only_in_the_order_of_the_first_copy():
    span, n = 8, 30
    pairs = induction_pairs(n=n, span=span, n_tokens=20, bos_id=0, seed=4)
    assert pairs.clean.shape == pairs.corrupt.shape == (n, 2 * span)
    assert (pairs.pos == 2 * span - 1).all() and pairs.metric(torch.zeros(n, 2 * span, 21)).abs().max() == 0
    for clean, corrupt, good, bad in zip(pairs.clean, pairs.corrupt, pairs.good[:, 0], pairs.bad[:, 0], strict=True):
        assert clean[0] == corrupt[0] == 0 and len(set(clean[1 : 1 + span].tolist())) == span
        assert torch.equal(clean[1 + span :], corrupt[1 + span :])  # the second copy is untouched
        assert sorted(clean.tolist()) == sorted(corrupt.tolist())  # the same tokens in context
        query = int(clean[-1])
        assert _follower(clean, span, query) == good and _follower(corrupt, span, query) == bad != good
    again = induction_pairs(n=n, span=span, n_tokens=20, bos_id=0, seed=4)
    assert torch.equal(again.corrupt, pairs.corrupt)
    assert not torch.equal(induction_pairs(n=n, span=span, n_tokens=20, seed=5).clean, pairs.clean)
    with pytest.raises(MechscopeError, match="span"):
        induction_pairs(span=30, n_tokens=20)


def test_reference_names_the_induction_mechanism():
    names = induction_reference(n_heads=2)
    assert len(names) == 2 + 8 + 2 + 2 and len(set(names)) == len(names)
    assert "a0.h1->a1.h0.k" in names and "a0.h0->a1.h1.v" in names
    assert not any(n.endswith(".q") or n.startswith("input->a1") and n.endswith(".k") for n in names)
    mask = edges_from_names(ComponentGraph(n_layers=2, n_heads=2, has_mlp=False), names)
    assert int(mask.sum()) == len(names)
    assert "a1.h0->a3.h0.k" in induction_reference(n_heads=1, layers=(1, 3))
    with pytest.raises(MechscopeError, match="before"):
        induction_reference(n_heads=2, layers=(1, 1))
