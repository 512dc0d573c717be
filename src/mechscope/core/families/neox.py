"""GPT-NeoX (Pythia): fused per-head query/key/value projection; usually a parallel residual,
in which attention and MLP both read the block input, so there is no `hook_resid_mid`."""

from mechscope.core.families.base import Family

GPT_NEOX = Family(
    name="gpt_neox",
    model_types=("gpt_neox",),
    layers="gpt_neox.layers",
    embed="gpt_neox.embed_in",
    final_norm="gpt_neox.final_layer_norm",
    unembed="lm_head",
    ln1="input_layernorm",
    ln2="post_attention_layernorm",
    attn="attention",
    attn_out="attention",
    mlp_in="mlp.dense_h_to_4h",
    mlp_down="mlp.dense_4h_to_h",
    mlp_out="mlp",
    o_proj="attention.dense",
    qkv="neox",
    q_proj="attention.query_key_value",
)
