"""Mistral: a Llama layout (sliding-window attention is handled inside HF's mask)."""

from mechscope.core.families.base import LLAMA_STYLE, Family

MISTRAL = Family(name="mistral", model_types=("mistral",), mlp_linear="mlp.up_proj", **LLAMA_STYLE)
