"""A grouped-query model with its key/value heads ungrouped: one key and one value head per query head.

Query head `h` reads key/value head `h // groups`; repeating each key/value projection's
rows `groups` times gives a model that computes the same function with `n_heads` key/value
heads, so each query head's key and value inputs can be edited on their own. The copy
shares every other weight with the original (no second copy of the model in memory).

Example:
    >>> flat = ungrouped(model)          # doctest: +SKIP
    >>> flat.cfg.n_kv_heads == model.cfg.n_heads  # doctest: +SKIP
    True
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from mechscope.core.errors import MechscopeError
from mechscope.core.families import get_module
from mechscope.core.hooked import HookedModel


def _repeated(linear: nn.Linear, groups: int, d_head: int) -> nn.Linear:
    """A Linear whose output head `h` is `linear`'s head `h // groups`."""
    out = nn.Linear(linear.in_features, linear.out_features * groups, bias=linear.bias is not None,
                    device=linear.weight.device, dtype=linear.weight.dtype)
    with torch.no_grad():
        w = linear.weight.view(-1, d_head, linear.in_features)
        out.weight.copy_(w.repeat_interleave(groups, dim=0).reshape(-1, linear.in_features))
        if linear.bias is not None:
            out.bias.copy_(linear.bias.view(-1, d_head).repeat_interleave(groups, dim=0).reshape(-1))
    return out.requires_grad_(False)


def ungrouped(model: HookedModel) -> HookedModel:
    """`model` itself when it has one key/value head per query head; else an ungrouped copy.

    Example:
        >>> from mechscope import HookedModel
        >>> from mechscope.toys.attn_only import AttnOnlyConfig, AttnOnlyForCausalLM
        >>> model = HookedModel(AttnOnlyForCausalLM(AttnOnlyConfig()), name="toy")
        >>> ungrouped(model) is model                                  # already one key/value head per query head
        True
    """
    cfg = model.cfg
    if cfg.n_kv_heads == cfg.n_heads:
        return model
    family = model.family
    if family.qkv != "separate":
        raise MechscopeError(f"Cannot ungroup grouped-query attention in the {family.name!r} layout.")
    shared = {id(p): p for p in model.hf_model.parameters()}
    shared.update({id(b): b for b in model.hf_model.buffers()})
    hf = copy.deepcopy(model.hf_model, memo=shared)
    groups = cfg.n_kv_groups
    for layer in get_module(hf, family.layers):
        attn = get_module(layer, family.attn)
        for path in (family.k_proj, family.v_proj):
            parent_path, _, leaf = path.rpartition(".")
            parent = get_module(layer, parent_path) if parent_path else layer
            setattr(parent, leaf, _repeated(getattr(parent, leaf), groups, cfg.d_head))
        attn.num_key_value_groups = 1
    text = getattr(hf.config, "text_config", None) or hf.config
    text.num_key_value_heads = cfg.n_heads
    flat = HookedModel(hf, model.tokenizer, cfg.name, family)
    flat.source = model.source
    return flat
