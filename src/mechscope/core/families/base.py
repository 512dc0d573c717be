"""A model family is a table: where each hook point lives in the Hugging Face module tree.

Paths are relative to the HF causal-LM module (`layers`, `embed`, `final_norm`, `unembed`)
or to one decoder layer (the rest). `attn_out` and `mlp_out` name the module whose output
is what the block adds to the residual stream (the attention module itself, or a
post-attention norm in Gemma 2/3). `qkv` says how queries, keys and values come out:
`separate` (q_proj, k_proj, v_proj), `gpt2` (one fused projection, [q | k | v]) or `neox`
(one fused projection, per head [q | k | v]). `rotary` says whether queries and keys are
rotated (rotary position embeddings), `norm_offset` whether RMSNorm weights are stored as
`w - 1` (Gemma), `mlp_linear` names the ungated branch of a gated MLP. An attention-only model leaves the MLP
entries (`ln2`, `mlp_in`, `mlp_down`, `mlp_out`) empty and has no MLP hook points.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from torch import nn

QKVLayout = Literal["separate", "gpt2", "neox"]


@dataclass(frozen=True)
class Family:
    """Module paths of one architecture family (see the module docstring).

    Example:
        >>> from mechscope.core.families import family_for_model_type
        >>> fam = family_for_model_type("llama")
        >>> fam.name, fam.layers, fam.qkv, fam.has_mlp
        ('llama', 'model.layers', 'separate', True)
    """

    name: str
    model_types: tuple[str, ...]
    layers: str
    embed: str
    final_norm: str
    unembed: str
    ln1: str
    ln2: str
    attn: str
    attn_out: str
    mlp_in: str
    mlp_down: str
    mlp_out: str
    o_proj: str
    qkv: QKVLayout
    q_proj: str = ""
    k_proj: str = ""
    v_proj: str = ""
    pos_embed: str | None = None
    o_proj_transposed: bool = False  # GPT-2's Conv1D stores weight as [in, out]
    rotary: bool = True  # rotary position embeddings: `attn.hook_rot_q` / `hook_rot_k` exist
    norm_offset: float = 0.0  # 1.0 where RMSNorm multiplies by (1 + weight) (Gemma)
    mlp_linear: str = ""  # the ungated branch of a gated MLP (`mlp.hook_pre_linear`), if any

    @property
    def has_mlp(self) -> bool:
        return bool(self.mlp_out)

    def is_parallel(self, hf_config: Any) -> bool:
        """True when attention and MLP read the same residual (GPT-NeoX's parallel residual)."""
        return bool(getattr(hf_config, "use_parallel_residual", False)) and self.name == "gpt_neox"


def get_module(root: nn.Module, path: str) -> nn.Module:
    """`root.get_submodule(path)` with a clear error naming the missing piece.

    Example:
        >>> from torch import nn
        >>> root = nn.Sequential(nn.Linear(2, 3))
        >>> get_module(root, "0")
        Linear(in_features=2, out_features=3, bias=True)
        >>> get_module(root, "1")
        Traceback (most recent call last):
        ...
        LookupError: Sequential has no submodule '1'; its family table does not match it.
    """
    try:
        return root.get_submodule(path)
    except AttributeError as err:
        # Not AttributeError: raised inside a property, that would be mistaken for a missing attribute.
        raise LookupError(f"{type(root).__name__} has no submodule {path!r}; its family table does not match it.") from err


# Names of the parts of a Llama-style decoder layer shared by Llama, Mistral, Qwen2 and Gemma 1.
LLAMA_STYLE = dict(
    layers="model.layers",
    embed="model.embed_tokens",
    final_norm="model.norm",
    unembed="lm_head",
    ln1="input_layernorm",
    ln2="post_attention_layernorm",
    attn="self_attn",
    attn_out="self_attn",
    mlp_in="mlp.gate_proj",
    mlp_down="mlp.down_proj",
    mlp_out="mlp",
    o_proj="self_attn.o_proj",
    qkv="separate",
    q_proj="self_attn.q_proj",
    k_proj="self_attn.k_proj",
    v_proj="self_attn.v_proj",
)
