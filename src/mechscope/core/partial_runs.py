"""Running part of a model exactly: from a layer (replaying a cached residual) or from a position (a KV cache).

Nothing before an edit differs from the run without it, so later runs may skip it:

- **From layer `s`.** `replay_prefix` swaps decoder layers `0..s-1`, for the length of one
  pass, for a module that returns the cached `resid_pre[s]`; the Hugging Face forward then
  runs layers `s..n-1` as usual (masks, rotary and per-layer attention types are still
  computed by the model itself). It needs decoder layers that return a bare tensor
  (`layers_return_tensors`). The swap mutates `model.layers` during the pass: do not run the
  same model from another thread meanwhile.
- **Rows joining at their own layer.** `replay_prefix(..., later=...)` also appends, before
  decoder layer `l`, rows that start there (their `resid_pre[l]`), so a batch of edits at
  different layers runs each row only from its own layer up: the batch grows on the way.
  Per-row arguments the model hands its layers (masks, positions) are tiled to the grown
  batch, which assumes every row block of `n_pairs` rows has the same ones.
- **From position `p`.** Attention is causal, so positions before `p` are unchanged at every
  layer; `prefix_cache` turns their cached keys and values into Hugging Face's KV cache,
  passed under the argument name `cache_kwarg` gives.

Example:
    >>> with replay_prefix(model, 3, resid_pre_3):             # doctest: +SKIP
    ...     logits = model.hf_model(input_ids=ids).logits
"""

from __future__ import annotations

import inspect
import weakref
from collections.abc import Iterator, Mapping, Sequence
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


def _tile(value: Any, first: int, after: int, n_pairs: int) -> Any:
    """`value` with its per-row leading dimension (`first` rows) tiled to `after` rows, from its first row block."""
    if isinstance(value, (tuple, list)):
        return type(value)(_tile(v, first, after, n_pairs) for v in value)
    if isinstance(value, Tensor) and value.dim() >= 2 and value.shape[0] == first > 1 and first != after:
        return value[:n_pairs].repeat(after // n_pairs, *([1] * (value.dim() - 1)))
    return value


class _Join(nn.Module):
    """Runs a decoder layer after appending the rows that start at it (if any); per-row arguments tiled to match.

    The model hands every layer arguments sized for the batch it started with (`sizes["first"]`,
    seen by the first wrapped layer); rows joined since then are tiled into them. `mask`, when
    given, is `(stand_in, own)`: the attention mask handed to the model is swapped for this
    layer's own (one row block, tiled).
    """

    def __init__(self, layer: nn.Module, rows: Tensor | None, n_pairs: int, sizes: dict[str, int],
                 mask: tuple[Tensor, Tensor] | None = None) -> None:
        super().__init__()
        self.layer, self.rows, self.n_pairs, self.sizes, self.mask = layer, rows, n_pairs, sizes, mask

    def _argument(self, value: Any, first: int, after: int) -> Any:
        if self.mask is not None and value is self.mask[0]:
            own = self.mask[1]
            return own.repeat(after // own.shape[0], *([1] * (own.dim() - 1)))
        return _tile(value, first, after, self.n_pairs)

    def forward(self, hidden_states: Tensor, *args: Any, **kwargs: Any) -> Any:
        first = self.sizes.setdefault("first", hidden_states.shape[0])
        hidden = hidden_states if self.rows is None else torch.cat([hidden_states, self.rows.to(hidden_states.dtype)])
        after = hidden.shape[0]
        args = tuple(self._argument(a, first, after) for a in args)
        kwargs = {k: self._argument(v, first, after) for k, v in kwargs.items()}
        return self.layer(hidden, *args, **kwargs)


@contextmanager
def replay_prefix(model: Any, start: int, resid: Tensor | None, later: Mapping[int, Tensor] | None = None,
                  n_pairs: int = 1, layer_masks: tuple[Tensor, Sequence[Tensor]] | None = None) -> Iterator[None]:
    """Run `model` with decoder layers `0..start-1` replaced by the residual `resid` (= resid_pre[start]).

    `later` maps a layer `l > start` to rows joining the batch there (their `resid_pre[l]`,
    positions as the run's); the batch is then made of row blocks of `n_pairs` rows that share
    masks and positions. `layer_masks = (stand_in, masks)`: where the model hands a layer the
    4-D attention mask `stand_in` (pass it as the run's `attention_mask`; a 4-D mask is used
    as given), layer `l` gets `masks[l]` (one row block) instead, so each layer may have its
    own (sliding windows). `start <= 0` replays nothing. Layers are restored afterwards,
    whatever happens.

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
        >>> with replay_prefix(model, 0, None, later={1: cache["blocks.1.hook_resid_pre"]}):
        ...     grown = model(ids)                  # row 2 joins at layer 1
        >>> grown.shape[0], torch.allclose(grown[1], full[0], atol=1e-5)
        (2, True)
    """
    layers = model.layers
    originals = list(layers)
    try:
        if start > 0:
            replay = _Replay(resid)  # type: ignore[arg-type]
            for i in range(start):
                layers[i] = replay
        if later and min(later) <= max(start, 0):
            raise ValueError(f"rows may join after layer {start}, not at {min(later)}")
        if later or layer_masks:
            sizes: dict[str, int] = {}
            for layer in range(max(start, 0), len(originals)):
                mask = None if layer_masks is None else (layer_masks[0], layer_masks[1][layer])
                layers[layer] = _Join(originals[layer], (later or {}).get(layer), n_pairs, sizes, mask)
        yield
    finally:
        for i, module in enumerate(originals):
            layers[i] = module


_RETURNS_TENSORS: weakref.WeakKeyDictionary[nn.Module, bool] = weakref.WeakKeyDictionary()  # per model, asked once


def layers_return_tensors(model: Any, tokens: TokenBatch | Tensor) -> bool:
    """True when decoder layers return a bare tensor (what `replay_prefix`'s stand-in imitates).

    Runs the model on one token of `tokens` (a `TokenBatch` or ids `[batch, pos]`), once per model.

    Example:
        >>> import torch
        >>> from mechscope.core.examples import tiny_model
        >>> model = tiny_model(vocab_size=50)       # 2-layer random Llama, width 16
        >>> isinstance(layers_return_tensors(model, torch.tensor([[1, 2]])), bool)
        True
    """
    if model.hf_model in _RETURNS_TENSORS:
        return _RETURNS_TENSORS[model.hf_model]
    ids = tokens.ids if isinstance(tokens, TokenBatch) else tokens
    seen: list[bool] = []
    handle = model.layers[0].register_forward_hook(lambda m, a, out: seen.append(isinstance(out, Tensor)))
    try:
        with torch.no_grad():
            model.hf_model(input_ids=ids[:1, :1].to(model.device), use_cache=False, logits_to_keep=1)
    finally:
        handle.remove()
    _RETURNS_TENSORS[model.hf_model] = answer = bool(seen) and all(seen)
    return answer


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


def prefix_cache(kv: Sequence[tuple[Tensor, Tensor]], offset: int, copies: Sequence[int]) -> Any:
    """A fresh KV cache holding positions `0..offset-1`, tiled `copies[l]` times at layer `l`.

    `kv` holds one `(keys, values)` pair of `[batch, kv_heads, pos, d_head]` per layer.

    Example:
        >>> k = torch.zeros(1, 1, 4, 2)
        >>> cache = prefix_cache([(k, k), (k, k)], offset=3, copies=[1, 2])
        >>> cache.get_seq_length(), cache.layers[1].keys.shape[0]
        (3, 2)
    """
    from transformers import DynamicCache

    data = []
    for (k, v), n in zip(kv, copies, strict=True):
        k, v = k[:, :, :offset], v[:, :, :offset]
        if n > 1:
            k, v = k.repeat(n, 1, 1, 1), v.repeat(n, 1, 1, 1)
        data.append((k, v))
    return DynamicCache(ddp_cache_data=data)
