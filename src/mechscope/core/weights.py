"""Weights in TransformerLens's shapes, read from the HF modules (views where the layout allows).

| name | shape | notes |
| --- | --- | --- |
| `W_E` | [d_vocab, d_model] | the stored table (Gemma's embedding multiplies it by sqrt(d_model)) |
| `W_pos` | [n_ctx, d_model] | learned positions (GPT-2) |
| `W_U`, `b_U` | [d_model, d_vocab], [d_vocab] | |
| `W_Q` | [n_layers, n_heads, d_model, d_head] | |
| `W_K`, `W_V` | [n_layers, n_heads, d_model, d_head] | per query head, key/value heads repeated (as TransformerLens) |
| `W_O` | [n_layers, n_heads, d_head, d_model] | |
| `b_Q`, `b_K`, `b_V` | [n_layers, n_heads, d_head] | zeros where the model has none |
| `b_O`, `b_out` | [n_layers, d_model] | |
| `W_in`, `W_gate` | [n_layers, d_model, d_mlp] | `W_in` is the ungated (up) branch of a gated MLP, `W_gate` its gate |
| `W_out` | [n_layers, d_mlp, d_model] | |
| `b_in` | [n_layers, d_mlp] | |

The stacked (all-layer) tensors are copies, as in TransformerLens; `layer_weights(model, l)`
gives one layer's matrices as views of the HF parameters (K/V unrepeated: `n_kv_heads`),
so an in-place edit there edits the model. Norm weights are not folded in (mechscope keeps
HF's activations; see `ActivationCache.logit_attrs` for how the final norm is handled).

Example:
    >>> model.W_Q.shape                                # doctest: +SKIP
    torch.Size([30, 9, 576, 64])
    >>> (model.W_E[5] @ model.W_Q[0, 0]).shape          # doctest: +SKIP
    torch.Size([64])
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor, nn
from transformers.pytorch_utils import Conv1D

from mechscope.core.families import get_module


class LayerWeights(NamedTuple):
    """One layer's weights (views where possible); K/V have `n_kv_heads` heads.

    Example:
        >>> import torch
        >>> from mechscope.core.examples import tiny_model
        >>> model = tiny_model(vocab_size=50)       # 2-layer random Llama, width 16
        >>> w = layer_weights(model, 0)
        >>> w.W_Q.shape, w.W_K.shape, w.W_O.shape, w.W_in.shape    # K/V keep n_kv_heads = 1
        (torch.Size([2, 16, 8]), torch.Size([1, 16, 8]), torch.Size([2, 8, 16]), torch.Size([16, 32]))
    """

    W_Q: Tensor
    W_K: Tensor
    W_V: Tensor
    W_O: Tensor
    b_Q: Tensor
    b_K: Tensor
    b_V: Tensor
    b_O: Tensor
    W_in: Tensor | None
    W_gate: Tensor | None
    W_out: Tensor | None
    b_in: Tensor | None
    b_out: Tensor | None


def _in_out(module: nn.Module) -> Tensor:
    """A projection's weight as [d_in, d_out] (HF Linear stores [out, in]; GPT-2's Conv1D [in, out])."""
    return module.weight if isinstance(module, Conv1D) else module.weight.T


def _bias(module: nn.Module, width: int, like: Tensor) -> Tensor:
    bias = getattr(module, "bias", None)
    return bias if bias is not None else torch.zeros(width, dtype=like.dtype, device=like.device)


def _heads_in(weight: Tensor, n: int, d_head: int) -> Tensor:
    """[d_model, n * d_head] -> [n, d_model, d_head]."""
    return weight.view(weight.shape[0], n, d_head).permute(1, 0, 2)


def _qkv(model: Any, layer: nn.Module) -> tuple[Tensor, ...]:
    fam, cfg = model.family, model.cfg
    n, n_kv, d = cfg.n_heads, cfg.n_kv_heads, cfg.d_head
    if fam.qkv == "separate":
        projs = [get_module(layer, p) for p in (fam.q_proj, fam.k_proj, fam.v_proj)]
        ws = [_heads_in(_in_out(p), h, d) for p, h in zip(projs, (n, n_kv, n_kv), strict=True)]
        bs = [_bias(p, h * d, ws[0]).view(h, d) for p, h in zip(projs, (n, n_kv, n_kv), strict=True)]
        return (*ws, *bs)
    fused = get_module(layer, fam.q_proj)
    weight = _in_out(fused)  # [d_model, 3 * n * d]
    bias = _bias(fused, weight.shape[1], weight)
    if fam.qkv == "gpt2":  # [q | k | v], each n * d wide
        ws = [_heads_in(part, n, d) for part in weight.split(n * d, dim=1)]
        bs = [part.view(n, d) for part in bias.split(n * d)]
    else:  # neox: per head [q | k | v]
        per_head = weight.view(weight.shape[0], n, 3, d)
        ws = [per_head[:, :, i].permute(1, 0, 2) for i in range(3)]
        bs = [bias.view(n, 3, d)[:, i] for i in range(3)]
    return (*ws, *bs)


def layer_weights(model: Any, index: int) -> LayerWeights:
    """The weights of block `index` in TransformerLens shapes (see the module docstring).

    Example:
        >>> import torch
        >>> from mechscope.core.examples import tiny_model
        >>> model = tiny_model(vocab_size=50)       # 2-layer random Llama, width 16
        >>> w = layer_weights(model, 1)
        >>> w.W_gate.shape, w.W_out.shape, w.b_Q.shape
        (torch.Size([16, 32]), torch.Size([32, 16]), torch.Size([2, 8]))
    """
    fam, cfg = model.family, model.cfg
    layer = model.layers[index]
    w_q, w_k, w_v, b_q, b_k, b_v = _qkv(model, layer)
    o_proj = get_module(layer, fam.o_proj)
    w_o = _in_out(o_proj).view(cfg.n_heads, cfg.d_head, -1)
    b_o = _bias(o_proj, w_o.shape[-1], w_o)
    mlp: list[Tensor | None] = [None] * 5
    if fam.has_mlp and cfg.d_mlp:
        first, down = get_module(layer, fam.mlp_in), get_module(layer, fam.mlp_down)
        up = get_module(layer, fam.mlp_linear) if fam.mlp_linear else first
        w_in, w_out = _in_out(up), _in_out(down)
        mlp = [w_in, _in_out(first) if fam.mlp_linear else None, w_out,
               _bias(up, w_in.shape[1], w_in), _bias(down, w_out.shape[1], w_out)]
    return LayerWeights(w_q, w_k, w_v, w_o, b_q, b_k, b_v, b_o, *mlp)


def stacked(model: Any, name: str) -> Tensor:
    """`name` (e.g. 'W_K') for every layer, stacked: [n_layers, ...]; K/V repeated per query head.

    Example:
        >>> import torch
        >>> from mechscope.core.examples import tiny_model
        >>> model = tiny_model(vocab_size=50)       # 2-layer random Llama, width 16
        >>> stacked(model, "W_K").shape                       # repeated per query head: [n_layers, n_heads, d_model, d_head]
        torch.Size([2, 2, 16, 8])
    """
    if name not in LayerWeights._fields:
        raise AttributeError(name)
    parts = []
    for index in range(model.cfg.n_layers):
        value = getattr(layer_weights(model, index), name)
        if value is None:
            raise AttributeError(f"{model.cfg.family} blocks have no {name}")
        if name in ("W_K", "W_V", "b_K", "b_V") and model.cfg.n_kv_groups > 1:
            value = value.repeat_interleave(model.cfg.n_kv_groups, dim=0)
        parts.append(value)
    return torch.stack(parts)


def embedding(model: Any) -> Tensor:
    """W_E [d_vocab, d_model] (a view).

    Example:
        >>> import torch
        >>> from mechscope.core.examples import tiny_model
        >>> model = tiny_model(vocab_size=50)       # 2-layer random Llama, width 16
        >>> embedding(model).shape
        torch.Size([50, 16])
    """
    return get_module(model.hf_model, model.family.embed).weight


def unembedding(model: Any) -> tuple[Tensor, Tensor]:
    """(W_U [d_model, d_vocab] (a view), b_U [d_vocab]).

    Example:
        >>> import torch
        >>> from mechscope.core.examples import tiny_model
        >>> model = tiny_model(vocab_size=50)       # 2-layer random Llama, width 16
        >>> W_U, b_U = unembedding(model)
        >>> W_U.shape, b_U.abs().sum()
        (torch.Size([16, 50]), tensor(0.))
    """
    head = model.lm_head
    return head.weight.T, _bias(head, head.weight.shape[0], head.weight)


def positions(model: Any) -> Tensor:
    """W_pos [n_ctx, d_model] for models with learned positions.

    Example:
        >>> import torch
        >>> from mechscope.core.examples import tiny_model
        >>> model = tiny_model(vocab_size=50)       # 2-layer random Llama, width 16
        >>> positions(model)
        Traceback (most recent call last):
        ...
        AttributeError: llama models have no learned position embedding (W_pos)
    """
    if not model.family.pos_embed:
        raise AttributeError(f"{model.cfg.family} models have no learned position embedding (W_pos)")
    return get_module(model.hf_model, model.family.pos_embed).weight
