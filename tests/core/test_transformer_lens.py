"""Cross-check against TransformerLens on a tiny GPT-2 and a tiny Llama (GQA).

TransformerLens is built from the same HF weights with its own conversion functions and
no weight processing. Tolerance: 1e-4 relative to each activation's largest magnitude
(TransformerLens computes attention and norms in its own order of float operations).
"""

from __future__ import annotations

import pytest
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig
from transformer_lens.pretrained.weight_conversions.gpt2 import convert_gpt2_weights
from transformer_lens.pretrained.weight_conversions.llama import convert_llama_weights

from tiny_models import tiny_ids, tiny_model

RTOL = 1e-4


def _tl_model(kind: str, model) -> HookedTransformer:
    c = model.cfg
    common = dict(n_layers=c.n_layers, d_model=c.d_model, d_head=c.d_head, n_heads=c.n_heads, d_mlp=c.d_mlp,
                  d_vocab=c.d_vocab, n_ctx=128, use_attn_result=True, use_hook_mlp_in=True, default_prepend_bos=False)
    if kind == "gpt2":
        cfg = HookedTransformerConfig(**common, act_fn="gelu_new", normalization_type="LN", eps=1e-5)
        state = convert_gpt2_weights(model.hf_model, cfg)
    else:
        cfg = HookedTransformerConfig(**common, act_fn="silu", normalization_type="RMS", eps=1e-6,
                                      positional_embedding_type="rotary", rotary_dim=c.d_head,
                                      n_key_value_heads=c.n_kv_heads, gated_mlp=True, final_rms=True,
                                      rotary_adjacent_pairs=False, rotary_base=10000)
        state = convert_llama_weights(model.hf_model, cfg)
    tl = HookedTransformer(cfg)
    tl.load_state_dict(state, strict=False)
    return tl.eval()


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
@torch.no_grad()
def test_same_activations_as_transformer_lens(kind: str) -> None:
    model = tiny_model(kind)
    tl = _tl_model(kind, model)
    ids = tiny_ids(batch=2, pos=9)
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
