"""Activations of hook sites streamed from a model: one forward pass per batch, stopped at the last site.

`site_activations` / `sites_activations` run the model as far as the sites need; `keep_mask`
drops BOS and padding rows; `iter_site_batches` / `iter_sites_batches` stream shuffled
training batches straight from a corpus, with no store on disk (`store.py` writes one).

Example:
    >>> [t.shape for t in rebatch([torch.zeros(3, 2), torch.zeros(5, 2)], 4, 0, None)]
    [torch.Size([4, 2]), torch.Size([4, 2])]
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor

from mechscope.core import names as hook_names
from mechscope.core.corpus import Source, iter_token_contexts

logger = logging.getLogger(__name__)


def as_hook_list(hook_name: str | Sequence[str]) -> list[str]:
    """One hook name or several -> a non-empty list without repeats.

    Example:
        >>> as_hook_list("blocks.0.hook_mlp_out")
        ['blocks.0.hook_mlp_out']
    """
    names = [hook_name] if isinstance(hook_name, str) else list(hook_name)
    if not names or len(set(names)) != len(names):
        raise ValueError(f"give one or more distinct hook names, got {names!r}")
    return names


def stop_layer_for(model: Any, hook_name: str) -> int | None:
    """Blocks needed to compute `hook_name`: `layer + 1` for block sites, 0 for embeddings, None (all) otherwise.

    Example:
        >>> stop_layer_for(model, "blocks.15.hook_resid_post")   # doctest: +SKIP
        16
    """
    layer = hook_names.parse_layer(hook_name)
    if layer is not None:
        return None if layer + 1 >= model.cfg.n_layers else layer + 1
    if hook_name in (hook_names.EMBED, hook_names.POS_EMBED):
        return 0
    return None


def flatten_site(act: Tensor) -> Tensor:
    """`[batch, pos, ...]` -> `[batch, pos, d]` (per-head sites such as `hook_z` are concatenated over heads).

    Example:
        >>> flatten_site(torch.zeros(2, 5, 4, 16)).shape                 # hook_z: 4 heads of 16
        torch.Size([2, 5, 64])
    """
    return act if act.ndim == 3 else act.reshape(*act.shape[:2], -1)


def site_activations(model: Any, ids: Tensor, hook_name: str, attention_mask: Tensor | None = None) -> Tensor:
    """Activations `[batch, pos, d]` at `hook_name`, running the model only as far as needed.

    Example:
        >>> site_activations(model, ids, "blocks.2.hook_resid_post").shape   # doctest: +SKIP
        torch.Size([8, 128, 576])
    """
    return sites_activations(model, ids, [hook_name], attention_mask)[0]


def sites_activations(model: Any, ids: Tensor, hook_names: Sequence[str],
                      attention_mask: Tensor | None = None) -> list[Tensor]:
    """Activations `[batch, pos, d_i]` at each of `hook_names` from one forward pass (stopped after the last needed block).

    Example:
        >>> [a.shape[-1] for a in sites_activations(model, ids, ["blocks.2.ln2.hook_out",  # doctest: +SKIP
        ...                                                     "blocks.2.mlp.hook_post"])]
        [576, 1536]
    """
    stops = [stop_layer_for(model, name) for name in hook_names]
    stop = None if any(s is None for s in stops) else max(stops)  # type: ignore[type-var]
    _, cache = model.run_with_cache(ids, names=list(hook_names), stop_at_layer=stop, attention_mask=attention_mask)
    out = []
    for name in hook_names:
        act = cache[name]
        if act.shape[0] != ids.shape[0]:  # a broadcast site such as hook_pos_embed
            act = act.expand(ids.shape[0], *act.shape[1:])
        out.append(flatten_site(act))
    return out


def keep_mask(ids: Tensor, tokenizer: Any, attention_mask: Tensor | None = None, keep_bos: bool = False) -> Tensor:
    """Boolean `[batch, pos]`: positions to keep (not padding; not BOS unless `keep_bos`).

    A position is BOS when it is position 0 of a packed context holding the BOS id (or any
    position holding the BOS id when the tokenizer's BOS differs from its EOS separator).

    Example:
        >>> keep_mask(torch.tensor([[1, 5, 6]]), tok).tolist()   # doctest: +SKIP
        [[False, True, True]]
    """
    mask = torch.ones_like(ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool().clone()
    if keep_bos or tokenizer is None:
        return mask
    bos = getattr(tokenizer, "bos_token_id", None)
    eos = getattr(tokenizer, "eos_token_id", None)
    if bos is None:
        bos = eos
    if bos is None:
        return mask
    if bos != eos:
        mask &= ids != bos
    else:
        mask[:, 0] &= ids[:, 0] != bos
    return mask


def iter_site_batches(
    model: Any, hook_name: str, *, source: Source = "default", context_length: int = 128,
    batch_size: int = 4096, contexts_per_forward: int = 32, keep_bos: bool = False,
    shuffle_buffer: int = 0, seed: int = 0, max_tokens: int | None = None,
    dtype: torch.dtype = torch.float32, **document_kwargs: Any,
) -> Iterator[Tensor]:
    """Batches `[batch_size, d]` of activations straight from the model, with no store on disk.

    Rows come in corpus order unless `shuffle_buffer > 0` rows are mixed (seeded). Stops
    after `max_tokens` rows or at the end of the corpus (the last partial batch is dropped).

    Example:
        >>> batches = iter_site_batches(model, "blocks.3.hook_resid_post", batch_size=1024)  # doctest: +SKIP
        >>> Trainer(sae, TrainerConfig(total_steps=100)).fit(batches)                        # doctest: +SKIP
    """
    for (batch,) in iter_sites_batches(
        model, [hook_name], source=source, context_length=context_length, batch_size=batch_size,
        contexts_per_forward=contexts_per_forward, keep_bos=keep_bos, shuffle_buffer=shuffle_buffer,
        seed=seed, max_tokens=max_tokens, dtype=dtype, **document_kwargs,
    ):
        yield batch


def iter_sites_batches(
    model: Any, hook_names: Sequence[str], *, source: Source = "default", context_length: int = 128,
    batch_size: int = 4096, contexts_per_forward: int = 32, keep_bos: bool = False,
    shuffle_buffer: int = 0, seed: int = 0, max_tokens: int | None = None,
    dtype: torch.dtype = torch.float32, **document_kwargs: Any,
) -> Iterator[tuple[Tensor, ...]]:
    """Aligned batches `([batch_size, d_0], [batch_size, d_1], ...)`, one per site, streamed from the model.

    Row `b` of every tensor comes from the same token, so a pair of sites feeds a transcoder
    (`Trainer.fit` takes `(x, target)` tuples) and all layers' pairs a cross-layer transcoder.
    Options as in :func:`iter_site_batches`.

    Example:
        >>> pairs = iter_sites_batches(model, ["blocks.3.ln2.hook_out",   # doctest: +SKIP
        ...                                    "blocks.3.hook_mlp_out"], batch_size=1024)
        >>> Trainer(transcoder, TrainerConfig(total_steps=100)).fit(pairs)       # doctest: +SKIP
    """
    names = as_hook_list(hook_names)
    widths: list[int] = []

    def rows() -> Iterator[Tensor]:
        seen = 0
        for ids in iter_token_contexts(model.tokenizer, source, context_length,
                                       batch_size=contexts_per_forward, **document_kwargs):
            with torch.no_grad():
                acts = sites_activations(model, ids, names)
            keep = keep_mask(ids, model.tokenizer, keep_bos=keep_bos).to(acts[0].device)
            if not widths:
                widths.extend(a.shape[-1] for a in acts)
            chunk = torch.cat([a[keep].to("cpu", dtype) for a in acts], dim=1)
            if max_tokens is not None:
                chunk = chunk[: max_tokens - seen]
            seen += chunk.shape[0]
            yield chunk
            if max_tokens is not None and seen >= max_tokens:
                return

    for batch in rebatch(rows(), batch_size, shuffle_buffer, torch.Generator().manual_seed(seed)):
        yield tuple(batch.split(widths, dim=1))


def rebatch(chunks: Iterable[Tensor], batch_size: int, buffer_rows: int,
             gen: torch.Generator, drop_last: bool = True) -> Iterator[Tensor]:
    """Cut a stream of `[n_i, d]` chunks into `[batch_size, d]` batches, mixing rows in a buffer.

    With `buffer_rows > 0`, chunks are gathered until the buffer holds `buffer_rows` rows,
    the buffer is permuted, and batches are served from it until half remains; the rest
    is carried into the next fill, so rows mix across chunks (shards).

    Example:
        >>> chunks = [torch.arange(6.0).reshape(3, 2), torch.arange(6.0, 14.0).reshape(4, 2)]
        >>> batches = list(rebatch(chunks, batch_size=2, buffer_rows=4, gen=torch.Generator().manual_seed(0)))
        >>> [tuple(b.shape) for b in batches]                              # 7 rows: 3 batches, one row dropped
        [(2, 2), (2, 2), (2, 2)]
        >>> [b.shape[0] for b in rebatch(chunks, 2, 0, torch.Generator(), drop_last=False)]
        [2, 2, 2, 1]
    """
    pending: list[Tensor] = []
    n_pending = 0
    fill = max(buffer_rows, batch_size)
    for chunk in chunks:
        pending.append(chunk)
        n_pending += chunk.shape[0]
        if n_pending < fill:
            continue
        buf = torch.cat(pending) if len(pending) > 1 else pending[0]
        if buffer_rows > 0:
            buf = buf[torch.randperm(buf.shape[0], generator=gen)]
        keep = (buf.shape[0] // 2) if buffer_rows > 0 else 0
        n_out = ((buf.shape[0] - keep) // batch_size) * batch_size
        for i in range(0, n_out, batch_size):
            yield buf[i: i + batch_size]
        rest = buf[n_out:]
        pending, n_pending = ([rest] if rest.shape[0] else []), rest.shape[0]
    if n_pending:
        buf = torch.cat(pending)
        if buffer_rows > 0:
            buf = buf[torch.randperm(buf.shape[0], generator=gen)]
        end = (buf.shape[0] // batch_size) * batch_size
        for i in range(0, end, batch_size):
            yield buf[i: i + batch_size]
        if not drop_last and end < buf.shape[0]:
            yield buf[end:]


# ----------------------------------------------------------------------------- writing
