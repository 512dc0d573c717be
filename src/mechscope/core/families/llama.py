"""Llama family: Llama 2/3, SmolLM2 (grouped-query attention), and the same layout in Mistral and Qwen2."""

from mechscope.core.families.base import LLAMA_STYLE, Family

LLAMA = Family(name="llama", model_types=("llama",), mlp_linear="mlp.up_proj", **LLAMA_STYLE)
