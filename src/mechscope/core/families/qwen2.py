"""Qwen2: a Llama layout with biases on the query, key and value projections."""

from mechscope.core.families.base import LLAMA_STYLE, Family

QWEN2 = Family(name="qwen2", model_types=("qwen2",), mlp_linear="mlp.up_proj", **LLAMA_STYLE)
