"""A small attention-only transformer as a Hugging Face model (`model_type="mechscope_attn_only"`).

Per block (pre-norm): `h = h + Attn(LN1(h))`, then `h = h + MLP(LN2(h))` where the MLP has
`intermediate_size` hidden units; with `intermediate_size=0` (the default) the MLP is empty
(its output is exactly zero, `LN2` is the identity) and the model is attention-only:

    logits = W_U · LN_final(E[tokens] + P[positions] + sum_layers sum_heads head outputs) + b_U

Learned absolute position embeddings; causal softmax attention with q/k/v/o projections.
Importing this module registers the config and model with transformers' Auto classes and the
family table with mechscope, so a folder written by `save_pretrained` loads with
`mechscope.load_model(folder)` and `AutoModelForCausalLM.from_pretrained(folder)`.

Example:
    >>> config = AttnOnlyConfig(vocab_size=20, hidden_size=32, num_hidden_layers=2, num_attention_heads=2)
    >>> model = AttnOnlyForCausalLM(config)
    >>> model(torch.tensor([[0, 5, 6]])).logits.shape
    torch.Size([1, 3, 20])
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor, nn
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig, PreTrainedModel
from transformers.masking_utils import create_causal_mask
from transformers.modeling_outputs import CausalLMOutput
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from mechscope.core.families import Family, register_family
from mechscope.core.families.base import LLAMA_STYLE

MODEL_TYPE = "mechscope_attn_only"


class AttnOnlyConfig(PretrainedConfig):
    """Shape of the attention-only transformer (`intermediate_size=0`: no MLP).

    Example:
        >>> config = AttnOnlyConfig(hidden_size=32, num_attention_heads=4)
        >>> config.head_dim, config.intermediate_size
        (8, 0)
    """

    model_type = MODEL_TYPE

    def __init__(
        self,
        vocab_size: int = 64,
        hidden_size: int = 64,
        num_hidden_layers: int = 2,
        num_attention_heads: int = 4,
        max_position_embeddings: int = 128,
        intermediate_size: int = 0,
        layer_norm_eps: float = 1e-5,
        initializer_range: float = 0.02,
        positions: str = "learned",
        rope_theta: float = 10000.0,
        **kwargs: Any,
    ) -> None:
        if positions not in ("learned", "rotary"):
            raise ValueError(f"positions must be 'learned' or 'rotary', got {positions!r}")
        if hidden_size % num_attention_heads:
            raise ValueError(
                f"hidden_size={hidden_size} is not a multiple of num_attention_heads={num_attention_heads}"
            )
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_attention_heads
        self.head_dim = hidden_size // num_attention_heads
        self.max_position_embeddings = max_position_embeddings
        self.intermediate_size = intermediate_size
        self.layer_norm_eps = layer_norm_eps
        self.initializer_range = initializer_range
        self.positions = positions
        self.rope_theta = rope_theta
        kwargs.setdefault("tie_word_embeddings", False)
        super().__init__(**kwargs)


def eager_attention_forward(
    module: nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[Tensor, Tensor]:
    """softmax(q kᵀ · scaling + mask) v. Inputs [batch, heads, pos, d_head]; returns ([batch, pos, heads, d_head], pattern).

    Example:
        >>> q = k = v = torch.zeros(1, 2, 3, 4)                        # [batch, heads, pos, d_head]
        >>> out, pattern = eager_attention_forward(nn.Identity(), q, k, v, None, scaling=0.5)
        >>> out.shape, pattern[0, 0, 0]                               # no mask: uniform attention
        (torch.Size([1, 3, 2, 4]), tensor([0.3333, 0.3333, 0.3333]))
    """
    scores = torch.matmul(query, key.transpose(-1, -2)) * scaling
    if attention_mask is not None:
        scores = scores + attention_mask[..., : key.shape[-2]]
    pattern = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    pattern = nn.functional.dropout(pattern, p=dropout, training=module.training)
    return torch.matmul(pattern, value).transpose(1, 2).contiguous(), pattern


def rotate(x: Tensor, theta: float) -> Tensor:
    """Rotary position embedding of x [batch, heads, pos, d_head]: pairs (x_i, x_{i+d/2}) turn by pos * theta^(-2i/d).

    Example:
        >>> x = torch.ones(1, 1, 3, 4)
        >>> rotate(x, 10000.0)[0, 0, 0]                               # position 0 is not turned
        tensor([1., 1., 1., 1.])
    """
    half = x.shape[-1] // 2
    freqs = theta ** (-torch.arange(half, device=x.device, dtype=torch.float32) / half)
    angles = torch.arange(x.shape[-2], device=x.device, dtype=torch.float32)[:, None] * freqs
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    first, second = x[..., :half], x[..., half:]
    return torch.cat([first * cos - second * sin, first * sin + second * cos], dim=-1)


class AttnOnlyAttention(nn.Module):
    """Multi-head causal self-attention with separate q/k/v/o projections.

    Example:
        >>> attn = AttnOnlyAttention(AttnOnlyConfig(hidden_size=32, num_attention_heads=4), layer_idx=0)
        >>> attn.q_proj.weight.shape
        torch.Size([32, 32])
    """

    def __init__(self, config: AttnOnlyConfig, layer_idx: int) -> None:
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.head_dim = config.head_dim
        self.scaling = self.head_dim**-0.5
        self.is_causal = True
        self.num_key_value_groups = 1
        width = config.num_attention_heads * self.head_dim
        self.q_proj = nn.Linear(config.hidden_size, width)
        self.k_proj = nn.Linear(config.hidden_size, width)
        self.v_proj = nn.Linear(config.hidden_size, width)
        self.o_proj = nn.Linear(width, config.hidden_size)

    def forward(self, hidden_states: Tensor, attention_mask: Tensor | None = None, **kwargs: Any) -> Tensor:
        batch, pos, _ = hidden_states.shape
        shape = (batch, pos, -1, self.head_dim)
        query = self.q_proj(hidden_states).view(shape).transpose(1, 2)
        key = self.k_proj(hidden_states).view(shape).transpose(1, 2)
        value = self.v_proj(hidden_states).view(shape).transpose(1, 2)
        if self.config.positions == "rotary":
            query, key = rotate(query, self.config.rope_theta), rotate(key, self.config.rope_theta)
        impl = self.config._attn_implementation
        # Through the shared table even for "eager", so attention hook points can read the pattern.
        attend = eager_attention_forward if impl is None else ALL_ATTENTION_FUNCTIONS.get_interface(
            impl, eager_attention_forward)
        out, _ = attend(self, query, key, value, attention_mask, scaling=self.scaling, dropout=0.0)
        return self.o_proj(out.reshape(batch, pos, -1))


class AttnOnlyMLP(nn.Module):
    """GELU MLP with `intermediate_size` hidden units; zero units give an exactly zero output.

    Example:
        >>> mlp = AttnOnlyMLP(AttnOnlyConfig(hidden_size=8, num_attention_heads=2))   # intermediate_size=0
        >>> float(mlp(torch.ones(1, 2, 8)).abs().sum())
        0.0
    """

    def __init__(self, config: AttnOnlyConfig) -> None:
        super().__init__()
        with (
            warnings.catch_warnings()
        ):  # zero units: PyTorch warns that initializing an empty tensor does nothing
            warnings.filterwarnings("ignore", message="Initializing zero-element tensors")
            self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
            self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(nn.functional.gelu(self.up_proj(x)))


class AttnOnlyBlock(nn.Module):
    """Pre-norm residual block: attention, then the (possibly empty) MLP.

    Example:
        >>> block = AttnOnlyBlock(AttnOnlyConfig(hidden_size=8, num_attention_heads=2), layer_idx=0)
        >>> type(block.post_attention_layernorm).__name__             # no MLP: LN2 is the identity
        'Identity'
    """

    def __init__(self, config: AttnOnlyConfig, layer_idx: int) -> None:
        super().__init__()
        eps = config.layer_norm_eps
        self.input_layernorm = nn.LayerNorm(config.hidden_size, eps=eps)
        self.self_attn = AttnOnlyAttention(config, layer_idx)
        has_mlp = config.intermediate_size > 0
        self.post_attention_layernorm = (
            nn.LayerNorm(config.hidden_size, eps=eps) if has_mlp else nn.Identity()
        )
        self.mlp = AttnOnlyMLP(config)

    def forward(self, hidden_states: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        hidden_states = hidden_states + self.self_attn(self.input_layernorm(hidden_states), attention_mask)
        return hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))


class AttnOnlyPreTrainedModel(PreTrainedModel):
    """The Hugging Face base class of the toy: its config class and weight initialization.

    Example:
        >>> issubclass(AttnOnlyForCausalLM, AttnOnlyPreTrainedModel), AttnOnlyPreTrainedModel.config_class.model_type
        (True, 'mechscope_attn_only')
    """
    config_class = AttnOnlyConfig
    config: AttnOnlyConfig
    base_model_prefix = "model"
    _supports_sdpa = True
    _supports_attention_backend = True

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=std)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


class AttnOnlyModel(AttnOnlyPreTrainedModel):
    """Embeddings, blocks and final norm; returns the final residual stream (normalized).

    Example:
        >>> model = AttnOnlyModel(AttnOnlyConfig(vocab_size=20, hidden_size=32, num_attention_heads=2))
        >>> model(torch.tensor([[0, 5, 6]])).shape
        torch.Size([1, 3, 32])
    """

    def __init__(self, config: AttnOnlyConfig) -> None:
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.embed_positions = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.layers = nn.ModuleList(AttnOnlyBlock(config, i) for i in range(config.num_hidden_layers))
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.post_init()

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        pos = input_ids.shape[1]
        if pos > self.config.max_position_embeddings:
            raise ValueError(
                f"{pos} positions; this model has max_position_embeddings={self.config.max_position_embeddings}"
            )
        positions = torch.arange(pos, device=input_ids.device)[None]
        hidden = self.embed_tokens(input_ids)
        if self.config.positions == "learned":
            hidden = hidden + self.embed_positions(positions)
        # no cache: passed by position, as transformers renamed the argument (past_key_values -> cache)
        mask = create_causal_mask(self.config, hidden, attention_mask, None, position_ids=positions)
        for layer in self.layers:
            hidden = layer(hidden, mask)
        return self.norm(hidden)


class AttnOnlyForCausalLM(AttnOnlyPreTrainedModel):
    """`AttnOnlyModel` plus an untied unembedding (`lm_head`, with bias).

    Example:
        >>> model = AttnOnlyForCausalLM(AttnOnlyConfig(vocab_size=20, hidden_size=32, num_attention_heads=2))
        >>> ids = torch.tensor([[0, 5, 6, 5]])
        >>> out = model(ids, labels=ids)
        >>> out.logits.shape, out.loss.ndim
        (torch.Size([1, 4, 20]), 0)
    """

    def __init__(self, config: AttnOnlyConfig) -> None:
        super().__init__(config)
        self.model = AttnOnlyModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size)
        self.post_init()

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        labels: Tensor | None = None,
        **kwargs: Any,
    ) -> CausalLMOutput:
        logits = self.lm_head(self.model(input_ids, attention_mask))
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(
                logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100
            )
        return CausalLMOutput(loss=loss, logits=logits)


# The Llama layout, plus learned positions; the zero-width MLP reads through `up_proj`.
ATTN_ONLY = Family(name="attn_only", model_types=(MODEL_TYPE,), pos_embed="model.embed_positions",
                   **{**LLAMA_STYLE, "mlp_in": "mlp.up_proj"})

AutoConfig.register(MODEL_TYPE, AttnOnlyConfig, exist_ok=True)
AutoModelForCausalLM.register(AttnOnlyConfig, AttnOnlyForCausalLM, exist_ok=True)
register_family(ATTN_ONLY)
