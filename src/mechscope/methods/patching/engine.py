"""Batched patching: many patched cells in one forward pass, each pass started where the patch starts.

A *cell* replaces one activation slice (a hook name, optionally one position and/or one
head) by the same slice from a source run. `run_cells` lays cells side by side in the
batch (row `c * n_pairs + i` is cell `c` on pair `i`), so one forward pass scores a whole
chunk of cells. Three exact savings:

- **Start each row at its patched layer.** Nothing before a cell's layer `l` differs from
  the base run, so its row joins the batch just before decoder layer `l`, as the base
  run's cached `resid_pre[l]`: a pass grows from the rows of its lowest layer to all of
  them, and decoder layers below the lowest are swapped for a module that returns the
  cached residual. The Hugging Face forward still runs the layers (masks, rotary and
  per-layer attention types are computed by the model itself). It is turned off where a
  decoder layer does not return a bare tensor (`layers_return_tensors`), and with
  `extra_hooks` (every row then starts at the pass's lowest layer). The swap mutates
  `model.layers` for the length of one pass: do not run the same model from another
  thread during a sweep.
- **Start at the patched position.** Attention is causal, so a patch at position `p`
  leaves every position before `p` (at every layer) as in the base run. The base run's
  keys and values are kept (`base_runs.BaseStates.kv`), and a pass whose cells all patch at `p` or
  later runs only the suffix `p..` with the prefix's keys and values as Hugging Face's KV
  cache. Needs a metric read at known positions (`PositionMetric`), all of them `>= p`.
  (Both mechanisms live in `mechscope.core.partial_runs`.)
- **Cells of different starts in one row.** Cells whose suffixes start at different
  positions are laid end to end in one row, each segment attending to the cached prefix
  before its own start (`packing`), so a layer x position sweep needs one pass, not one per
  start.
- **Logits at the metric's positions only** (`logits_to_keep`), not over the whole vocabulary
  at every position.

The floor of a sweep, `floor_work`, is the layer x token work that no exact method can
skip: for each cell, its suffix length times the layers from its own layer up.

Cells are grouped by suffix start, then into chunks by a small dynamic programme that
trades one pass's fixed cost against positions (and, without staggered rows, layers) run
that a cell did not need (`_plan`), within a memory budget (`memory_mb`).
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from mechscope.core.errors import MechscopeError
from mechscope.core.partial_runs import cache_kwarg, cache_tensors, prefix_cache, replay_prefix
from mechscope.core.tokens import TokenBatch
from mechscope.methods.metrics import Metric, PositionMetric
from mechscope.methods.patching import packing

log = logging.getLogger(__name__)

# Fixed cost of one pass through one layer, in tokens of work (Python and kernel-launch overhead).
PASS_COST_TOKENS = 64


@dataclass(frozen=True)
class Cell:
    """Patch `name` (at `layer`) at position `pos` (None: all) and head `head` (None: all).

    Example:
        >>> Cell("blocks.3.attn.hook_z", layer=3, pos=5, head=2)        # head 2 of layer 3, at position 5 only
        Cell(name='blocks.3.attn.hook_z', layer=3, pos=5, head=2)
    """

    name: str
    layer: int
    pos: int | None = None
    head: int | None = None


def metric_positions(metric: Metric, n_pos: int) -> Tensor | None:
    """The positions a `PositionMetric` reads (per pair, in 0..n_pos-1); None for other metrics.

    Example:
        >>> from mechscope.methods.metrics import LogitDiff
        >>> metric_positions(LogitDiff(answer=6, wrong=7, pos=-1), n_pos=5)
        tensor([4])
        >>> metric_positions(lambda logits: logits[:, -1, 0], n_pos=5) is None
        True
    """
    if not isinstance(metric, PositionMetric):
        return None
    return torch.as_tensor(metric.positions, dtype=torch.long).reshape(-1) % n_pos


def forward_metric(model: Any, tokens: TokenBatch, metric: Metric, fwd_hooks: Sequence[Any] = (),
                   start: int = 0, resid: Tensor | None = None, kv: Sequence[tuple[Tensor, Tensor]] | None = None,
                   offset: int = 0, keep_kv: list | None = None, bwd_hooks: Sequence[Any] = (),
                   later: Mapping[int, Tensor] | None = None, n_pairs: int = 1) -> Tensor:
    """Per-row metric of one (hooked) run; logits only where a `PositionMetric` reads them.

    `resid` (resid_pre[start] at positions `offset..`) starts the run at layer `start`;
    `later` adds rows that start at a later layer (`{layer: resid_pre[layer]}`, appended after
    the rows of `tokens`, in layer order; see `replay_prefix`; all rows come in blocks of
    `n_pairs` that share masks and positions). `kv` (the base run's keys and
    values, one pair of `[n_pairs, kv_heads, pos, d_head]` per layer) with `offset > 0` runs
    positions `offset..` only. `keep_kv`, a list, receives the run's own keys and values.
    `bwd_hooks` go into the same hook context as `fwd_hooks`.

    Example:
        >>> import torch
        >>> from mechscope.core.examples import tiny_model
        >>> model = tiny_model(vocab_size=50)       # 2-layer random Llama, width 16
        >>> from mechscope.core.tokens import TokenBatch
        >>> from mechscope.methods.metrics import LogitDiff
        >>> ids = torch.tensor([[1, 2, 3], [4, 5, 6]])
        >>> metric = LogitDiff(answer=6, wrong=7)
        >>> values = forward_metric(model, TokenBatch(ids, torch.ones_like(ids)), metric)
        >>> torch.allclose(values, metric(model(ids)), atol=1e-5)
        True
    """
    n_pos = tokens.ids.shape[1]
    ids = tokens.ids[:, offset:].to(model.device)
    mask = tokens.attention_mask.to(model.device)
    mask = None if bool(mask.all()) else mask
    kwargs: dict[str, Any] = {"use_cache": False}
    later = dict(sorted((later or {}).items()))
    if offset > 0:
        rows, copies = ids.shape[0], []
        for layer in range(len(kv)):
            rows += later[layer].shape[0] if layer in later else 0
            copies.append(rows // kv[0][0].shape[0] if layer >= start else 1)
        kwargs.update({cache_kwarg(model.hf_model): prefix_cache(kv, offset, copies), "use_cache": True})
    elif keep_kv is not None:
        from transformers import DynamicCache

        kwargs.update({cache_kwarg(model.hf_model): DynamicCache(), "use_cache": True})
    positions = metric_positions(metric, n_pos)
    if positions is not None:
        positions = positions.to(ids.device) - offset
        keep = positions.unique()
        kwargs["logits_to_keep"] = keep
    with (model.hooks(list(fwd_hooks), list(bwd_hooks)),
          replay_prefix(model, start if resid is not None else 0, resid, later, n_pairs)):
        out = model.hf_model(input_ids=ids, attention_mask=mask, **kwargs)
    if keep_kv is not None:
        keep_kv.extend(cache_tensors(out))
    logits = out.logits
    if positions is None:
        return metric(logits)
    slot = torch.searchsorted(keep, positions)
    slot = slot.repeat(logits.shape[0] // slot.numel())
    last = logits[torch.arange(logits.shape[0], device=logits.device), slot].float()
    return metric.at(last)


def _slice(cell: Cell, rows: slice | None, offset: int = 0, first: int = 0) -> tuple[Any, ...]:
    """Index of a cell's slice in an activation whose positions start at `offset` (all positions: from `first`)."""
    index: tuple[Any, ...] = (rows if rows is not None else slice(None),)
    index += (slice(first, None) if cell.pos is None else cell.pos - offset,)
    if cell.head is not None:
        index += (cell.head,)
    return index


def _patch_hook(entries: list[tuple[int, Cell]], source: Tensor, n_pairs: int, offset: int = 0) -> Any:
    """A hook writing each entry's slice of `source` into its row block (activation positions start at `offset`)."""
    def hook(act: Tensor, point: Any) -> Tensor:
        out = act.clone()
        src = source.to(act.dtype)
        for row, cell in entries:
            if cell.pos is not None and cell.pos < offset:
                continue  # the source equals the base there (see `suffix_starts`)
            out[_slice(cell, slice(row, row + n_pairs), offset)] = src[_slice(cell, None, 0, offset)]
        return out

    return hook


def row_bytes(model: Any, n_pos: int, n_keep: int, n_context: int | None = None) -> int:
    """Rough peak bytes one batch row needs in a no-grad forward pass over `n_pos` query positions.

    `n_context` (default `n_pos`) is how many positions each query attends to (the KV cache
    included); its keys and values are counted for every layer. Used to fit chunks of rows
    into a memory budget.

    Example:
        >>> import torch
        >>> from mechscope.core.examples import tiny_model
        >>> model = tiny_model(vocab_size=50)       # 2-layer random Llama, width 16
        >>> row_bytes(model, n_pos=9, n_keep=1) < row_bytes(model, n_pos=90, n_keep=1)
        True
        >>> 2**30 // row_bytes(model, n_pos=9, n_keep=1) > 1000          # rows that fit in 1 GiB
        True
    """
    cfg = model.cfg
    n_context = n_context or n_pos
    itemsize = torch.finfo(model.dtype).bits // 8
    per_pos = 8 * cfg.d_model + 3 * cfg.d_mlp + 3 * cfg.n_heads * n_context
    kv = 2 * cfg.n_layers * cfg.n_kv_heads * cfg.d_head * n_context
    return itemsize * (n_pos * per_pos + kv) + 4 * n_keep * cfg.d_vocab


def _plan(layers: list[int], n_layers: int, n_pairs: int, n_pos: int, max_rows: int,
          offsets: list[int] | None = None, staggered: bool = False) -> list[tuple[int, int]]:
    """Split cells into chunks [i, j) of least total cost: work plus a fixed cost per pass and layer.

    Cells come sorted by (offset descending, layer); a chunk runs from its lowest layer and its
    lowest offset (the suffix of its earliest patched position). Without `staggered` every
    row runs from the chunk's lowest layer, so merging cells trades rows run through layers
    they did not need against the fixed cost of another pass; `staggered` rows join at their
    own layer, and only the suffix is shared. Boundaries fall only between runs of equal
    (offset, layer) unless one run alone exceeds `max_rows`.
    """
    offsets = offsets or [0] * len(layers)
    groups: list[tuple[int, int]] = []  # (start index, end index) of runs of equal (offset, layer), split to fit
    cells_per_chunk = max(1, max_rows // n_pairs)
    i = 0
    while i < len(layers):
        j = i
        while (j < len(layers) and (layers[j], offsets[j]) == (layers[i], offsets[i])
               and j - i < cells_per_chunk):
            j += 1
        groups.append((i, j))
        i = j
    best = [0.0] + [float("inf")] * len(groups)
    choice = [0] * (len(groups) + 1)
    for end in range(1, len(groups) + 1):
        suffix = max(n_pos - offsets[groups[end - 1][1] - 1], 1)
        lowest, own_layers = n_layers, 0
        for begin in range(end - 1, -1, -1):
            cells = groups[end - 1][1] - groups[begin][0]
            if cells > cells_per_chunk and begin < end - 1:
                break
            first, last = groups[begin]
            lowest = min(lowest, layers[first])
            own_layers += (last - first) * (n_layers - layers[first])
            row_layers = own_layers if staggered else cells * (n_layers - lowest)
            cost = best[begin] + (n_layers - lowest) * PASS_COST_TOKENS + suffix * n_pairs * row_layers
            if cost < best[end]:
                best[end], choice[end] = cost, begin
    chunks, end = [], len(groups)
    while end > 0:
        begin = choice[end]
        chunks.append((groups[begin][0], groups[end - 1][1]))
        end = begin
    return chunks[::-1]


def suffix_starts(cells: Sequence[Cell], metric: Metric, n_pos: int, sources: Mapping[str, Tensor] | None = None,
                  base_acts: Mapping[str, Tensor] | None = None) -> list[int]:
    """Each cell's first position that can differ from the base run.

    That is the patched position, or for an all-positions cell the first position where the
    source differs from the base activation at all (with `base_acts`; shared leading tokens
    such as a BOS patch nothing), capped at the first position the metric reads. 0 for every
    cell when the metric is not a `PositionMetric`.

    Example:
        >>> from mechscope.methods.metrics import LogitDiff
        >>> cells = [Cell("blocks.0.hook_resid_pre", 0, pos=2), Cell("blocks.0.hook_resid_pre", 0)]
        >>> suffix_starts(cells, LogitDiff(answer=6, wrong=7), n_pos=5)     # an all-positions cell may differ from 0
        [2, 0]
    """
    positions = metric_positions(metric, n_pos)
    if positions is None:
        return [0] * len(cells)
    first_read = int(positions.min())
    changed: dict[tuple[str, int | None], Tensor] = {}
    starts = []
    for cell in cells:
        first = 0 if cell.pos is None else cell.pos
        if sources is not None and base_acts is not None and cell.name in base_acts:
            key = (cell.name, cell.head)
            if key not in changed:
                diff = sources[cell.name] != base_acts[cell.name].to(sources[cell.name].device)
                diff = diff[:, :, cell.head] if cell.head is not None else diff
                changed[key] = diff.reshape(diff.shape[0], diff.shape[1], -1).any(-1).any(0).cpu()
            where = changed[key] if cell.pos is None else changed[key][cell.pos:cell.pos + 1]
            hits = where.nonzero()
            first = n_pos if hits.numel() == 0 else first + int(hits[0])
        starts.append(min(first, first_read))
    return starts


def floor_work(cells: Sequence[Cell], starts: Sequence[int], n_layers: int, n_pos: int, n_pairs: int = 1) -> int:
    """Layer x token work no exact sweep can skip: sum over cells of (n_layers - layer) * (n_pos - start) * n_pairs.

    Example:
        >>> cells = [Cell("blocks.0.hook_resid_pre", 0, pos=2), Cell("blocks.1.hook_resid_pre", 1, pos=4)]
        >>> floor_work(cells, starts=[2, 4], n_layers=2, n_pos=5)          # 2 * 3 + 1 * 1
        7
    """
    return sum((n_layers - c.layer) * (n_pos - s) * n_pairs for c, s in zip(cells, starts, strict=True))


def run_cells(model: Any, base: TokenBatch, sources: Mapping[str, Tensor], cells: Sequence[Cell],
              metric: Metric, base_resid: Sequence[Tensor] | None = None, memory_mb: float = 512,
              extra_hooks: Sequence[Any] = (), base_acts: Mapping[str, Tensor] | None = None) -> Tensor:
    """Metric `[len(cells), n_pairs]` of the base run with each cell patched from `sources[cell.name]`.

    `base_resid[l]` (the base run's `resid_pre` at layer l, `[n_pairs, pos, d_model]`) turns
    on starting each chunk at its first patched layer; None runs every layer. When it is a
    `base_runs.BaseStates` with keys and values and there are no `extra_hooks`, each chunk also starts
    at its first patched position (see `suffix_starts`; `base_acts`, the base run's
    activations at the cells' names, lets it skip positions where source and base agree).

    Example:
        >>> import torch
        >>> from mechscope.core.examples import tiny_model
        >>> model = tiny_model(vocab_size=50)       # 2-layer random Llama, width 16
        >>> clean, corrupt = torch.tensor([[1, 2, 3, 4, 5]]), torch.tensor([[1, 2, 9, 4, 5]])
        >>> from mechscope.core import names
        >>> from mechscope.core.tokens import TokenBatch
        >>> from mechscope.methods.metrics import LogitDiff
        >>> metric, mask = LogitDiff(answer=6, wrong=7), torch.ones_like(clean)
        >>> from mechscope.methods.patching.base_runs import cached_runs
        >>> clean_value, clean_acts, _ = cached_runs(model, TokenBatch(clean, mask), [names.resid_pre(0)], metric)
        >>> cells = [Cell(names.resid_pre(0), 0, pos=p) for p in range(5)]
        >>> values = run_cells(model, TokenBatch(corrupt, mask), clean_acts, cells, metric)
        >>> values.shape, torch.allclose(values[2], clean_value, atol=1e-5)   # patching the changed token restores it
        (torch.Size([5, 1]), True)
    """
    if not memory_mb > 0:
        raise MechscopeError(f"memory_mb must be a positive number of MiB (the cap on one batched pass), not {memory_mb}.")
    n_pairs, n_pos = base.ids.shape
    kv = getattr(base_resid, "kv", None) if not extra_hooks else None
    staggered = base_resid is not None and not extra_hooks
    offsets = suffix_starts(cells, metric, n_pos, sources, base_acts) if kv is not None else [0] * len(cells)
    keep = 1 if isinstance(metric, PositionMetric) else n_pos
    out = torch.empty(len(cells), n_pairs)
    if (staggered and kv is not None and packing.packable(model, cells, metric, offsets)
            and _run_packed_passes(model, base, sources, cells, offsets, metric, base_resid, memory_mb, out)):
        return out
    order = sorted(range(len(cells)), key=lambda c: (-offsets[c], cells[c].layer))
    max_rows = max(n_pairs, int(memory_mb * 2**20 // row_bytes(model, n_pos, keep)))
    plan = _plan([cells[c].layer for c in order], model.cfg.n_layers, n_pairs, n_pos, max_rows,
                 [offsets[c] for c in order], staggered)
    for begin, end in plan:
        chunk = sorted(order[begin:end], key=lambda c: cells[c].layer)  # rows join in layer order
        offset = min(offsets[c] for c in chunk)
        out[chunk] = _run_chunk(model, base, sources, [cells[c] for c in chunk], metric, base_resid, kv, offset,
                                extra_hooks, staggered)
    log.debug("patching %d cells in %d passes", len(cells), len(plan))
    return out


def _run_packed_passes(model: Any, base: TokenBatch, sources: Mapping[str, Tensor], cells: Sequence[Cell],
                       starts: list[int], metric: Metric, base_resid: Any, memory_mb: float, out: Tensor) -> bool:
    """Packed passes (`packing`) over consecutive layers, as many layers per pass as `memory_mb` allows.

    False (nothing run) when one layer's packed rows alone would not fit in `memory_mb`.
    """
    n_pairs, n_pos = base.ids.shape
    end = int(metric_positions(metric, n_pos).max()) + 1
    n_rows, rows = packing.deal_rows(cells, starts, end)
    layout = packing.shared_layout([row for layer_rows in rows.values() for row in layer_rows], starts, end)
    per_row = row_bytes(model, layout.length, 1, max(layout.starts) + layout.length)
    layers_per_pass = int(memory_mb * 2**20 // (per_row * n_pairs * n_rows))
    if layers_per_pass < 1:
        return False
    layers = list(rows)
    for i in range(0, len(layers), layers_per_pass):
        chunk = {layer: rows[layer] for layer in layers[i:i + layers_per_pass]}
        for c, value in packing.run_packed(model, base, sources, cells, chunk, starts, metric, base_resid).items():
            out[c] = value
    log.debug("patching %d cells in %d packed passes", len(cells), math.ceil(len(layers) / layers_per_pass))
    return True


def _run_chunk(model: Any, base: TokenBatch, sources: Mapping[str, Tensor], chunk: list[Cell], metric: Metric,
               base_resid: Sequence[Tensor] | None, kv: Any, offset: int, extra_hooks: Sequence[Any],
               staggered: bool) -> Tensor:
    """Metric of the cells of `chunk` (sorted by layer), one row block each, in one pass from `offset` on."""
    n_pairs = base.ids.shape[0]
    entries: dict[str, list[tuple[int, Cell]]] = {}
    for slot, cell in enumerate(chunk):
        entries.setdefault(cell.name, []).append((slot * n_pairs, cell))
    hooks = [(name, _patch_hook(e, sources[name], n_pairs, offset)) for name, e in entries.items()]
    start = chunk[0].layer
    blocks = Counter(cell.layer for cell in chunk) if staggered else Counter({start: len(chunk)})
    batch = TokenBatch(base.ids.repeat(blocks[start], 1), base.attention_mask.repeat(blocks[start], 1))
    resid = None
    if base_resid is not None and start > 0:
        resid = base_resid[start][:, offset:].repeat(blocks[start], 1, 1)
    later = {layer: base_resid[layer][:, offset:].repeat(n, 1, 1) for layer, n in blocks.items() if layer > start}
    with torch.no_grad():
        values = forward_metric(model, batch, metric, [*extra_hooks, *hooks], start, resid, kv, offset,
                                later=later, n_pairs=n_pairs)
    return values.float().reshape(len(chunk), n_pairs).cpu()
