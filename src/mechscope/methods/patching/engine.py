"""Batched patching: many patched cells in one forward pass, each run started at its first patched layer.

A *cell* replaces one activation slice (a hook name, optionally one position and/or one
head) by the same slice from a source run. `run_cells` lays cells side by side in the
batch (row `c * n_pairs + i` is cell `c` on pair `i`), so one forward pass scores a whole
chunk of cells. Two exact savings:

- **Start at the patched layer.** Nothing before a chunk's first patched layer `s`
  differs from the base run, so the decoder layers `0..s-1` are swapped, for that one
  pass, for a module that returns the base run's cached `resid_pre[s]`; the Hugging Face
  forward then runs layers `s..n-1` as usual (masks, rotary and per-layer attention types
  are still computed by the model itself). It is turned off where a decoder layer does
  not return a bare tensor (`layers_return_tensors`); the test suite checks it against
  one plain forward per cell for every supported family.
- **Logits at the metric's positions only** (`logits_to_keep`), not over the whole vocabulary
  at every position.

Cells are grouped into chunks by a small dynamic programme over layers that trades one
pass's fixed cost against rows run through layers they did not need (`_plan`), within a
memory budget.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from mechscope.core import names as hook_names
from mechscope.core.tokens import TokenBatch
from mechscope.methods.metrics import Metric, PositionMetric

log = logging.getLogger(__name__)

# Fixed cost of one pass through one layer, in tokens of work (Python and kernel-launch overhead).
PASS_COST_TOKENS = 48


@dataclass(frozen=True)
class Cell:
    """Patch `name` (at `layer`) at position `pos` (None: all) and head `head` (None: all)."""

    name: str
    layer: int
    pos: int | None = None
    head: int | None = None


class _Replay(nn.Module):
    """Stands in for skipped decoder layers: returns a fixed residual whatever it is given."""

    def __init__(self, resid: Tensor) -> None:
        super().__init__()
        self.resid = resid

    def forward(self, hidden_states: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        return self.resid


@contextmanager
def replay_prefix(model: Any, start: int, resid: Tensor) -> Iterator[None]:
    """Run `model` with decoder layers `0..start-1` replaced by the residual `resid` (= resid_pre[start])."""
    if start <= 0:
        yield
        return
    layers = model.layers
    originals = [layers[i] for i in range(start)]
    replay = _Replay(resid)
    try:
        for i in range(start):
            layers[i] = replay
        yield
    finally:
        for i, module in enumerate(originals):
            layers[i] = module


def forward_metric(model: Any, tokens: TokenBatch, metric: Metric, fwd_hooks: Sequence[Any] = (),
                   start: int = 0, resid: Tensor | None = None) -> Tensor:
    """Per-row metric of one (hooked) run; logits only where a `PositionMetric` reads them."""
    ids = tokens.ids.to(model.device)
    mask = tokens.attention_mask.to(model.device)
    mask = None if bool(mask.all()) else mask
    kwargs: dict[str, Any] = {}
    positions = None
    if isinstance(metric, PositionMetric):
        positions = torch.as_tensor(metric.positions, dtype=torch.long, device=ids.device).reshape(-1)
        positions = positions % ids.shape[1]
        keep = positions.unique()
        kwargs["logits_to_keep"] = keep
    with model.hooks(list(fwd_hooks)), replay_prefix(model, start if resid is not None else 0, resid):
        logits = model.hf_model(input_ids=ids, attention_mask=mask, use_cache=False, **kwargs).logits
    if positions is None:
        return metric(logits)
    slot = torch.searchsorted(keep, positions)
    slot = slot.repeat(logits.shape[0] // slot.numel())
    last = logits[torch.arange(logits.shape[0], device=logits.device), slot].float()
    return metric.at(last)


def _slice(cell: Cell, rows: slice | None) -> tuple[Any, ...]:
    index: tuple[Any, ...] = (rows if rows is not None else slice(None),)
    index += (slice(None) if cell.pos is None else cell.pos,)
    if cell.head is not None:
        index += (cell.head,)
    return index


def _patch_hook(entries: list[tuple[int, Cell]], source: Tensor, n_pairs: int) -> Any:
    def hook(act: Tensor, point: Any) -> Tensor:
        out = act.clone()
        src = source.to(act.dtype)
        for row, cell in entries:
            out[_slice(cell, slice(row, row + n_pairs))] = src[_slice(cell, None)]
        return out

    return hook


def _row_bytes(model: Any, n_pos: int, n_keep: int) -> int:
    """Rough peak bytes one batch row needs in a no-grad forward pass."""
    cfg = model.cfg
    itemsize = torch.finfo(model.dtype).bits // 8
    per_pos = 8 * cfg.d_model + 3 * cfg.d_mlp + 3 * cfg.n_heads * n_pos
    return itemsize * n_pos * per_pos + 4 * n_keep * cfg.d_vocab


def _plan(layers: list[int], n_layers: int, n_pairs: int, n_pos: int, max_rows: int) -> list[tuple[int, int]]:
    """Split cells sorted by layer into chunks [i, j) minimising sum (n_layers - first layer) * (fixed + rows).

    Boundaries fall only between layers unless one layer alone exceeds `max_rows`.
    """
    groups: list[tuple[int, int]] = []  # (start index, end index) of runs of equal layer, split to fit
    cells_per_chunk = max(1, max_rows // n_pairs)
    i = 0
    while i < len(layers):
        j = i
        while j < len(layers) and layers[j] == layers[i] and j - i < cells_per_chunk:
            j += 1
        groups.append((i, j))
        i = j
    fixed = PASS_COST_TOKENS / max(n_pos, 1)
    best = [0.0] + [float("inf")] * len(groups)
    choice = [0] * (len(groups) + 1)
    for end in range(1, len(groups) + 1):
        for begin in range(end - 1, -1, -1):
            cells = groups[end - 1][1] - groups[begin][0]
            if cells > cells_per_chunk and begin < end - 1:
                break
            cost = best[begin] + (n_layers - layers[groups[begin][0]]) * (fixed + cells * n_pairs)
            if cost < best[end]:
                best[end], choice[end] = cost, begin
    chunks, end = [], len(groups)
    while end > 0:
        begin = choice[end]
        chunks.append((groups[begin][0], groups[end - 1][1]))
        end = begin
    return chunks[::-1]


def layers_return_tensors(model: Any, tokens: TokenBatch) -> bool:
    """True when decoder layers return a bare tensor (what `_Replay` imitates)."""
    seen: list[bool] = []
    handle = model.layers[0].register_forward_hook(lambda m, a, out: seen.append(isinstance(out, Tensor)))
    try:
        with torch.no_grad():
            model.hf_model(input_ids=tokens.ids[:1, :1].to(model.device), use_cache=False, logits_to_keep=1)
    finally:
        handle.remove()
    return bool(seen) and all(seen)


def run_cells(model: Any, base: TokenBatch, sources: Mapping[str, Tensor], cells: Sequence[Cell],
              metric: Metric, base_resid: Sequence[Tensor] | None = None, memory_mb: float = 512,
              extra_hooks: Sequence[Any] = ()) -> Tensor:
    """Metric `[len(cells), n_pairs]` of the base run with each cell patched from `sources[cell.name]`.

    `base_resid[l]` (the base run's `resid_pre` at layer l, `[n_pairs, pos, d_model]`) turns
    on starting each chunk at its first patched layer; None runs every layer.
    """
    n_pairs, n_pos = base.ids.shape
    keep = 1 if isinstance(metric, PositionMetric) else n_pos
    max_rows = max(n_pairs, int(memory_mb * 2**20 // _row_bytes(model, n_pos, keep)))
    order = sorted(range(len(cells)), key=lambda c: cells[c].layer)
    layers = [cells[c].layer for c in order]
    plan = _plan(layers, model.cfg.n_layers, n_pairs, n_pos, max_rows)
    log.debug("patching %d cells in %d passes (<= %d rows each)", len(cells), len(plan), max_rows)
    out = torch.empty(len(cells), n_pairs)
    for begin, end in plan:
        chunk = [order[k] for k in range(begin, end)]
        entries: dict[str, list[tuple[int, Cell]]] = {}
        for slot, c in enumerate(chunk):
            entries.setdefault(cells[c].name, []).append((slot * n_pairs, cells[c]))
        hooks = [(name, _patch_hook(e, sources[name], n_pairs)) for name, e in entries.items()]
        rows = len(chunk)
        batch = TokenBatch(base.ids.repeat(rows, 1), base.attention_mask.repeat(rows, 1))
        start = min(cells[c].layer for c in chunk)
        resid = None
        if base_resid is not None and start > 0:
            resid = base_resid[start].repeat(rows, 1, 1)
        with torch.no_grad():
            values = forward_metric(model, batch, metric, [*extra_hooks, *hooks], start, resid)
        out[chunk] = values.float().reshape(rows, n_pairs).cpu()
    return out


def cached_runs(model: Any, tokens: TokenBatch, names: Sequence[str], metric: Metric,
                extra_hooks: Sequence[Any] = ()) -> tuple[Tensor, dict[str, Tensor], list[Tensor]]:
    """One run: (per-pair metric, activations at `names`, resid_pre at every layer)."""
    wanted = list(dict.fromkeys([*names, *(hook_names.resid_pre(layer) for layer in range(model.cfg.n_layers))]))
    store: dict[str, Tensor] = {}

    def keep(act: Tensor, point: Any) -> None:
        store[point.name] = act.detach().clone()

    with torch.no_grad():
        value = forward_metric(model, tokens, metric, [*extra_hooks, *((n, keep) for n in wanted)])
    resid = [store[hook_names.resid_pre(layer)] for layer in range(model.cfg.n_layers)]
    return value.float().cpu(), {n: store[n] for n in names}, resid
