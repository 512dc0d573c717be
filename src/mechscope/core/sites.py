"""Hook sites: where each hook name is read from the HF module tree and how an edit is written back.

A `Site` reads its activation from a module's input (`pre`) or output (`post`) through a
`read` view and writes a replacement back with `write`. Sites that share a module event
run in forward order (`order`). Some names need more than a view (`special`):

- `attn.hook_rot_q` / `hook_rot_k` / `hook_attn_scores` / `hook_pattern` come from inside
  the attention function (event `attention`, see `attention.py`);
- `ln*.hook_scale` and `ln*.hook_normalized` are computed from the norm's input (see
  `norms.py`); an edit rebuilds the norm's output from them; `ln*.hook_out` is the norm
  module's own output (weight applied);
- `attn.hook_result` is computed from `hook_z` and the output projection's weight, only
  when asked for; an edit replaces the projection's output by the sum over heads plus bias.
  Where a norm follows attention (Gemma 2/3), each head's result is passed through that
  norm with the scale of the whole attention output, so the heads sum to `hook_attn_out`,
  what the residual stream receives; an edit replaces the norm's output by their sum;
- `hook_{q,k,v}_input` are the attention norm's input repeated per head (a view); an edit
  recomputes the edited heads' q/k/v from their own inputs through the norm and projection;
- `hook_resid_mid` is read at the input of the MLP's norm; an edit also replaces the
  residual the block carries on, so the block output becomes `edit + mlp_out`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from mechscope.core import names
from mechscope.core.config import ModelConfig
from mechscope.core.families import Family, get_module
from mechscope.core.norms import NormSpec, norm_spec, scale_of

Event = Literal["pre", "post", "attention"]
Reader = Callable[[Tensor], Tensor]
Writer = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class Site:
    """One hook point: `read(raw) -> activation`, `write(raw, activation) -> raw`.

    Example:
        >>> import torch
        >>> from mechscope.core.examples import tiny_model
        >>> model = tiny_model(vocab_size=50)       # 2-layer random Llama, width 16
        >>> site = model.sites["blocks.1.attn.hook_z"]
        >>> site.layer, site.event, site.read(torch.zeros(1, 3, 16)).shape      # [batch, pos, n_heads, d_head]
        (1, 'pre', torch.Size([1, 3, 2, 8]))
    """

    name: str
    layer: int | None
    module: nn.Module
    event: Event
    order: int
    read: Reader
    write: Writer
    special: str = ""  # how the sites described in the module docstring are handled
    norm: NormSpec | None = None  # for `ln*.hook_scale` / `hook_normalized`


def _identity(raw: Tensor) -> Tensor:
    return raw


def _replace(raw: Tensor, act: Tensor) -> Tensor:
    return act


def _heads(n: int, d_head: int) -> tuple[Reader, Writer]:
    def read(raw: Tensor) -> Tensor:
        return raw.view(*raw.shape[:-1], n, d_head)

    def write(raw: Tensor, act: Tensor) -> Tensor:
        return act.reshape(raw.shape)

    return read, write


def _gpt2_slice(index: int, n: int, d_head: int) -> tuple[Reader, Writer]:
    width = n * d_head

    def read(raw: Tensor) -> Tensor:
        return raw[..., index * width:(index + 1) * width].view(*raw.shape[:-1], n, d_head)

    def write(raw: Tensor, act: Tensor) -> Tensor:
        parts = list(raw.split(width, dim=-1))
        parts[index] = act.reshape(*raw.shape[:-1], width)
        return torch.cat(parts, dim=-1)

    return read, write


def _neox_slice(index: int, n: int, d_head: int) -> tuple[Reader, Writer]:
    def read(raw: Tensor) -> Tensor:
        return raw.view(*raw.shape[:-1], n, 3 * d_head)[..., index * d_head:(index + 1) * d_head]

    def write(raw: Tensor, act: Tensor) -> Tensor:
        parts = list(raw.view(*raw.shape[:-1], n, 3 * d_head).split(d_head, dim=-1))
        parts[index] = act
        return torch.cat(parts, dim=-1).reshape(raw.shape)

    return read, write


def _per_head(n: int) -> Reader:
    def read(raw: Tensor) -> Tensor:
        return raw.unsqueeze(-2).expand(*raw.shape[:-1], n, raw.shape[-1])

    return read


def o_proj_heads_weight(o_proj: nn.Module, cfg: ModelConfig, transposed: bool) -> Tensor:
    """The output projection as [n_heads, d_head, d_model] (each head's W_O).

    Example:
        >>> import torch
        >>> from mechscope.core.examples import tiny_model
        >>> model = tiny_model(vocab_size=50)       # 2-layer random Llama, width 16
        >>> o_proj = model.layers[0].self_attn.o_proj
        >>> o_proj_heads_weight(o_proj, model.cfg, transposed=False).shape
        torch.Size([2, 8, 16])
    """
    weight = o_proj.weight if transposed else o_proj.weight.T
    return weight.reshape(cfg.n_heads, cfg.d_head, -1)


def _result_reader(o_proj: nn.Module, cfg: ModelConfig, transposed: bool,
                   post_norm: tuple[nn.Module, NormSpec] | None) -> Reader:
    def read(raw: Tensor) -> Tensor:
        z = raw.view(*raw.shape[:-1], cfg.n_heads, cfg.d_head)
        w_o = o_proj_heads_weight(o_proj, cfg, transposed)
        result = torch.einsum("bphd,hdm->bphm", z, w_o.to(z.dtype))
        if post_norm is None:
            return result
        norm, spec = post_norm
        bias = getattr(o_proj, "bias", None)
        total = result.sum(dim=-2) + (bias if bias is not None else 0)  # the norm's input, shared by every head
        scale = scale_of(spec, total).unsqueeze(-2)
        weight = norm.weight.float() + spec.weight_offset
        return (result.float() / scale.float() * weight).to(result.dtype)

    return read


def build_sites(hf_model: nn.Module, family: Family, cfg: ModelConfig) -> dict[str, Site]:
    """Every hook site of a model, keyed by hook name, in forward order.

    Example:
        >>> import torch
        >>> from mechscope.core.examples import tiny_model
        >>> model = tiny_model(vocab_size=50)       # 2-layer random Llama, width 16
        >>> sites = build_sites(model.hf_model, model.family, model.cfg)
        >>> list(sites)[:3]
        ['hook_embed', 'blocks.0.hook_resid_pre', 'blocks.0.hook_q_input']
    """
    sites: dict[str, Site] = {}

    def add(name: str, layer: int | None, module: nn.Module, event: Event, order: int,
            rw: tuple[Reader, Writer] = (_identity, _replace), special: str = "", norm: NormSpec | None = None) -> None:
        sites[name] = Site(name, layer, module, event, order, rw[0], rw[1], special, norm)

    def add_norm(prefix: str, layer: int | None, module: nn.Module) -> None:
        spec = norm_spec(module, family.norm_offset)
        if spec is None:  # not a norm (an identity): its output is all there is
            add(f"{prefix}.hook_normalized", layer, module, "post", 0)
            return
        add(f"{prefix}.hook_scale", layer, module, "post", 0, special="norm_scale", norm=spec)
        add(f"{prefix}.hook_normalized", layer, module, "post", 1, special="norm_normalized", norm=spec)
        add(f"{prefix}.hook_out", layer, module, "post", 2)

    add(names.EMBED, None, get_module(hf_model, family.embed), "post", 0)
    if family.pos_embed:
        add(names.POS_EMBED, None, get_module(hf_model, family.pos_embed), "post", 0)
    layers = get_module(hf_model, family.layers)
    n_q, n_kv, d_head = cfg.n_heads, cfg.n_kv_heads, cfg.d_head
    for layer_index, layer in enumerate(layers):
        def sub(path: str, _layer: nn.Module = layer) -> nn.Module:
            return get_module(_layer, path)

        def name(suffix: str, _i: int = layer_index) -> str:
            return names.block(_i, suffix)

        add(name("hook_resid_pre"), layer_index, layer, "pre", 0)
        for order, (part, n) in enumerate((("q", n_q), ("k", n_kv), ("v", n_kv))):
            add(name(f"hook_{part}_input"), layer_index, sub(family.ln1), "pre", order, (_per_head(n), _replace),
                special=f"{part}_input")
        add_norm(name("ln1"), layer_index, sub(family.ln1))
        if family.qkv == "separate":
            add(name("attn.hook_q"), layer_index, sub(family.q_proj), "post", 0, _heads(n_q, d_head))
            add(name("attn.hook_k"), layer_index, sub(family.k_proj), "post", 0, _heads(n_kv, d_head))
            add(name("attn.hook_v"), layer_index, sub(family.v_proj), "post", 0, _heads(n_kv, d_head))
        else:
            slicer = _gpt2_slice if family.qkv == "gpt2" else _neox_slice
            fused = sub(family.q_proj)
            add(name("attn.hook_q"), layer_index, fused, "post", 0, slicer(0, n_q, d_head))
            add(name("attn.hook_k"), layer_index, fused, "post", 1, slicer(1, n_q, d_head))
            add(name("attn.hook_v"), layer_index, fused, "post", 2, slicer(2, n_q, d_head))
        attn = sub(family.attn)
        inside = ("rot_q", "rot_k", "attn_scores", "pattern") if family.rotary else ("attn_scores", "pattern")
        for order, part in enumerate(inside):
            add(name(f"attn.hook_{part}"), layer_index, attn, "attention", order, special=part)
        o_proj = sub(family.o_proj)
        post_norm = None
        if family.attn_out != family.attn:
            norm = sub(family.attn_out)
            spec = norm_spec(norm, family.norm_offset)
            post_norm = (norm, spec) if spec is not None else None
        add(name("attn.hook_z"), layer_index, o_proj, "pre", 0, _heads(n_q, d_head))
        add(name("attn.hook_result"), layer_index, o_proj, "pre", 1,
            (_result_reader(o_proj, cfg, family.o_proj_transposed, post_norm), _replace),
            special="result" if post_norm is None else "result_post_norm")
        add(name("hook_attn_out"), layer_index, sub(family.attn_out), "post", 0)
        if family.has_mlp:
            if not cfg.parallel_attn_mlp:
                add(name("hook_resid_mid"), layer_index, sub(family.ln2), "pre", 0, special="resid_mid")
            add(name("hook_mlp_in"), layer_index, sub(family.ln2), "pre", 1)
            add_norm(name("ln2"), layer_index, sub(family.ln2))
            add(name("mlp.hook_pre"), layer_index, sub(family.mlp_in), "post", 0)
            if family.mlp_linear:
                add(name("mlp.hook_pre_linear"), layer_index, sub(family.mlp_linear), "post", 0)
            add(name("mlp.hook_post"), layer_index, sub(family.mlp_down), "pre", 0)
            add(name("hook_mlp_out"), layer_index, sub(family.mlp_out), "post", 0)
        add(name("hook_resid_post"), layer_index, layer, "post", 1)
    add_norm("ln_final", None, get_module(hf_model, family.final_norm))
    unembed = get_module(hf_model, family.unembed)
    add(names.UNEMBED_IN, None, unembed, "pre", 0)
    add(names.UNEMBED_OUT, None, unembed, "post", 0)
    return sites
