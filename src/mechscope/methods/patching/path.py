"""Path patching: a sender's effect along its path into chosen receivers only (Wang et al., IOI).

With `mode="denoise"` (base = corrupted run, source = clean run), for each sender
(an attention head `(layer, head)` or an MLP `("mlp", layer)`):

1. Run the corrupted prompt with the sender set to its clean value and every other
   attention head's output (`hook_z`) frozen to its corrupted value (also every other MLP
   with `freeze_mlps=True`); record the receivers' inputs: a head's query, key or value
   (`hook_q`/`hook_k`/`hook_v`), or the final residual stream.
2. Run the corrupted prompt again with only the receivers' inputs replaced by what step 1
   recorded; everything else is recomputed. Score: normalized recovery of the metric.

A receiver `"resid"` is the final residual stream (the sender's direct path to the
logits); then step 2 is step 1's own output. Senders at or after every receiver's layer
cannot reach it and score exactly 0 without being run. Grouped-query models share keys and
values between query heads: a `k`/`v` receiver patches the key/value head that query head
reads, so every query head of that group receives it.

Senders are batched (one row block each) and each pass starts at its first changed layer.

Example:
    >>> r = path_patch(model, clean, corrupt, receivers=[(20, 4, "q")],
    ...                answer=" Paris", wrong=" Rome")            # doctest: +SKIP
    >>> r.by, r.top(3)                                             # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from mechscope.core import names as hook_names
from mechscope.core.errors import MechscopeError
from mechscope.methods.metrics import Metric
from mechscope.methods.patching.engine import forward_metric, row_bytes
from mechscope.methods.patching.inputs import Answers, Prompts
from mechscope.methods.patching.result import PatchResult
from mechscope.methods.patching.sweep import PairRuns

Sender = tuple[Any, int] | tuple[int, int]  # (layer, head) or ("mlp", layer)
Receiver = tuple[int, int, str] | str  # (layer, head, "q" | "k" | "v") or "resid"


def _sender_parts(sender: Sender) -> tuple[str, int, int | None]:
    if sender[0] == "mlp":
        return "mlp", int(sender[1]), None
    return "head", int(sender[0]), int(sender[1])


def _receiver_hook(model: Any, receiver: Receiver) -> tuple[str, int, int | None]:
    """(hook name, layer, head index in that hook) of a receiver."""
    if receiver == "resid":
        n = model.cfg.n_layers
        return hook_names.resid_post(n - 1), n, None
    layer, head, which = receiver
    if which not in ("q", "k", "v"):
        raise MechscopeError(f"A receiver is (layer, head, 'q' | 'k' | 'v') or 'resid', not {receiver!r}.")
    index = head if which == "q" else head // model.cfg.n_kv_groups
    return hook_names.block(layer, f"attn.hook_{which}"), layer, index


def _sender_layer(sender: Sender) -> int:
    return _sender_parts(sender)[1]


class _PathRun:
    """Cached clean and corrupted activations of every head (and MLP) for path patching."""

    def __init__(self, runs: PairRuns, mode: str, freeze_mlps: bool) -> None:
        self.runs, self.mode, self.freeze_mlps = runs, mode, freeze_mlps
        model = runs.model
        self.base_tokens, _ = runs.pair.base_and_source(mode)
        self.source = runs.clean_acts if mode == "denoise" else runs.corrupt_acts
        self.base = runs.corrupt_acts if mode == "denoise" else runs.clean_acts
        self.base_resid = runs.corrupt_resid if mode == "denoise" else runs.clean_resid
        self.n_layers = model.cfg.n_layers

    def _rows(self, chunk: Sequence[Sender]) -> Any:
        tokens = self.base_tokens
        return type(tokens)(tokens.ids.repeat(len(chunk), 1), tokens.attention_mask.repeat(len(chunk), 1))

    def _start(self, layer: int, rows: int) -> tuple[int, Tensor | None]:
        if layer <= 0 or layer >= self.n_layers or not self.runs.skip:
            return 0, None
        return layer, self.base_resid[layer].repeat(rows, 1, 1)

    def sender_pass(self, chunk: Sequence[Sender], receivers: Sequence[Receiver]) -> tuple[Tensor, dict[str, Tensor]]:
        """Step 1 for a chunk of senders: per-row metric and the receivers' inputs."""
        model, n_pairs = self.runs.model, self.runs.pair.n_pairs
        first = min(_sender_layer(s) for s in chunk)
        frozen = {hook_names.z(layer): "head" for layer in range(first, self.n_layers)}
        if self.freeze_mlps:
            frozen.update({hook_names.mlp_out(layer): "mlp" for layer in range(first, self.n_layers)})
        for kind, layer, _ in map(_sender_parts, chunk):
            name = hook_names.z(layer) if kind == "head" else hook_names.mlp_out(layer)
            frozen.setdefault(name, kind)

        def freeze(act: Tensor, point: Any) -> Tensor:
            if point.name.endswith("hook_mlp_out") and not self.freeze_mlps:
                out = act.clone()  # MLPs are recomputed; only an MLP sender's own row block is set
            else:
                out = self.base[point.name].to(act.dtype).repeat(len(chunk), *([1] * (act.dim() - 1)))
            for slot, sender in enumerate(chunk):
                kind, layer, head = _sender_parts(sender)
                rows = slice(slot * n_pairs, (slot + 1) * n_pairs)
                if kind == "head" and point.name == hook_names.z(layer):
                    out[rows, :, head] = self.source[point.name][:, :, head].to(act.dtype)
                elif kind == "mlp" and point.name == hook_names.mlp_out(layer):
                    out[rows] = self.source[point.name].to(act.dtype)
            return out

        captured: dict[str, Tensor] = {}

        def capture(act: Tensor, point: Any) -> None:
            captured[point.name] = act.detach().clone()

        hooks = [(name, freeze) for name in frozen]
        hooks += [(_receiver_hook(model, r)[0], capture) for r in receivers]
        start, resid = self._start(first, len(chunk))
        with torch.no_grad():
            values = forward_metric(model, self._rows(chunk), self.runs.metric, hooks, start, resid)
        return values, captured

    def receiver_pass(self, chunk: Sequence[Sender], receivers: Sequence[Receiver],
                      captured: dict[str, Tensor]) -> Tensor:
        """Step 2: the base run with only the receivers' inputs replaced."""
        model = self.runs.model
        targets: dict[str, list[int | None]] = {}
        for receiver in receivers:
            name, _, index = _receiver_hook(model, receiver)
            targets.setdefault(name, []).append(index)

        def patch(act: Tensor, point: Any) -> Tensor:
            if point.name not in captured:
                # Step 1 started after this receiver's layer: every sender of the chunk comes later,
                # so the receiver's input was the base run's, which this pass computes anyway.
                return act
            out = act.clone()
            for index in targets[point.name]:
                where = (slice(None), slice(None)) + (() if index is None else (index,))
                out[where] = captured[point.name][where].to(act.dtype)
            return out

        first = min(_receiver_hook(model, r)[1] for r in receivers)
        start, resid = self._start(first, len(chunk))
        with torch.no_grad():
            return forward_metric(model, self._rows(chunk), self.runs.metric,
                                  [(name, patch) for name in targets], start, resid)


def path_patch(model: Any, clean: Prompts, corrupt: Prompts, metric: Metric | str | None = None, *,
               answer: Answers | None = None, wrong: Answers | None = None,
               receivers: Sequence[Receiver] = ("resid",), senders: Sequence[Sender] | None = None,
               mode: str = "denoise", freeze_mlps: bool = False, memory_mb: float = 512) -> PatchResult:
    """Normalized recovery of each sender's path into `receivers` (see the module docstring).

    `senders=None` takes every attention head and gives scores by `("layer", "head")`;
    otherwise scores follow `senders` on one axis `"sender"`.

    Example:
        >>> import torch
        >>> from mechscope.core.examples import tiny_model
        >>> model = tiny_model(vocab_size=50)       # 2-layer random Llama, width 16
        >>> clean, corrupt = torch.tensor([[1, 2, 3, 4, 5]]), torch.tensor([[1, 2, 9, 4, 5]])
        >>> result = path_patch(model, clean, corrupt, answer=6, wrong=7)        # every head into the logits
        >>> result.by, result.shape
        (('layer', 'head'), (2, 2))
        >>> path_patch(model, clean, corrupt, answer=6, wrong=7, receivers=[(1, 0, "q")],
        ...            senders=[(1, 1), ("mlp", 0)]).scores[0].item() == 0        # a layer-1 head cannot reach layer 1
        True
    """
    receivers = list(receivers)
    if not receivers:
        raise MechscopeError("Give at least one receiver: (layer, head, 'q'|'k'|'v') or 'resid'.")
    every_head = senders is None
    cfg = model.cfg
    if senders is None:
        senders = [(layer, head) for layer in range(cfg.n_layers) for head in range(cfg.n_heads)]
    senders = list(senders)
    names = [hook_names.z(layer) for layer in range(cfg.n_layers)]
    names += [hook_names.mlp_out(layer) for layer in range(cfg.n_layers)]
    runs = PairRuns(model, clean, corrupt, metric, answer, wrong, names)
    path = _PathRun(runs, mode, freeze_mlps)
    last_receiver = max(_receiver_hook(model, r)[1] for r in receivers)
    reachable = [i for i, s in enumerate(senders) if _sender_layer(s) < last_receiver]
    n_pairs, n_pos = runs.pair.n_pairs, runs.pair.n_pos
    per_chunk = max(1, int(memory_mb * 2**20 // (row_bytes(model, n_pos, 1) * n_pairs)))
    base_value = runs.corrupt_value if mode == "denoise" else runs.clean_value
    values = torch.full((len(senders),), base_value)
    order = sorted(reachable, key=lambda i: _sender_layer(senders[i]))
    direct = receivers == ["resid"]
    for begin in range(0, len(order), per_chunk):
        index = order[begin:begin + per_chunk]
        chunk = [senders[i] for i in index]
        metric_rows, captured = path.sender_pass(chunk, receivers)
        if not direct:
            metric_rows = path.receiver_pass(chunk, receivers, captured)
        values[index] = metric_rows.float().cpu().reshape(len(chunk), n_pairs).mean(1)
    scores = runs.recovery(values)
    extra = {"receivers": [list(r) if not isinstance(r, str) else r for r in receivers],
             "freeze_mlps": freeze_mlps}
    if every_head:
        labels = [list(range(cfg.n_layers)), list(range(cfg.n_heads))]
        return runs.result(scores.reshape(cfg.n_layers, cfg.n_heads), ("layer", "head"), labels, "path", "path",
                           mode, **extra)
    labels = [[_label(s) for s in senders]]
    return runs.result(scores, ("sender",), labels, "path", "path", mode, **extra)


def _label(sender: Sender) -> str:
    kind, layer, head = _sender_parts(sender)
    return f"mlp{layer}" if kind == "mlp" else f"{layer}.{head}"
