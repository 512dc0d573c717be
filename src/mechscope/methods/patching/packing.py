"""Packed patching passes: cells whose suffixes start at different positions share one batch row.

A batch is rectangular, so cells that start at different positions (a layer x position
sweep) cannot share a pass without running the later ones from the earliest start. Here
one row holds several cells, each in its own *segment*: the positions from its suffix
start to the last position the metric reads, laid end to end. A 4-D attention mask lets
each segment attend to the base run's keys and values before its start (the KV cache) and
causally to itself, and each token gets its real position for rotary or learned position
embeddings. Rows still join the batch at their own layer (`replay_prefix(later=...)`), so a
whole layer x position sweep runs in one pass doing the floor's work.

All rows of a pass share one layout (the segments' starts): the model computes positions
and masks once per batch. Cells of a layer are dealt round-robin over its rows (sorted by
start) and each segment starts at the earliest start dealt to it, so a cell may run a few
positions before its own start; those equal the base run there.

Example:
    >>> layout = Layout(starts=[1, 3], end=4)          # segments cover positions 1..3 and 3..3
    >>> layout.positions.tolist(), layout.offsets
    ([1, 2, 3, 3], [0, 3])
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from mechscope.core import names as hook_names
from mechscope.core.partial_runs import cache_kwarg, prefix_cache, replay_prefix
from mechscope.core.tokens import TokenBatch
from mechscope.methods.metrics import PositionMetric

# Hook points whose activations are [batch, pos, ...]: a cell's slice moves with its segment.
PACKABLE = ("hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_attn_out", "hook_mlp_out", "attn.hook_z",
            "attn.hook_q", "attn.hook_k", "attn.hook_v", "mlp.hook_pre", "mlp.hook_post")
# Longest packed row: attention over a row costs (prefix + row length) per token.
PACK_MAX_TOKENS = 512


@dataclass(frozen=True)
class Layout:
    """Segments of one packed row: segment j covers positions `starts[j]..end-1`.

    Example:
        >>> Layout(starts=[0, 2], end=3).length
        4
    """

    starts: list[int]
    end: int

    @property
    def offsets(self) -> list[int]:
        """Where each segment begins in the row."""
        out, at = [], 0
        for start in self.starts:
            out.append(at)
            at += self.end - start
        return out

    @property
    def length(self) -> int:
        return sum(self.end - s for s in self.starts)

    @property
    def positions(self) -> Tensor:
        """The real position of every token of the row."""
        return torch.cat([torch.arange(s, self.end) for s in self.starts])

    def gather(self, x: Tensor) -> Tensor:
        """`x[:, positions]` ([n, pos, ...] -> [n, length, ...])."""
        return x[:, self.positions.to(x.device)]


def packable(model: Any, cells: Sequence[Any], metric: Any, starts: Sequence[int]) -> bool:
    """True when packing applies and can help: position-major sites, a `PositionMetric`, several starts.

    Example:
        >>> from mechscope.core.examples import tiny_model
        >>> from mechscope.methods.metrics import LogitDiff
        >>> from mechscope.methods.patching.engine import Cell
        >>> cells = [Cell("blocks.0.hook_resid_pre", 0, pos=p) for p in range(3)]
        >>> packable(tiny_model(vocab_size=50), cells, LogitDiff(answer=1, wrong=2), [0, 1, 2])
        True
    """
    attention = getattr(model.hf_model.config, "_attn_implementation", None)
    return (isinstance(metric, PositionMetric) and attention in ("sdpa", "eager") and len(set(starts)) > 1
            and all(hook_names.suffix_of(c.name) in PACKABLE for c in cells))


def deal_rows(cells: Sequence[Any], starts: Sequence[int], end: int, max_tokens: int | None = None
              ) -> tuple[int, dict[int, list[list[int]]]]:
    """Rows per layer and, for each layer, its cells (indices) dealt round-robin by start into that many rows.

    A layer gets as many rows as its cells need to stay within `max_tokens` (default `PACK_MAX_TOKENS`) a row.

    Example:
        >>> from mechscope.methods.patching.engine import Cell
        >>> cells = [Cell("blocks.0.hook_resid_pre", 0, pos=p) for p in range(4)]
        >>> deal_rows(cells, [0, 1, 2, 3], end=4, max_tokens=6)          # 10 tokens -> 2 rows of 2 cells
        (2, {0: [[0, 2], [1, 3]]})
    """
    by_layer: dict[int, list[int]] = {}
    for c in sorted(range(len(cells)), key=lambda c: starts[c]):
        by_layer.setdefault(cells[c].layer, []).append(c)
    longest = max(sum(end - starts[c] for c in group) for group in by_layer.values())
    n_rows = max(1, math.ceil(longest / (max_tokens or PACK_MAX_TOKENS)))
    return n_rows, {layer: [group[k::n_rows] for k in range(n_rows)] for layer, group in sorted(by_layer.items())}


def shared_layout(rows: Sequence[Sequence[int]], starts: Sequence[int], end: int) -> Layout:
    """The layout every row fits: segment j starts at the earliest start of any row's j-th cell.

    Example:
        >>> shared_layout([[0, 2], [1, 3]], starts=[5, 6, 7, 8], end=9).starts     # rows start 5, 7 and 6, 8
        [5, 7]
    """
    n_segments = max(len(row) for row in rows)
    return Layout([min(starts[row[j]] for row in rows if j < len(row)) for j in range(n_segments)], end)


def layer_masks(model: Any, layout: Layout, prefix: int, pair_mask: Tensor) -> list[Tensor]:
    """Additive attention masks `[n_pairs, 1, length, prefix + length]`, one per decoder layer.

    A token attends to the cached positions before its segment's start and to its own
    segment up to itself, never to padding, and within a sliding window where the layer has one.

    Example:
        >>> import torch
        >>> from mechscope.core.examples import tiny_model
        >>> masks = layer_masks(tiny_model(vocab_size=50), Layout([1, 2], 3), 2, torch.ones(1, 3))
        >>> (masks[0][0, 0] == 0).int().tolist()           # rows: positions 1, 2 | 2; columns: cache 0, 1 | row
        [[1, 0, 1, 0, 0], [1, 0, 1, 1, 0], [1, 1, 0, 0, 1]]
    """
    cfg = model.hf_model.config
    kinds = getattr(cfg, "layer_types", None)
    window = getattr(cfg, "sliding_window", None)
    query = layout.positions
    segment = torch.cat([torch.full((layout.end - s,), j) for j, s in enumerate(layout.starts)])
    seg_start = torch.tensor(layout.starts)[segment]
    key_pos = torch.cat([torch.arange(prefix), query])
    in_cache = torch.arange(prefix + layout.length) < prefix
    key_segment = torch.cat([torch.full((prefix,), -1), segment])
    order = torch.cat([torch.full((prefix,), -1), torch.arange(layout.length)])
    allowed = torch.where(in_cache[None], key_pos[None] < seg_start[:, None],
                          (key_segment[None] == segment[:, None]) & (order[None] <= torch.arange(layout.length)[:, None]))
    real = pair_mask.bool().cpu()[:, key_pos]  # [n_pairs, keys]
    full = allowed[None] & real[:, None]
    masks: dict[int | None, Tensor] = {}
    out = []
    for layer in range(model.cfg.n_layers):
        sliding = (kinds[layer] == "sliding_attention") if kinds else bool(window)
        size = window if sliding and window else None
        if size not in masks:
            keep = full if size is None else full & (query[:, None] - key_pos[None] < size)[None]
            additive = torch.zeros(keep.shape, dtype=model.dtype).masked_fill(~keep, torch.finfo(model.dtype).min)
            masks[size] = additive[:, None].to(model.device)
        out.append(masks[size])
    return out


def _patch_hook(entries: list[tuple[int, int, Any]], source: Tensor, n_pairs: int, layout: Layout) -> Any:
    """A hook writing each (row, segment, cell)'s slice of `source` into its row block and segment."""
    offsets = layout.offsets

    def hook(act: Tensor, point: Any) -> Tensor:
        out = act.clone()
        src = source.to(act.dtype)
        for row, j, cell in entries:
            start, rows = layout.starts[j], slice(row, row + n_pairs)
            head = () if cell.head is None else (cell.head,)
            if cell.pos is None:
                width = layout.end - start
                out[(rows, slice(offsets[j], offsets[j] + width), *head)] = src[(slice(None), slice(start, layout.end),
                                                                                   *head)]
            elif start <= cell.pos < layout.end:
                out[(rows, offsets[j] + cell.pos - start, *head)] = src[(slice(None), cell.pos, *head)]
        return out

    return hook


def run_packed(model: Any, base: TokenBatch, sources: Mapping[str, Tensor], cells: Sequence[Any],
               rows: Mapping[int, list[list[int]]], starts: Sequence[int], metric: PositionMetric,
               base_resid: Any) -> dict[int, Tensor]:
    """One packed pass over the layers in `rows`: the metric `[n_pairs]` of each cell (by index)."""
    n_pairs, n_pos = base.ids.shape
    positions = torch.as_tensor(metric.positions, dtype=torch.long).reshape(-1) % n_pos
    end = int(positions.max()) + 1
    blocks = [(layer, row) for layer, layer_rows in rows.items() for row in layer_rows]
    layout = shared_layout([row for _, row in blocks], starts, end)
    prefix = max(layout.starts)
    per_layer = {layer: len(layer_rows) for layer, layer_rows in rows.items()}
    start = min(per_layer)
    entries: dict[str, list[tuple[int, int, Any]]] = {}
    for b, (_, row) in enumerate(blocks):
        for j, c in enumerate(row):
            entries.setdefault(cells[c].name, []).append((b * n_pairs, j, cells[c]))
    hooks = [(name, _patch_hook(e, sources[name], n_pairs, layout)) for name, e in entries.items()]
    ids = layout.gather(base.ids).repeat(per_layer[start], 1).to(model.device)
    resid = layout.gather(base_resid[start]).repeat(per_layer[start], 1, 1) if start > 0 else None
    later = {layer: layout.gather(base_resid[layer]).repeat(n, 1, 1) for layer, n in per_layer.items() if layer > start}
    masks = layer_masks(model, layout, prefix, base.attention_mask)
    stand_in = masks[start].repeat(per_layer[start], 1, 1, 1)
    copies, count = [], 0
    for layer in range(model.cfg.n_layers):
        count += per_layer.get(layer, 0)
        copies.append(max(count, 1))
    slots = torch.tensor([[o + int(p) - s for p in positions] for o, s in zip(layout.offsets, layout.starts,
                                                                            strict=True)])
    keep = slots.unique()
    kwargs: dict[str, Any] = {"logits_to_keep": keep.to(model.device),
                              "position_ids": layout.positions[None].to(model.device), "use_cache": False}
    if prefix > 0:
        kwargs.update({cache_kwarg(model.hf_model): prefix_cache(base_resid.kv, prefix, copies), "use_cache": True})
    with torch.no_grad(), model.hooks(hooks), replay_prefix(model, start, resid, later, n_pairs, (stand_in, masks)):
        logits = model.hf_model(input_ids=ids, attention_mask=stand_in, **kwargs).logits
    n_rows = logits.shape[0]
    values: dict[int, Tensor] = {}
    for j in range(len(layout.starts)):
        slot = torch.searchsorted(keep, slots[j]).repeat(n_rows // n_pairs)
        at = metric.at(logits[torch.arange(n_rows), slot.to(logits.device)].float()).float().cpu()
        for b, (_, row) in enumerate(blocks):
            if j < len(row):
                values[row[j]] = at[b * n_pairs:(b + 1) * n_pairs]
    return values
