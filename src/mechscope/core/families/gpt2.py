"""GPT-2: learned position embeddings, fused Conv1D query/key/value projection."""

from mechscope.core.families.base import Family

GPT2 = Family(
    name="gpt2",
    model_types=("gpt2",),
    layers="transformer.h",
    embed="transformer.wte",
    pos_embed="transformer.wpe",
    final_norm="transformer.ln_f",
    unembed="lm_head",
    ln1="ln_1",
    ln2="ln_2",
    attn="attn",
    attn_out="attn",
    mlp_in="mlp.c_fc",
    mlp_down="mlp.c_proj",
    mlp_out="mlp",
    o_proj="attn.c_proj",
    qkv="gpt2",
    q_proj="attn.c_attn",
    o_proj_transposed=True,
    rotary=False,
)
