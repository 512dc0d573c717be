"""A tiny Llama saved with `save_pretrained` and a word-level tokenizer ('t1'..'t16'), for CLI tests."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from mechscope.toys.induction import toy_tokenizer


def save_tiny_llama(folder: Path, n_ctx: int = 64, poison: bool = False) -> str:
    """Write the model to `folder` and return its path; `poison` puts a NaN in layer 0's MLP weights."""
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=17, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=n_ctx)
    model = LlamaForCausalLM(config)
    if poison:
        with torch.no_grad():
            model.model.layers[0].mlp.down_proj.weight[0, 0] = float("nan")
    model.save_pretrained(folder)
    toy_tokenizer(16).save_pretrained(folder)
    return str(folder)
