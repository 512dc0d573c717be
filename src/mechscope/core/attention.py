"""Attention scores, patterns and rotated queries/keys as hook points, while the model keeps its fast attention.

Every HF attention module calls its attention function through transformers'
`ALL_ATTENTION_FUNCTIONS` with the rotated queries and keys `[batch, heads, pos, d_head]`,
the values, the mask and its scaling (and Gemma 2's soft-cap). mechscope puts a thin
wrapper in front of the `sdpa` and `eager` entries of that table once, at import. With
no attention hook active in the current context (a `ContextVar`, so other threads and
other runs are unaffected) the wrapper calls the original function with the same
arguments: logits stay bit-identical and the model's configuration is never switched.

For a layer whose `hook_rot_q` / `hook_rot_k` / `hook_attn_scores` / `hook_pattern` is
asked for, and only for that layer:

- `hook_rot_q`, `hook_rot_k` see the rotated queries/keys; an edit is passed on to the
  model's own attention function;
- scores are computed as the eager implementations compute them,
  `softcap(q k^T * scaling)`, masked positions set to `-inf` (as TransformerLens's
  `hook_attn_scores`), then `pattern = softmax(scores)` in float32 (a row with every key
  masked gives zeros);
- the layer's output still comes from the model's own attention function (SDPA), unless
  the scores or pattern were edited, or autograd is recording and the pattern needs a
  gradient: then it is `pattern @ v`, so the edit (or the gradient) reaches the output.

Example:
    >>> _, cache = model.run_with_cache("Hello world", names=["blocks.0.attn.hook_pattern"])  # doctest: +SKIP
    >>> cache["blocks.0.attn.hook_pattern"].shape                                           # doctest: +SKIP
    torch.Size([1, 9, 3, 3])
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from mechscope.core.errors import MechscopeError

Edit = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class AttentionHooks:
    """Callables run inside one attention module, one per attention hook point.

    Each takes the activation (in hook shape) and returns it, or a replacement. `None` where
    that hook point is not asked for.

    Example:
        >>> import torch
        >>> hooks = AttentionHooks(pattern=lambda p: torch.zeros_like(p))      # knock out every head's attention
        >>> hooks.pattern is not None, hooks.scores is None
        (True, True)
    """

    rot_q: Edit | None = None
    rot_k: Edit | None = None
    scores: Edit | None = None
    pattern: Edit | None = None


# id(attention module) -> hooks of the runs open in this context.
_ACTIVE: ContextVar[dict[int, tuple[AttentionHooks, ...]] | None] = ContextVar("mechscope_attention_hooks",
                                                                               default=None)
_WRAPPED = "_mechscope_wrapped"


def _eager_for(module: nn.Module) -> Callable[..., tuple[Tensor, Tensor | None]]:
    """The eager attention function of the module's own modeling file."""
    return sys.modules[type(module).__module__].eager_attention_forward


def _wrap(name: str, original: Callable[..., Any] | None) -> Callable[..., Any]:
    def attention(module: nn.Module, query: Tensor, key: Tensor, value: Tensor, attention_mask: Any,
                  **kwargs: Any) -> tuple[Tensor, Tensor | None]:
        base = original or _eager_for(module)
        active = _ACTIVE.get()
        hooks = active.get(id(module)) if active else None
        if not hooks:
            return base(module, query, key, value, attention_mask, **kwargs)
        return _hooked_attention(base, hooks, module, query, key, value, attention_mask, kwargs)

    setattr(attention, _WRAPPED, name)
    return attention


def _install() -> None:
    for name in ("sdpa", "eager"):
        current = ALL_ATTENTION_FUNCTIONS.get(name)
        if current is not None and getattr(current, _WRAPPED, None):
            continue
        # Set on the shared instance every modeling file reads; `eager` (not a table entry in
        # transformers) resolves to each model's own eager function at call time.
        ALL_ATTENTION_FUNCTIONS[name] = _wrap(name, current)


_install()

HOOKABLE = ("sdpa", "eager")


def _edit_heads(fn: Edit, x: Tensor) -> Tensor:
    """Apply `fn` to `x [batch, heads, pos, d]` seen as `[batch, pos, heads, d]`."""
    view = x.transpose(1, 2)
    new = fn(view)
    return x if new is view else new.transpose(1, 2)


def keep_mask(attention_mask: Any, q_len: int, k_len: int, device: torch.device) -> tuple[Tensor, Tensor | None]:
    """Which keys each query may attend to (`True` = attend), and any additive bias.

    Read from the mask the model hands its attention function: `None` (causal), boolean, or
    additive float.

    Example:
        >>> import torch
        >>> keep, bias = keep_mask(None, q_len=3, k_len=3, device=torch.device("cpu"))   # None means causal
        >>> keep.int(), bias
        (tensor([[1, 0, 0],
                [1, 1, 0],
                [1, 1, 1]], dtype=torch.int32), None)
    """
    if attention_mask is None:
        keep = torch.ones(q_len, k_len, dtype=torch.bool, device=device).tril(k_len - q_len)
        return keep, None
    if not isinstance(attention_mask, Tensor):
        raise MechscopeError(
            f"Attention hooks read masks given as tensors (sdpa or eager attention); this model passes a "
            f"{type(attention_mask).__name__}. Load it with attn_implementation='sdpa'."
        )
    mask = attention_mask[..., :k_len]
    if mask.dtype == torch.bool:
        return mask, None
    keep = mask > torch.finfo(mask.dtype).min / 2
    bias = mask.masked_fill(~keep, 0)
    return keep, (bias if bool(bias.ne(0).any()) else None)


def attention_scores(module: nn.Module, query: Tensor, key: Tensor, attention_mask: Any,
                     scaling: float | None = None, softcap: float | None = None) -> Tensor:
    """`softcap(q k^T * scaling) + bias`, masked keys at `-inf`: `[batch, n_heads, q_pos, k_pos]`.

    `query [batch, n_heads, q_pos, d_head]`, `key [batch, n_kv_heads, k_pos, d_head]` (repeated
    per query head, as `repeat_kv` does).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> q, k = torch.ones(1, 2, 3, 4), torch.ones(1, 1, 3, 4)       # 2 query heads share 1 key head
        >>> attention_scores(nn.Module(), q, k, None, scaling=0.5)[0, 0]
        tensor([[2., -inf, -inf],
                [2., 2., -inf],
                [2., 2., 2.]])
    """
    groups = query.shape[1] // key.shape[1]
    if groups > 1:
        key = key.repeat_interleave(groups, dim=1)
    if scaling is None:
        scaling = getattr(module, "scaling", None) or query.shape[-1] ** -0.5
    scores = torch.matmul(query, key.transpose(-1, -2)) * scaling
    if softcap:
        scores = torch.tanh(scores / softcap) * softcap
    keep, bias = keep_mask(attention_mask, query.shape[-2], key.shape[-2], query.device)
    if bias is not None:
        scores = scores + bias
    return scores.masked_fill(~keep, float("-inf"))


def pattern_from_scores(scores: Tensor, empty_rows: bool = True) -> Tensor:
    """Softmax over keys in float32, back in the scores' dtype.

    Rows with no key allowed give zeros; `empty_rows=False` says the mask has none (which saves
    a pass over the scores).

    Example:
        >>> import torch
        >>> pattern_from_scores(torch.tensor([[0.0, float("-inf")], [0.0, 0.0]]))
        tensor([[1.0000, 0.0000],
                [0.5000, 0.5000]])
    """
    pattern = torch.softmax(scores, dim=-1, dtype=torch.float32)
    if empty_rows:
        pattern = pattern.nan_to_num(0.0)
    return pattern.to(scores.dtype)


def _has_empty_rows(attention_mask: Any, q_len: int, k_len: int, device: torch.device) -> bool:
    if attention_mask is None:
        return False
    keep, _ = keep_mask(attention_mask, q_len, k_len, device)
    return not bool(keep.any(dim=-1).all())


def _hooked_attention(base: Callable[..., Any], hooks: tuple[AttentionHooks, ...], module: nn.Module, query: Tensor,
                      key: Tensor, value: Tensor, attention_mask: Any, kwargs: dict[str, Any]) -> tuple[Tensor, Any]:
    for h in hooks:
        if h.rot_q is not None:
            query = _edit_heads(h.rot_q, query)
        if h.rot_k is not None:
            key = _edit_heads(h.rot_k, key)
    if not any(h.scores is not None or h.pattern is not None for h in hooks):
        return base(module, query, key, value, attention_mask, **kwargs)
    scores = attention_scores(module, query, key, attention_mask, kwargs.get("scaling"), kwargs.get("softcap"))
    edited = scores
    for h in hooks:
        if h.scores is not None:
            edited = h.scores(edited)
    pattern = pattern_from_scores(edited, empty_rows=edited is not scores or _has_empty_rows(
        attention_mask, query.shape[-2], key.shape[-2], query.device))
    computed = pattern
    for h in hooks:
        if h.pattern is not None:
            pattern = h.pattern(pattern)
    needs_grad = torch.is_grad_enabled() and pattern.requires_grad
    if edited is scores and pattern is computed and not needs_grad:
        out, _ = base(module, query, key, value, attention_mask, **kwargs)
        return out, pattern
    groups = pattern.shape[1] // value.shape[1]
    values = value.repeat_interleave(groups, dim=1) if groups > 1 else value
    return torch.matmul(pattern.to(values.dtype), values).transpose(1, 2).contiguous(), pattern


@contextmanager
def attention_hooks(hooks: dict[nn.Module, AttentionHooks]) -> Iterator[None]:
    """Within the block (and this thread/context only), call `hooks[module]` inside each module's attention.

    Example:
        >>> import torch
        >>> from transformers import LlamaConfig, LlamaForCausalLM
        >>> cfg = LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        ...                   num_attention_heads=2, num_key_value_heads=1)
        >>> hf = LlamaForCausalLM(cfg).eval()
        >>> seen = []
        >>> hooks = {hf.model.layers[0].self_attn: AttentionHooks(pattern=lambda p: seen.append(p.shape) or p)}
        >>> with attention_hooks(hooks):
        ...     _ = hf(input_ids=torch.tensor([[1, 2, 3]]))
        >>> seen                                               # [batch, n_heads, q_pos, k_pos]
        [torch.Size([1, 2, 3, 3])]
    """
    if not hooks:
        yield
        return
    current = _ACTIVE.get() or {}
    merged = dict(current)
    for module, h in hooks.items():
        merged[id(module)] = (*current.get(id(module), ()), h)
    token = _ACTIVE.set(merged)
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def attn_implementation(model: nn.Module) -> str:
    """The attention implementation the model runs with (e.g. 'sdpa', 'eager').

    Example:
        >>> from transformers import LlamaConfig, LlamaForCausalLM
        >>> cfg = LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        ...                   num_attention_heads=2, num_key_value_heads=1, attn_implementation="eager")
        >>> attn_implementation(LlamaForCausalLM(cfg))
        'eager'
    """
    config = model.config
    text = getattr(config, "text_config", None) or config
    return str(text._attn_implementation)


def check_hookable(model: nn.Module) -> None:
    """A clear error when attention hook points cannot be read from this model's attention implementation.

    Example:
        >>> from transformers import LlamaConfig, LlamaForCausalLM
        >>> cfg = LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        ...                   num_attention_heads=2, num_key_value_heads=1, attn_implementation="sdpa")
        >>> check_hookable(LlamaForCausalLM(cfg))              # sdpa and eager are fine: no error
    """
    impl = attn_implementation(model)
    if impl not in HOOKABLE:
        raise MechscopeError(
            f"Attention hook points (patterns, scores, rotated q/k) need sdpa or eager attention; this model "
            f"runs {impl!r}. Load it with attn_implementation='sdpa'."
        )


def _configs(model: nn.Module) -> list[Any]:
    seen: dict[int, Any] = {}
    for module in model.modules():
        config = getattr(module, "config", None)
        if config is not None and hasattr(config, "_attn_implementation"):
            seen[id(config)] = config
            inner = getattr(config, "text_config", None)
            if inner is not None and hasattr(inner, "_attn_implementation"):
                seen[id(inner)] = inner
    return list(seen.values())


@contextmanager
def using_implementation(model: nn.Module, implementation: str) -> Iterator[None]:
    """Run `model` with another attention implementation (e.g. 'eager') for a while.

    For reference runs in checks and benchmarks only: it switches the model's configuration,
    which other threads using the same model would see. Hook points never need it.

    Example:
        >>> from transformers import LlamaConfig, LlamaForCausalLM
        >>> cfg = LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        ...                   num_attention_heads=2, num_key_value_heads=1, attn_implementation="sdpa")
        >>> hf = LlamaForCausalLM(cfg)
        >>> with using_implementation(hf, "eager"):
        ...     inside = attn_implementation(hf)
        >>> inside, attn_implementation(hf)
        ('eager', 'sdpa')
    """
    configs = _configs(model)
    previous = [c._attn_implementation for c in configs]
    for config in configs:
        config._attn_implementation = implementation
    try:
        yield
    finally:
        for config, impl in zip(configs, previous, strict=True):
            config._attn_implementation = impl
