"""The cache's stack methods refuse a residual stack sliced differently from the cached norm scale."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from mechscope.core.errors import MechscopeError
from mechscope.core.hooked import HookedModel


@pytest.fixture(scope="module")
def cache():
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1)
    model = HookedModel(LlamaForCausalLM(cfg), name="tiny")
    _, cache = model.run_with_cache(torch.tensor([[1, 2, 3], [4, 5, 6]]))
    return cache


def test_matching_slices_give_one_value_per_component_and_row(cache) -> None:
    stack = cache.decompose_resid(pos_slice=-1)
    assert cache.logit_attrs(stack, 6, 7, pos_slice=-1).shape == (stack.shape[0], 2)
    full = cache.decompose_resid()
    assert cache.logit_attrs(full, 6, 7).shape == (full.shape[0], 2, 3)
    torch.testing.assert_close(cache.logit_attrs(full, 6, 7)[:, :, -1], cache.logit_attrs(stack, 6, 7, pos_slice=-1))


def test_a_sliced_stack_without_its_pos_slice_is_refused(cache) -> None:
    stack = cache.decompose_resid(pos_slice=-1)
    with pytest.raises(MechscopeError, match="pass the same pos_slice"):
        cache.logit_attrs(stack, 6, 7)
    with pytest.raises(MechscopeError, match="pos_slice=-1"):
        cache.apply_ln_to_stack(cache.decompose_resid(), pos_slice=-1)
