"""Running part of a model exactly: from a layer (replaying a cached residual) or from a position (a KV cache).

Nothing before an edit differs from the run without it, so later runs may skip it:

- **From layer `s`.** `replay_prefix` swaps decoder layers `0..s-1`, for the length of one
  pass, for a module that returns the cached `resid_pre[s]`; the Hugging Face forward then
  runs layers `s..n-1` as usual (masks, rotary and per-layer attention types are still
  computed by the model itself). It needs decoder layers that return a bare tensor
  (`layers_return_tensors`). The swap mutates `model.layers` during the pass: do not run the
  same model from another thread meanwhile.
- **From position `p`.** Attention is causal, so positions before `p` are unchanged at every
  layer; `prefix_cache` turns their cached keys and values into Hugging Face's KV cache,
  passed under the argument name `cache_kwarg` gives.

Example:
    >>> with replay_prefix(model, 3, resid_pre_3):             # doctest: +SKIP
    ...     logits = model.hf_model(input_ids=ids).logits
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from mechscope.core.tokens import TokenBatch


class _Replay(nn.Module):
    """Stands in for skipped decoder layers: returns a fixed residual whatever it is given."""

    def __init__(self, resid: Tensor) -> None:
        super().__init__()
        self.resid = resid

    def forward(self, hidden_states: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        return self.resid


@contextmanager
def replay_prefix(model: Any, start: int, resid: Tensor | None) -> Iterator[None]:
    """Run `model` with decoder layers `0..start-1` replaced by the residual `resid` (= resid_pre[start]).

    `start <= 0` changes nothing. Layers are restored afterwards, whatever happens.

    Example:
        >>> import torch
        >>> from mechscope.core.examples import tiny_model
        >>> model = tiny_model(vocab_size=50)       # 2-layer random Llama, width 16
        >>> ids = torch.tensor([[1, 2, 3]])
        >>> full, cache = model.run_with_cache(ids, names=["blocks.1.hook_resid_pre"])
        >>> with replay_prefix(model, 1, cache["blocks.1.hook_resid_pre"]):     # layer 0 is not run
        ...     replayed = model(ids)
        >>> torch.allclose(replayed, full, atol=1e-5)
        True
    """
    if start <= 0:
        yield
        return
    layers = model.layers
    originals = [layers[i] for i in range(start)]
    replay = _Replay(resid)  # type: ignore[arg-type]
    try:
        for i in range(start):
            layers[i] = replay
        yield
    finally:
        for i, module in enumerate(originals):
            layers[i] = module


def layers_return_tensors(model: Any, tokens: TokenBatch | Tensor) -> bool:
    """True when decoder layers return a bare tensor (what `replay_prefix`'s stand-in imitates).

    Runs the model on one token of `tokens` (a `TokenBatch` or ids `[batch, pos]`).

    Example:
        >>> import torch
        >>> from mechscope.core.examples import tiny_model
        >>> model = tiny_model(vocab_size=50)       # 2-layer random Llama, width 16
        >>> isinstance(layers_return_tensors(model, torch.tensor([[1, 2]])), bool)
        True
    """
    ids = tokens.ids if isinstance(tokens, TokenBatch) else tokens
    seen: list[bool] = []
    handle = model.layers[0].register_forward_hook(lambda m, a, out: seen.append(isinstance(out, Tensor)))
    try:
        with torch.no_grad():
            model.hf_model(input_ids=ids[:1, :1].to(model.device), use_cache=False, logits_to_keep=1)
    finally:
        handle.remove()
    return bool(seen) and all(seen)


def cache_kwarg(hf_model: nn.Module) -> str:
    """The name of the KV-cache argument of `hf_model.forward`.

    `cache` from transformers 5.x on, `past_key_values` before.

    Example:
        >>> class Old(nn.Module):
        ...     def forward(self, input_ids=None, past_key_values=None): ...
        >>> cache_kwarg(Old())
        'past_key_values'
    """
    return "cache" if "cache" in inspect.signature(hf_model.forward).parameters else "past_key_values"


def cache_tensors(output: Any) -> list[tuple[Tensor, Tensor]]:
    """The keys and values per layer of a Hugging Face output's KV cache (empty when it has none).

    Example:
        >>> cache_tensors({"logits": None})
        []
    """
    cache = output.get("cache", None) or output.get("past_key_values", None)
    layers = getattr(cache, "layers", None) or []
    return [(layer.keys, layer.values) for layer in layers if getattr(layer, "keys", None) is not None]


def prefix_cache(kv: Sequence[tuple[Tensor, Tensor]], offset: int, start: int, copies: int) -> Any:
    """A fresh KV cache holding positions `0..offset-1`, tiled `copies` times for the layers from `start` on.

    `kv` holds one `(keys, values)` pair of `[batch, kv_heads, pos, d_head]` per layer.

    Example:
        >>> k = torch.zeros(1, 1, 4, 2)
        >>> prefix_cache([(k, k)], offset=3, start=0, copies=2).get_seq_length()
        3
    """
    from transformers import DynamicCache

    data = []
    for layer, (k, v) in enumerate(kv):
        k, v = k[:, :, :offset], v[:, :, :offset]
        if layer >= start and copies > 1:
            k, v = k.repeat(copies, 1, 1, 1), v.repeat(copies, 1, 1, 1)
        data.append((k, v))
    return DynamicCache(ddp_cache_data=data)
