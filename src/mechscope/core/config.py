"""`ModelConfig`: the few numbers every method needs, read from a Hugging Face config."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class ModelConfig:
    """Shape facts of a wrapped model.

    Example:
        >>> cfg = ModelConfig(n_layers=2, d_model=64, n_heads=4, n_kv_heads=2, d_head=16,
        ...                   d_mlp=128, d_vocab=100, family="llama", name="tiny")
        >>> cfg.n_kv_groups
        2
    """

    n_layers: int
    d_model: int
    n_heads: int
    n_kv_heads: int
    d_head: int
    d_mlp: int
    d_vocab: int
    family: str
    name: str
    parallel_attn_mlp: bool = False
    n_ctx: int | None = None

    @property
    def n_kv_groups(self) -> int:
        """Query heads that share one key/value head (1 without grouped-query attention)."""
        return self.n_heads // self.n_kv_heads

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _first(config: Any, *keys: str, default: Any = None) -> Any:
    for key in keys:
        value = getattr(config, key, None)
        if value is not None:
            return value
    return default


def config_from_hf(hf_config: Any, family: str, name: str, parallel_attn_mlp: bool = False) -> ModelConfig:
    """Read layer count, widths and vocabulary size from any HF decoder config.

    Example:
        >>> from transformers import GPT2Config
        >>> cfg = config_from_hf(GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=100, bos_token_id=0, eos_token_id=0), "gpt2", "tiny-gpt2")
        >>> cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.d_head, cfg.d_mlp, cfg.d_vocab
        (2, 64, 4, 16, 256, 100)
    """
    text = getattr(hf_config, "text_config", None) or hf_config
    d_model = _first(text, "hidden_size", "n_embd", "d_model")
    n_heads = _first(text, "num_attention_heads", "n_head")
    n_kv = _first(text, "num_key_value_heads", default=n_heads)
    d_head = _first(text, "head_dim", default=d_model // n_heads)
    d_mlp = _first(text, "intermediate_size", "n_inner", default=4 * d_model)
    return ModelConfig(
        n_layers=_first(text, "num_hidden_layers", "n_layer"),
        d_model=d_model,
        n_heads=n_heads,
        n_kv_heads=n_kv,
        d_head=d_head,
        d_mlp=d_mlp,
        d_vocab=_first(text, "vocab_size"),
        family=family,
        name=name,
        parallel_attn_mlp=parallel_attn_mlp,
        n_ctx=_first(text, "max_position_embeddings", "n_positions"),
    )
