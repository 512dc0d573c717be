"""Attention patterns as a hook point, without reimplementing attention.

While a pattern hook is active, the model's attention implementation is switched to
`mechscope_eager`: it calls the model's own `eager_attention_forward` (from the model's
HF modeling file), hands the probabilities to the hook, and, only if the hook returns a
replacement, recomputes `pattern @ values`. Other runs keep the model's own implementation
(usually SDPA), so logits stay bit-identical to plain HF when no pattern is asked for.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

IMPLEMENTATION = "mechscope_eager"

# id(attention module) -> callable(pattern) -> pattern or replacement; filled only during a run.
_PATTERN_HOOKS: dict[int, list[Callable[[torch.Tensor], torch.Tensor]]] = {}


def _eager_for(module: nn.Module) -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
    modeling = sys.modules[type(module).__module__]
    return modeling.eager_attention_forward


def _pattern_hooked_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    out, weights = _eager_for(module)(module, query, key, value, attention_mask, **kwargs)
    new = weights
    for hook in _PATTERN_HOOKS.get(id(module), ()):
        new = hook(new)
    if new is weights:
        return out, weights
    groups = new.shape[1] // value.shape[1]
    values = value.repeat_interleave(groups, dim=1) if groups > 1 else value
    return torch.matmul(new.to(values.dtype), values).transpose(1, 2).contiguous(), new


ALL_ATTENTION_FUNCTIONS.register(IMPLEMENTATION, _pattern_hooked_attention)
ALL_MASK_ATTENTION_FUNCTIONS.register(IMPLEMENTATION, eager_mask)


def _configs(model: nn.Module) -> list[Any]:
    seen: dict[int, Any] = {}
    for module in model.modules():
        config = getattr(module, "config", None)
        if config is not None and hasattr(config, "_attn_implementation"):
            seen[id(config)] = config
            for sub in ("text_config",):
                inner = getattr(config, sub, None)
                if inner is not None and hasattr(inner, "_attn_implementation"):
                    seen[id(inner)] = inner
    return list(seen.values())


def attn_implementation(model: nn.Module) -> str:
    """The attention implementation the model runs with (e.g. 'sdpa', 'eager')."""
    config = model.config
    text = getattr(config, "text_config", None) or config
    return str(text._attn_implementation)


@contextmanager
def using_implementation(model: nn.Module, implementation: str) -> Iterator[None]:
    """Run `model` with another registered attention implementation (e.g. 'eager') for a while."""
    configs = _configs(model)
    previous = [c._attn_implementation for c in configs]
    for config in configs:
        config._attn_implementation = implementation
    try:
        yield
    finally:
        for config, impl in zip(configs, previous, strict=True):
            config._attn_implementation = impl


@contextmanager
def pattern_hooks(model: nn.Module, hooks: dict[nn.Module, Callable[[torch.Tensor], torch.Tensor]]) -> Iterator[None]:
    """Run `model` with `hooks[attention_module](pattern)` called on each hooked layer's probabilities."""
    if not hooks:
        yield
        return
    for module, fn in hooks.items():
        _PATTERN_HOOKS.setdefault(id(module), []).append(fn)
    try:
        with using_implementation(model, IMPLEMENTATION):
            yield
    finally:
        for module, fn in hooks.items():
            stack = _PATTERN_HOOKS.get(id(module), [])
            if fn in stack:
                stack.remove(fn)
            if not stack:
                _PATTERN_HOOKS.pop(id(module), None)
