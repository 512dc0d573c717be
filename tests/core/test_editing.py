"""Edits through hooks do what an edit of the plain forward pass would do (oracle comparisons)."""

from __future__ import annotations

import pytest
import torch

from mechscope.core import names
from tiny_models import CONFIGS, tiny_ids, tiny_model


def _close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-5) -> None:
    diff = (a - b).abs().max().item()
    assert diff <= tol * max(1.0, b.abs().max().item()), f"max abs diff {diff}"


@torch.no_grad()
def test_resid_mid_is_absent_in_parallel_blocks() -> None:
    assert names.resid_mid(0) not in tiny_model("gpt_neox").hook_names()
    assert names.resid_mid(0) in tiny_model("gpt_neox_sequential").hook_names()


@torch.no_grad()
def test_identity_edits_leave_logits_bit_identical(tiny) -> None:
    ids = tiny_ids()
    clean = tiny(ids)
    editable = [n for n in tiny.hook_names() if not n.endswith("hook_pattern")]
    logits = tiny.run_with_hooks(ids, fwd_hooks=[(n, lambda act, hook: act.clone()) for n in editable])
    _close(logits, clean, tol=1e-6)


@torch.no_grad()
def test_resid_pre_edit_matches_a_raw_torch_hook(tiny) -> None:
    ids = tiny_ids()
    delta = torch.randn(tiny.cfg.d_model)
    hooked = tiny.run_with_hooks(ids, fwd_hooks=[(names.resid_pre(1), lambda act, hook: act + delta)])

    def raw_pre_hook(module, args, kwargs):
        if args:
            return (args[0] + delta, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": kwargs["hidden_states"] + delta}

    handle = tiny.layers[1].register_forward_pre_hook(raw_pre_hook, with_kwargs=True)
    try:
        reference = tiny.hf_model(input_ids=ids).logits
    finally:
        handle.remove()
    assert torch.equal(hooked, reference)


# Parallel blocks (GPT-NeoX) have no resid_mid; with a post-attention norm (Gemma 2/3)
# attn_out is not what resid_mid adds, so the oracle below does not apply to them.
SEQUENTIAL_PLAIN = sorted(set(CONFIGS) - {"gpt_neox", "gemma2", "gemma3"})
# Sliding windows and soft-capping change the uniform pattern the q-edit oracle expects.
FULL_CAUSAL = sorted(set(CONFIGS) - {"mistral", "gemma2", "gemma3"})


@pytest.mark.parametrize("kind", SEQUENTIAL_PLAIN)
@torch.no_grad()
def test_resid_mid_edit_equals_the_same_edit_of_attn_out(kind: str) -> None:
    tiny = tiny_model(kind)
    ids = tiny_ids()
    delta = torch.randn(tiny.cfg.d_model)
    via_mid = tiny.run_with_hooks(ids, fwd_hooks=[(names.resid_mid(1), lambda act, hook: act + delta)])
    via_attn = tiny.run_with_hooks(ids, fwd_hooks=[(names.attn_out(1), lambda act, hook: act + delta)])
    _close(via_mid, via_attn)
    assert not torch.allclose(via_mid, tiny(ids))


@torch.no_grad()
def test_zeroing_a_heads_result_equals_zeroing_its_z(tiny) -> None:
    ids = tiny_ids()

    def zero_head(act, hook):
        act = act.clone()
        act[:, :, 2] = 0
        return act

    via_result = tiny.run_with_hooks(ids, fwd_hooks=[(names.result(1), zero_head)])
    via_z = tiny.run_with_hooks(ids, fwd_hooks=[(names.z(1), zero_head)])
    assert not torch.allclose(via_z, tiny(ids))
    if tiny.family.attn_out == tiny.family.attn:
        _close(via_result, via_z)
        return
    # Gemma 2/3: each head's result is normalized with the scale of the whole attention output,
    # so zeroing one removes exactly its share of hook_attn_out (the scale stays that of the clean run).
    _, clean = tiny.run_with_cache(ids, names=[names.result(1), names.attn_out(1)])
    expected = clean[names.attn_out(1)] - clean[names.result(1)][:, :, 2]
    _, edited = tiny.run_with_cache(ids, names=[names.attn_out(1)], fwd_hooks=[(names.result(1), zero_head)])
    _close(edited[names.attn_out(1)], expected)


@torch.no_grad()
def test_heads_results_sum_to_what_the_residual_stream_receives(tiny) -> None:
    """sum_h hook_result (+ b_O) == hook_attn_out, and resid_mid - resid_pre == attn_out (sequential blocks)."""
    _, cache = tiny.run_with_cache(tiny_ids())
    for layer in range(tiny.cfg.n_layers):
        o_proj = tiny.layers[layer].get_submodule(tiny.family.o_proj)
        bias = o_proj.bias if getattr(o_proj, "bias", None) is not None and tiny.family.attn_out == tiny.family.attn else 0
        _close(cache[names.result(layer)].sum(dim=2) + bias, cache[names.attn_out(layer)])
        if names.resid_mid(layer) in cache:
            _close(cache[names.resid_mid(layer)] - cache[names.resid_pre(layer)], cache[names.attn_out(layer)])


@torch.no_grad()
def test_zero_values_give_zero_z(tiny) -> None:
    _, cache = tiny.run_with_cache(tiny_ids(), names=[names.z(1), names.v(1)],
                                   fwd_hooks=[(names.v(1), lambda act, hook: torch.zeros_like(act))])
    assert cache[names.v(1)].shape[2] == tiny.cfg.n_kv_heads
    assert cache[names.z(1)].abs().max().item() == 0.0


@torch.no_grad()
def test_pattern_edit_routes_values(tiny) -> None:
    """Attending only to the first token makes every head's z equal that token's value."""
    ids = tiny_ids()

    def first_token_only(pattern, hook):
        new = torch.zeros_like(pattern)
        new[..., 0] = 1.0
        return new

    _, cache = tiny.run_with_cache(ids, names=[names.z(0), names.v(0), names.pattern(0)],
                                   fwd_hooks=[(names.pattern(0), first_token_only)])
    values = cache[names.v(0)].repeat_interleave(tiny.cfg.n_kv_groups, dim=2)  # [b, p, n_heads, d_head]
    expected = values[:, :1].expand_as(cache[names.z(0)])
    _close(cache[names.z(0)], expected)
    assert torch.equal(cache[names.pattern(0)][..., 0], torch.ones_like(cache[names.pattern(0)][..., 0]))


def test_backward_hooks_see_the_gradient_at_views_and_residuals(tiny) -> None:
    ids = tiny_ids()
    grads: dict[str, torch.Tensor] = {}

    def keep(grad, hook):
        grads[hook.name] = grad

    logits = tiny.run_with_hooks(ids, bwd_hooks=[(names.resid_post(1), keep), (names.z(1), keep)])
    logits[:, -1, 3].sum().backward()
    assert set(grads) == {names.resid_post(1), names.z(1)}
    assert grads[names.z(1)].shape[2:] == (tiny.cfg.n_heads, tiny.cfg.d_head)

    # Oracle: make resid_post(1) a leaf through a forward hook and differentiate directly.
    leaf: dict[str, torch.Tensor] = {}

    def make_leaf(act, hook):
        leaf["x"] = act.detach().requires_grad_(True)
        return leaf["x"]

    tiny.zero_grad()
    out = tiny.run_with_hooks(ids, fwd_hooks=[(names.resid_post(1), make_leaf)])
    (expected,) = torch.autograd.grad(out[:, -1, 3].sum(), leaf["x"])
    _close(grads[names.resid_post(1)], expected)


@pytest.mark.parametrize("kind", FULL_CAUSAL)
@torch.no_grad()
def test_q_edit_on_fused_and_separate_layouts(kind: str) -> None:
    """Zero queries give a uniform causal pattern (rotary of zero is zero)."""
    tiny = tiny_model(kind)
    ids = tiny_ids(batch=1, pos=6)
    _, cache = tiny.run_with_cache(ids, names=[names.pattern(1)],
                                   fwd_hooks=[(names.q(1), lambda act, hook: torch.zeros_like(act))])
    pattern = cache[names.pattern(1)][0, 0]
    expected = torch.tril(torch.ones(6, 6)) / torch.arange(1, 7).unsqueeze(1)
    _close(pattern, expected, tol=1e-6)
