"""Cross-check against TransformerLens on a tiny GPT-2 and a tiny Llama (GQA): every hook name both
libraries have (norm scales and pre-weight `hook_normalized`, rotated q/k, masked scores included),
weights in TransformerLens shapes, the cache's analysis methods, and a TransformerLens-style hook function.

TransformerLens is built from the same HF weights with its own conversion functions and
no weight processing (except where a test says so). Tolerance: 1e-4 relative to each
activation's largest magnitude (TransformerLens computes attention and norms in its own
order of float operations).
"""

from __future__ import annotations

import pytest
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig
from transformer_lens.pretrained.weight_conversions.gemma import convert_gemma_weights
from transformer_lens.pretrained.weight_conversions.gpt2 import convert_gpt2_weights
from transformer_lens.pretrained.weight_conversions.llama import convert_llama_weights
from transformer_lens.pretrained.weight_conversions.mistral import convert_mistral_weights
from transformer_lens.pretrained.weight_conversions.neox import convert_neox_weights
from transformer_lens.pretrained.weight_conversions.qwen2 import convert_qwen2_weights

from tiny_models import tiny_ids, tiny_model

RTOL = 1e-4


def _tl_model(kind: str, model, split_qkv_input: bool = False) -> HookedTransformer:
    c = model.cfg
    common = dict(n_layers=c.n_layers, d_model=c.d_model, d_head=c.d_head, n_heads=c.n_heads, d_mlp=c.d_mlp,
                  d_vocab=c.d_vocab, n_ctx=128, use_attn_result=True, use_hook_mlp_in=True,
                  use_split_qkv_input=split_qkv_input, default_prepend_bos=False)
    rotary = dict(positional_embedding_type="rotary", rotary_dim=c.d_head, rotary_adjacent_pairs=False,
                  rotary_base=10000)
    llama_like = dict(act_fn="silu", normalization_type="RMS", eps=1e-6, n_key_value_heads=c.n_kv_heads,
                      gated_mlp=True, final_rms=True, **rotary)
    if kind == "gpt2":
        cfg = HookedTransformerConfig(**common, act_fn="gelu_new", normalization_type="LN", eps=1e-5)
        convert = convert_gpt2_weights
    elif kind == "gpt_neox":
        cfg = HookedTransformerConfig(**common, act_fn="gelu", normalization_type="LN", eps=1e-5,
                                      parallel_attn_mlp=True, **{**rotary, "rotary_dim": c.d_head // 4})
        convert = convert_neox_weights
    elif kind == "gemma":
        cfg = HookedTransformerConfig(**common, **{**llama_like, "act_fn": "gelu_pytorch_tanh"})
        convert = convert_gemma_weights
    else:
        cfg = HookedTransformerConfig(**common, **llama_like)
        convert = {"llama": convert_llama_weights, "mistral": convert_mistral_weights,
                   "qwen2": convert_qwen2_weights}[kind]
    tl = HookedTransformer(cfg)
    tl.load_state_dict(convert(model.hf_model, cfg), strict=False)
    return tl.eval()


TL_FAMILIES = ["gpt2", "llama", "mistral", "qwen2", "gemma", "gpt_neox"]


@pytest.mark.parametrize("kind", TL_FAMILIES)
@torch.no_grad()
def test_same_activations_as_transformer_lens(kind: str) -> None:
    model = tiny_model(kind)
    tl = _tl_model(kind, model)
    ids = tiny_ids(batch=2, pos=8)  # within Mistral's sliding window of 8
    logits, ours = model.run_with_cache(ids)
    tl_logits, theirs = tl.run_with_cache(ids)
    compared = 0
    for name, act in ours.items():
        if name not in theirs.cache_dict:
            continue
        reference = theirs[name]
        if name.endswith("hook_attn_scores"):  # masked keys are -inf in both
            assert torch.equal(torch.isneginf(act), torch.isneginf(reference)), name
            act, reference = act.masked_fill(torch.isneginf(act), 0), reference.masked_fill(torch.isneginf(reference), 0)
        if name == "hook_pos_embed":  # HF computes it once and broadcasts over the batch
            act = act.expand_as(reference)
        assert act.shape == reference.shape, f"{name}: {tuple(act.shape)} vs {tuple(reference.shape)}"
        scale = max(1.0, reference.abs().max().item())
        diff = (act - reference).abs().max().item()
        assert diff <= RTOL * scale, f"{name}: max abs diff {diff:.3g} (scale {scale:.3g})"
        compared += 1
    assert compared >= 10 * model.cfg.n_layers, f"only {compared} hook points in common"
    ours_only = {n for n in ours if n not in theirs.cache_dict}
    theirs_only = {n for n in theirs.cache_dict if n not in ours}
    # the norms' weighted outputs, and the per-head inputs (TransformerLens's split_qkv_input mode, below)
    assert all(n.endswith((".hook_out", "_input")) for n in ours_only), ours_only
    assert not theirs_only, theirs_only
    assert (logits - tl_logits).abs().max().item() <= RTOL * max(1.0, tl_logits.abs().max().item())


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
@torch.no_grad()
def test_weights_equal_transformer_lens(kind: str) -> None:
    """W_* and b_* in TransformerLens shapes; K/V repeated per query head (GQA) as TransformerLens does."""
    model = tiny_model(kind)
    tl = _tl_model(kind, model)
    fields = ["W_E", "W_U", "b_U", "W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V", "b_O", "W_in", "W_out",
              "b_in", "b_out", *(["W_pos"] if kind == "gpt2" else ["W_gate"])]
    for name in fields:
        ours, theirs = getattr(model, name), getattr(tl, name)
        assert ours.shape == theirs.shape, f"{name}: {tuple(ours.shape)} vs {tuple(theirs.shape)}"
        assert torch.equal(ours, theirs), name
    layer = model.layer_weights(1)
    assert layer.W_K.shape == (model.cfg.n_kv_heads, model.cfg.d_model, model.cfg.d_head)
    assert layer.W_Q.untyped_storage().data_ptr() == model.hf_model.get_parameter(
        "transformer.h.1.attn.c_attn.weight" if kind == "gpt2" else "model.layers.1.self_attn.q_proj.weight"
    ).untyped_storage().data_ptr()  # a view, not a copy


def test_a_hook_function_written_for_transformer_lens_runs_unchanged() -> None:
    """A TransformerLens-style patching hook (hook.name, hook.layer(), in-place edit, returns the tensor)
    gives the same logits on both libraries."""
    model = tiny_model("llama")
    tl = _tl_model("llama", model)
    clean, corrupt = tiny_ids(1, 8, seed=2), tiny_ids(1, 8, seed=3)
    _, clean_cache = tl.run_with_cache(clean)
    layers_seen: list[int] = []

    def patch_head_and_resid(activation, hook):
        layers_seen.append(hook.layer())
        if hook.name.endswith("hook_z"):
            activation[:, :, 1, :] = clean_cache[hook.name][:, :, 1, :]
        else:
            activation[:, 3, :] = clean_cache[hook.name][:, 3, :]
        return activation

    hooks = [("blocks.1.attn.hook_z", patch_head_and_resid), ("blocks.2.hook_resid_pre", patch_head_and_resid)]
    ours = model.run_with_hooks(corrupt, fwd_hooks=hooks)
    theirs = tl.run_with_hooks(corrupt, fwd_hooks=hooks)
    assert layers_seen == [1, 2, 1, 2]
    assert (ours - theirs).abs().max().item() <= RTOL * max(1.0, theirs.abs().max().item())
    assert not torch.allclose(ours, model(corrupt))


def _both(x):
    return x if isinstance(x, tuple) else (x, None)


@pytest.mark.parametrize("kind", ["gpt2", "llama", "qwen2", "gemma"])
@torch.no_grad()
def test_cache_methods_equal_transformer_lens(kind: str) -> None:
    model = tiny_model(kind)
    tl = _tl_model(kind, model)
    ids = tiny_ids(batch=2, pos=9)
    _, ours = model.run_with_cache(ids)
    _, theirs = tl.run_with_cache(ids)
    calls = [
        ("accumulated_resid", dict(return_labels=True)),
        ("accumulated_resid", dict(layer=2, incl_mid=True, apply_ln=True, return_labels=True)),
        ("accumulated_resid", dict(apply_ln=True, pos_slice=-1)),
        ("accumulated_resid", dict(layer=1, mlp_input=True, apply_ln=True, return_labels=True)),
        ("decompose_resid", dict(return_labels=True)),
        ("decompose_resid", dict(layer=2, mode="attn", apply_ln=True, pos_slice=-1, return_labels=True)),
        ("decompose_resid", dict(layer=1, mlp_input=True, apply_ln=True, return_labels=True)),
        ("stack_head_results", dict(return_labels=True)),
        ("stack_head_results", dict(layer=2, incl_remainder=True, apply_ln=True, pos_slice=-1, return_labels=True)),
    ]
    for method, kwargs in calls:
        (a, a_labels), (b, b_labels) = _both(getattr(ours, method)(**kwargs)), _both(getattr(theirs, method)(**kwargs))
        assert a_labels == b_labels, method
        assert a.shape == b.shape, f"{method}{kwargs}: {tuple(a.shape)} vs {tuple(b.shape)}"
        assert (a - b).abs().max().item() <= RTOL * max(1.0, b.abs().max().item()), f"{method}{kwargs}"
    assert torch.equal(ours["pattern", 0], ours["blocks.0.attn.hook_pattern"])
    assert torch.equal(ours["scale", -1, "ln2"], ours["blocks.2.ln2.hook_scale"])
    for key in [("pattern", 0), ("resid_pre", -1), ("scale", 1, "ln1"), ("normalized", 2, "ln2"), ("z", 1, "attn"),
                ("attn", 1), ("q", 0), ("post", 2), ("mlp_out", 0)]:
        assert (ours[key] - theirs[key]).abs().max().item() <= RTOL * max(1.0, theirs[key].abs().max().item()), key


@pytest.mark.parametrize("kind", ["gpt2", "llama", "gemma"])
@torch.no_grad()
def test_logit_attrs_equal_transformer_lens_with_the_final_norm_folded(kind: str) -> None:
    """TransformerLens's logit_attrs expects the final norm's weight folded into W_U; mechscope multiplies
    the direction by it. Against a folded TransformerLens model they agree, and a full decomposition's
    attributions sum to the logit difference."""
    model = tiny_model(kind)
    tl = _tl_model(kind, model)
    tl.process_weights_(fold_ln=True, center_writing_weights=False, center_unembed=False)
    ids = tiny_ids(batch=2, pos=9)
    logits, ours = model.run_with_cache(ids)
    _, theirs = tl.run_with_cache(ids)
    stack = ours.decompose_resid(pos_slice=-1)
    answer, wrong = torch.tensor([3, 5]), torch.tensor([7, 11])
    a = ours.logit_attrs(stack, answer, wrong, pos_slice=-1)
    b = theirs.logit_attrs(theirs.decompose_resid(pos_slice=-1), answer, wrong, pos_slice=-1)
    assert a.shape == b.shape == (stack.shape[0], 2)
    assert (a - b).abs().max().item() <= RTOL * max(1.0, b.abs().max().item())
    diff = logits[:, -1].gather(1, answer[:, None]) - logits[:, -1].gather(1, wrong[:, None])
    heads = ours.logit_attrs(ours.stack_head_results(pos_slice=-1, incl_remainder=True), answer, wrong, pos_slice=-1)
    constant = 0.0
    if kind == "gpt2":  # LayerNorm bias and b_U give a constant term
        bias_dir = model.final_norm.bias @ (model.W_U[:, answer] - model.W_U[:, wrong])
        constant = bias_dir + model.b_U[answer] - model.b_U[wrong]
    for total in (a.sum(0), heads.sum(0)):
        assert (total + constant - diff[:, 0]).abs().max().item() <= 1e-4 * max(1.0, diff.abs().max().item())


@pytest.mark.parametrize("kind", ["gpt2", "llama", "gpt_neox"])
@torch.no_grad()
def test_per_head_inputs_equal_transformer_lens_split_qkv_input(kind: str) -> None:
    """hook_q_input / hook_k_input / hook_v_input (TransformerLens's use_split_qkv_input): same values,
    and the same logits after giving one head's query, key and value inputs another prompt's residual."""
    model = tiny_model(kind)
    tl = _tl_model(kind, model, split_qkv_input=True)
    clean, corrupt = tiny_ids(2, 8, seed=2), tiny_ids(2, 8, seed=3)
    _, ours = model.run_with_cache(clean)
    _, theirs = tl.run_with_cache(clean)
    for part in ("q", "k", "v"):
        name = f"blocks.1.hook_{part}_input"
        assert ours[name].shape == theirs[name].shape, name
        assert (ours[name] - theirs[name]).abs().max().item() <= RTOL * max(1.0, theirs[name].abs().max().item())
    _, source = tl.run_with_cache(corrupt)

    def head_from_corrupt(act, hook):
        act = act.clone()
        act[:, :, 1] = source["blocks.1.hook_resid_pre"]
        return act

    hooks = [(f"blocks.1.hook_{p}_input", head_from_corrupt) for p in ("q", "k", "v")]
    a, b = model.run_with_hooks(clean, fwd_hooks=hooks), tl.run_with_hooks(clean, fwd_hooks=hooks)
    assert (a - b).abs().max().item() <= RTOL * max(1.0, b.abs().max().item())
    assert not torch.allclose(a, model(clean))
