"""Gemma family. Gemma 1 uses the Llama layout; Gemma 2 and 3 add a norm after attention and
after the MLP (sandwich norms), so the block's attention and MLP outputs are those norms' outputs.
The embedding module scales by sqrt(d_model), so `hook_embed` is already scaled. RMSNorm
multiplies by `1 + weight`."""

from mechscope.core.families.base import LLAMA_STYLE, Family

GEMMA = Family(name="gemma", model_types=("gemma",), norm_offset=1.0, mlp_linear="mlp.up_proj", **LLAMA_STYLE)

_SANDWICH = {
    **LLAMA_STYLE,
    "ln2": "pre_feedforward_layernorm",
    "attn_out": "post_attention_layernorm",
    "mlp_out": "post_feedforward_layernorm",
}
GEMMA2 = Family(name="gemma2", model_types=("gemma2",), norm_offset=1.0, mlp_linear="mlp.up_proj", **_SANDWICH)
GEMMA3 = Family(name="gemma3", model_types=("gemma3_text", "gemma3"), norm_offset=1.0, mlp_linear="mlp.up_proj",
                **_SANDWICH)
