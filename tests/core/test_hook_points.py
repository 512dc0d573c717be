"""The TransformerLens-style hook points: attention internals without a configuration switch, norm pieces,
hook objects, and the golden ordered hook list of every family."""

from __future__ import annotations

import threading

import pytest
import torch

from mechscope.core import names
from mechscope.core.attention import using_implementation
from tiny_models import CONFIGS, tiny_ids, tiny_model


def _close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-5) -> None:
    diff = (a - b).abs().max().item()
    assert diff <= tol * max(1.0, b.abs().max().item()), f"max abs diff {diff}"


@torch.no_grad()
def test_patterns_equal_eager_and_the_model_keeps_its_attention(tiny) -> None:
    """Patterns and scores come from the rotated q/k while the model runs its own attention (sdpa where
    it uses sdpa): patterns equal an eager run's within 1e-6, logits are bit-identical to the plain run."""
    ids = tiny_ids(2, 12)
    impl = tiny.attn_implementation
    seen: list[str] = []

    def spy(pattern, hook):
        seen.append(tiny.attn_implementation)

    plain = tiny(ids)
    logits, cache = tiny.run_with_cache(
        ids, names=lambda n: n.endswith(("hook_pattern", "hook_attn_scores")), fwd_hooks=[(names.pattern(1), spy)])
    assert torch.equal(logits, plain)
    assert seen == [impl]  # no switch of the model's configuration during the run
    with using_implementation(tiny.hf_model, "eager"):
        eager = tiny.hf_model(input_ids=ids, output_attentions=True, use_cache=False).attentions
    for layer in range(tiny.cfg.n_layers):
        pattern = cache[names.pattern(layer)]
        assert (pattern - eager[layer]).abs().max().item() <= 1e-6
        _close(torch.softmax(cache[names.attn_scores(layer)], dim=-1), pattern, 1e-6)


@pytest.mark.parametrize("kind", ["gpt2", "llama", "gemma2", "mistral"])
@torch.no_grad()
def test_patterns_with_padding_equal_eager(kind: str) -> None:
    model = tiny_model(kind)
    ids = tiny_ids(2, 12)
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    _, cache = model.run_with_cache(ids, names=lambda n: n.endswith("hook_pattern"), attention_mask=mask)
    with using_implementation(model.hf_model, "eager"):
        eager = model.hf_model(input_ids=ids, attention_mask=mask, output_attentions=True, use_cache=False).attentions
    for layer in range(model.cfg.n_layers):
        real = cache[names.pattern(layer)][:, :, :7]  # rows of padding tokens are not compared
        assert (real - eager[layer][:, :, :7]).abs().max().item() <= 1e-6


@torch.no_grad()
def test_attention_hooks_belong_to_one_thread() -> None:
    """A run in another thread, during a pattern hook of this one, sees the plain model."""
    model = tiny_model("llama")
    ids = tiny_ids()
    plain = model(ids)
    calls: list[int] = []
    other: dict[str, torch.Tensor] = {}

    def hook(pattern, point):
        calls.append(point.layer())
        if len(calls) == 1:
            thread = threading.Thread(target=lambda: other.setdefault("logits", model(ids)))
            thread.start()
            thread.join()

    model.run_with_hooks(ids, fwd_hooks=[(lambda n: n.endswith("hook_pattern"), hook)])
    assert calls == [0, 1, 2]
    assert torch.equal(other["logits"], plain)


@torch.no_grad()
def test_editing_scores_equals_editing_the_pattern(tiny) -> None:
    """Scores that keep only key 0 give the same run as a pattern that attends only to key 0."""
    ids = tiny_ids()

    def only_first_score(scores, hook):
        new = torch.full_like(scores, float("-inf"))
        new[..., 0] = 0.0
        return new

    def only_first_pattern(pattern, hook):
        new = torch.zeros_like(pattern)
        new[..., 0] = 1.0
        return new

    via_scores = tiny.run_with_hooks(ids, fwd_hooks=[(names.attn_scores(1), only_first_score)])
    via_pattern = tiny.run_with_hooks(ids, fwd_hooks=[(names.pattern(1), only_first_pattern)])
    _close(via_scores, via_pattern)
    assert not torch.allclose(via_pattern, tiny(ids))


@pytest.mark.parametrize("kind", ["llama", "gemma3", "gpt_neox"])
@torch.no_grad()
def test_rotated_keys_edit_reaches_the_output(kind: str) -> None:
    """hook_rot_k is the key the scores use: zeroing it makes every score zero, so attention is uniform."""
    model = tiny_model(kind)
    ids = tiny_ids(pos=8)  # within Gemma 3's sliding window of 8
    zero = [(names.rot_k(0), lambda k, hook: torch.zeros_like(k))]
    _, cache = model.run_with_cache(ids, names=[names.pattern(0), names.rot_k(0), names.k(0)], fwd_hooks=zero)
    assert cache[names.rot_k(0)].shape == cache[names.k(0)].shape
    pattern = cache[names.pattern(0)]
    causal = torch.ones(ids.shape[1], ids.shape[1]).tril()
    _close(pattern, (causal / causal.sum(-1, keepdim=True)).expand_as(pattern))
    assert not torch.allclose(model.run_with_hooks(ids, fwd_hooks=zero), model(ids))


def test_gradients_reach_the_pattern(tiny) -> None:
    """Under autograd the output is computed from the pattern, so a cached pattern has a gradient."""
    ids = tiny_ids()
    logits, cache = tiny.run_with_cache(ids, names=[names.pattern(1)], grad=True)
    grad, = torch.autograd.grad(logits[:, -1, 3].sum(), cache[names.pattern(1)])
    assert grad.abs().max() > 0
    _close(logits.detach(), tiny(ids), 1e-5)


def test_gradient_at_hook_normalized_is_the_weight_times_the_gradient_at_hook_out() -> None:
    model = tiny_model("gpt2")
    ids = tiny_ids()
    logits, cache = model.run_with_cache(ids, names=[names.LN_FINAL, names.LN_FINAL_OUT], grad=True)
    g_norm, g_out = torch.autograd.grad(logits[:, -1, 3].sum(), [cache[names.LN_FINAL], cache[names.LN_FINAL_OUT]])
    _close(g_norm, g_out * model.final_norm.weight)
    assert g_norm.abs().max() > 0


@torch.no_grad()
def test_norm_pieces_rebuild_the_norm_output(tiny) -> None:
    """hook_out == w * hook_normalized (+ b), hook_normalized * hook_scale == the centered input; editing
    hook_normalized or hook_scale rebuilds the norm's output from the edit."""
    ids = tiny_ids()
    _, cache = tiny.run_with_cache(ids)
    final = tiny.final_norm
    offset = tiny.family.norm_offset
    weight = final.weight + offset
    bias = getattr(final, "bias", None)
    out = cache["ln_final.hook_normalized"] * weight + (bias if bias is not None else 0)
    _close(out, cache[names.LN_FINAL_OUT])
    resid = cache[names.resid_post(tiny.cfg.n_layers - 1)]
    centered = resid - resid.mean(-1, keepdim=True) if isinstance(final, torch.nn.LayerNorm) else resid
    _close(cache["ln_final.hook_normalized"] * cache[names.LN_FINAL_SCALE], centered)
    assert cache[names.LN_FINAL_SCALE].shape == (*ids.shape, 1)

    _, doubled = tiny.run_with_cache(ids, names=[names.LN_FINAL_OUT],
                                     fwd_hooks=[(names.LN_FINAL_SCALE, lambda s, hook: s * 2)])
    expected = cache["ln_final.hook_normalized"] / 2 * weight + (bias if bias is not None else 0)
    _close(doubled[names.LN_FINAL_OUT], expected)
    edited = tiny.run_with_hooks(ids, fwd_hooks=[(names.ln1(1), lambda n, hook: n * 0)])
    zeroed_in = tiny.run_with_hooks(ids, fwd_hooks=[("blocks.1.ln1.hook_out",
                                                     lambda o, hook: torch.zeros_like(o) + (
                                                         tiny.layers[1].get_submodule(tiny.family.ln1).bias
                                                         if bias is not None else 0))])
    _close(edited, zeroed_in)


@torch.no_grad()
def test_mlp_in_edits_only_what_the_mlp_reads() -> None:
    model = tiny_model("llama")
    ids = tiny_ids()
    _, cache = model.run_with_cache(ids, names=[names.resid_mid(1), names.mlp_out(1), names.resid_post(1)],
                                    fwd_hooks=[(names.mlp_in(1), lambda x, hook: x * 0)])
    _close(cache[names.resid_post(1)], cache[names.resid_mid(1)] + cache[names.mlp_out(1)])
    _, clean = model.run_with_cache(ids, names=[names.resid_mid(1)])
    _close(cache[names.resid_mid(1)], clean[names.resid_mid(1)])


@torch.no_grad()
def test_hook_object_has_name_layer_and_ctx() -> None:
    model = tiny_model("gpt2")
    seen: list[tuple[str, int]] = []

    def tl_style(activation, hook):
        hook.ctx["count"] = hook.ctx.get("count", 0) + 1
        seen.append((hook.name, hook.layer()))

    model.run_with_hooks(tiny_ids(), fwd_hooks=[(lambda n: n.endswith("hook_z"), tl_style)])
    assert seen == [(names.z(layer), layer) for layer in range(3)]
    from mechscope.core.errors import MechscopeError

    def no_layer(activation, hook):
        hook.layer()

    with pytest.raises(MechscopeError, match="outside the blocks"):
        model.run_with_hooks(tiny_ids(), fwd_hooks=[(names.EMBED, no_layer)])


# -- golden ordered hook lists --------------------------------------------------------------------

_GLOBAL_START = ["hook_embed"]
_GLOBAL_END = ["ln_final.hook_scale", "ln_final.hook_normalized", "ln_final.hook_out", "unembed.hook_in",
               "unembed.hook_out"]
_LN1 = ["hook_resid_pre", "hook_q_input", "hook_k_input", "hook_v_input", "ln1.hook_scale", "ln1.hook_normalized", "ln1.hook_out",
        "attn.hook_q", "attn.hook_k", "attn.hook_v"]
_ROT = ["attn.hook_rot_q", "attn.hook_rot_k"]
_ATTN = ["attn.hook_attn_scores", "attn.hook_pattern", "attn.hook_z", "attn.hook_result", "hook_attn_out"]
_MLP_IN = ["hook_mlp_in", "ln2.hook_scale", "ln2.hook_normalized", "ln2.hook_out", "mlp.hook_pre"]
_MLP_OUT = ["mlp.hook_post", "hook_mlp_out", "hook_resid_post"]
_GATED = [*_LN1, *_ROT, *_ATTN, "hook_resid_mid", *_MLP_IN, "mlp.hook_pre_linear", *_MLP_OUT]
GOLDEN_BLOCK = {
    "gpt2": [*_LN1, *_ATTN, "hook_resid_mid", *_MLP_IN, *_MLP_OUT],
    "llama": _GATED,
    "mistral": _GATED,
    "qwen2": _GATED,
    "gemma": _GATED,
    "gemma2": _GATED,
    "gemma3": _GATED,
    "gpt_neox": [*_LN1, *_ROT, *_ATTN, *_MLP_IN, *_MLP_OUT],
    "gpt_neox_sequential": [*_LN1, *_ROT, *_ATTN, "hook_resid_mid", *_MLP_IN, *_MLP_OUT],
}


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_golden_hook_list(kind: str) -> None:
    """The full ordered hook list of each family, written out by hand (changes must be deliberate)."""
    start = [*_GLOBAL_START, "hook_pos_embed"] if kind == "gpt2" else _GLOBAL_START
    expected = [*start, *(names.block(layer, s) for layer in range(3) for s in GOLDEN_BLOCK[kind]), *_GLOBAL_END]
    assert tiny_model(kind).hook_names() == expected
    assert set(GOLDEN_BLOCK) == set(CONFIGS)


@pytest.mark.parametrize("name", ["blocks.1.attn.hook_pattern", "blocks.1.attn.hook_attn_scores",
                                  "blocks.1.attn.hook_result", "blocks.1.ln2.hook_normalized",
                                  "blocks.1.ln1.hook_scale", "blocks.1.hook_resid_pre", "blocks.1.attn.hook_z"])
@torch.no_grad()
def test_in_place_edits_count_like_returned_ones(name: str) -> None:
    """TransformerLens hook functions often edit in place and return the same tensor (or nothing)."""
    model = tiny_model("llama")
    ids = tiny_ids()

    def in_place(act, hook):
        act[:, 1] = act[:, 1] * 0.5
        return act

    def returned(act, hook):
        act = act.clone()
        act[:, 1] = act[:, 1] * 0.5
        return act

    a = model.run_with_hooks(ids, fwd_hooks=[(name, in_place)])
    b = model.run_with_hooks(ids, fwd_hooks=[(name, returned)])
    assert torch.equal(a, b)
    assert not torch.allclose(a, model(ids))


@torch.no_grad()
def test_results_read_lazily_equal_results_computed_in_the_run(tiny) -> None:
    ids = tiny_ids()
    _, lazy = tiny.run_with_cache(ids)
    _, eager = tiny.run_with_cache(ids, names=lambda n: n.endswith("hook_result"),
                                   fwd_hooks=[(lambda n: n.endswith("hook_result"), lambda a, h: None)])
    assert list(lazy) == tiny.hook_names()
    for layer in range(tiny.cfg.n_layers):
        assert torch.equal(lazy[names.result(layer)], eager[names.result(layer)])


@pytest.mark.parametrize("part", ["q", "k", "v"])
@torch.no_grad()
def test_per_head_inputs_feed_only_their_head(tiny, part: str) -> None:
    """Putting the corrupt residual into head 1's q/k/v input equals putting the corrupt run's
    q/k/v of head 1 in place (q = W_Q ln1(resid_pre), head by head)."""
    clean, corrupt = tiny_ids(seed=2), tiny_ids(seed=3)
    layer = 1
    _, corrupt_cache = tiny.run_with_cache(corrupt, names=[names.resid_pre(layer), names.block(layer, f"attn.hook_{part}")])
    source_resid = corrupt_cache[names.resid_pre(layer)]
    source = corrupt_cache[names.block(layer, f"attn.hook_{part}")]

    def per_input(act, hook):
        assert act.shape[2] == source.shape[2]
        act = act.clone()
        act[:, :, 1] = source_resid
        return act

    def per_projection(act, hook):
        act = act.clone()
        act[:, :, 1] = source[:, :, 1]
        return act

    via_input = tiny.run_with_hooks(clean, fwd_hooks=[(names.block(layer, f"hook_{part}_input"), per_input)])
    via_projection = tiny.run_with_hooks(clean, fwd_hooks=[(names.block(layer, f"attn.hook_{part}"), per_projection)])
    _close(via_input, via_projection)
    assert not torch.allclose(via_input, tiny(clean))


@torch.no_grad()
def test_attention_hook_points_that_cannot_be_read_are_clear_errors() -> None:
    import dataclasses

    from mechscope.core.errors import MechscopeError

    model = tiny_model("llama")
    with using_implementation(model.hf_model, "flex_attention"):
        with pytest.raises(MechscopeError, match="sdpa or eager attention.*attn_implementation='sdpa'"):
            model.run_with_cache(tiny_ids(), names=[names.pattern(0)])
    # an attention module that never calls transformers' attention functions: never reached, not silently absent
    name = names.pattern(0)
    model.sites[name] = dataclasses.replace(model.sites[name], module=torch.nn.Identity())
    with pytest.raises(MechscopeError, match="was not reached"):
        model.run_with_cache(tiny_ids(), names=[name])
