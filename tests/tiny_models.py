"""Tiny random Hugging Face models, one per supported family, built from configs (no downloads)."""

from __future__ import annotations

import torch
from transformers import (
    AutoModelForCausalLM,
    Gemma2Config,
    Gemma3TextConfig,
    GemmaConfig,
    GPT2Config,
    GPTNeoXConfig,
    LlamaConfig,
    MistralConfig,
    Qwen2Config,
)

from mechscope import HookedModel

VOCAB = 96
_COMMON = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)

CONFIGS = {
    "gpt2": lambda: GPT2Config(vocab_size=VOCAB, n_embd=64, n_layer=3, n_head=4, n_positions=128),
    "llama": lambda: LlamaConfig(**_COMMON),
    "mistral": lambda: MistralConfig(**_COMMON, sliding_window=8),
    "qwen2": lambda: Qwen2Config(**_COMMON),
    "gemma": lambda: GemmaConfig(**_COMMON, head_dim=16),
    "gemma2": lambda: Gemma2Config(**_COMMON, head_dim=16, sliding_window=8, attn_logit_softcapping=50.0,
                                   final_logit_softcapping=30.0, query_pre_attn_scalar=16),
    "gemma3": lambda: Gemma3TextConfig(**_COMMON, head_dim=16, sliding_window=8, query_pre_attn_scalar=16),
    "gpt_neox": lambda: GPTNeoXConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                                      num_attention_heads=4, max_position_embeddings=128, rotary_pct=0.25,
                                      use_parallel_residual=True),
    "gpt_neox_sequential": lambda: GPTNeoXConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=96,
                                                 num_hidden_layers=3, num_attention_heads=4,
                                                 max_position_embeddings=128, rotary_pct=0.25,
                                                 use_parallel_residual=False),
}


def tiny_hf_model(kind: str, seed: int = 0) -> torch.nn.Module:
    """A random-weight HF causal LM of the given family, in float32 and eval mode."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(CONFIGS[kind](), dtype=torch.float32)
    # Random init leaves norm weights at one and biases at zero; perturb them so tests can see mix-ups.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name or "ln" in name or name.endswith("bias"):
                param.add_(0.1 * torch.randn_like(param))
    return model.eval()


def tiny_model(kind: str, seed: int = 0) -> HookedModel:
    return HookedModel(tiny_hf_model(kind, seed), name=f"tiny-{kind}")


def tiny_ids(batch: int = 2, pos: int = 10, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (batch, pos), generator=generator)
