"""Cross-check against TransformerLens's patching module on a tiny GPT-2 (same weights, no processing).

Tolerance: 1e-4 in normalized recovery (both sides run float32; the two implementations
order their floating-point sums differently).
"""

from __future__ import annotations

import pytest
import torch
from _patching_helpers import ANSWER, WRONG, pair_ids

from mechscope.methods.metrics import LogitDiff
from mechscope.methods.patching import patch_sweep
from tiny_models import tiny_model

patching = pytest.importorskip("transformer_lens.patching", reason="TransformerLens is a test dependency")
TOL = 1e-4


def _hooked_transformer(model):
    """TransformerLens's HookedTransformer with the tiny GPT-2's weights, no weight processing."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens.pretrained.weight_conversions.gpt2 import convert_gpt2_weights

    hf = model.hf_model.config
    cfg = HookedTransformerConfig(
        d_model=hf.n_embd, d_head=hf.n_embd // hf.n_head, n_heads=hf.n_head, d_mlp=hf.n_inner or 4 * hf.n_embd,
        n_layers=hf.n_layer, n_ctx=hf.n_positions, d_vocab=hf.vocab_size, act_fn=hf.activation_function,
        eps=hf.layer_norm_epsilon, normalization_type="LN", positional_embedding_type="standard",
        original_architecture="GPT2LMHeadModel", dtype=torch.float32, device="cpu", default_prepend_bos=False)
    tl = HookedTransformer(cfg, move_to_device=False)
    tl.load_and_process_state_dict(convert_gpt2_weights(model.hf_model, cfg), fold_ln=False,
                                   center_writing_weights=False, center_unembed=False, fold_value_biases=False,
                                   refactor_factored_attn_matrices=False)
    return tl.eval()


@pytest.fixture(scope="module")
def both():
    model = tiny_model("gpt2")
    return model, _hooked_transformer(model)


def test_same_logits(both):
    model, tl = both
    clean, _ = pair_ids()
    with torch.no_grad():
        assert (tl(clean) - model(clean)).abs().max() < 1e-4


@pytest.mark.parametrize("site,by,tl_name", [
    ("resid_pre", "layer,pos", "get_act_patch_resid_pre"),
    ("resid_mid", "layer,pos", "get_act_patch_resid_mid"),
    ("attn_out", "layer,pos", "get_act_patch_attn_out"),
    ("mlp_out", "layer,pos", "get_act_patch_mlp_out"),
    ("z", "layer,head", "get_act_patch_attn_head_out_all_pos"),
    ("z", "layer,head,pos", "get_act_patch_attn_head_out_by_pos"),
])
def test_sweeps_match_transformer_lens(both, site, by, tl_name):
    model, tl = both
    clean, corrupt = pair_ids()
    metric = LogitDiff(torch.tensor(ANSWER), torch.tensor(WRONG))
    with torch.no_grad():
        clean_logits, clean_cache = tl.run_with_cache(clean)
        c, k = float(metric(clean_logits).mean()), float(metric(tl(corrupt)).mean())
        expected = getattr(patching, tl_name)(tl, corrupt, clean_cache,
                                              lambda logits: (metric(logits).mean() - k) / (c - k))
    ours = patch_sweep(model, clean, corrupt, site=site, by=by, answer=ANSWER, wrong=WRONG).scores
    if by == "layer,head,pos":  # TransformerLens orders these axes (layer, pos, head)
        expected = expected.transpose(1, 2)
    assert ours.shape == expected.shape
    assert (ours - expected.float()).abs().max() < TOL
