"""Running a model as its component graph: every destination reads its own edges.

`GraphModel.run` runs the real Hugging Face forward pass with hooks. Each destination's
input (a head's q/k/v input, an MLP input, the logits' input: the residual stream before
its norm) is rebuilt as

    input_d = resid - sum_s (1 - mask[d, s]) * (value_s - corrupt_s)

where `resid` is the residual stream the run actually carries at that point (the sum of
this run's source values plus biases), `value_s` is source `s` in this run and
`corrupt_s` its corrupted value. A mask of ones changes nothing; a zero removes the edge
exactly (the destination sees the corrupted source instead); fractions interpolate. The
mask may require grad: `d metric / d mask[d, s]` is then edge attribution's
`grad_d . (value_s - corrupt_s)` summed over positions. With `fixed_delta`, the
difference `value_s - corrupt_s` is given (EAP-IG on inputs uses clean - corrupt).

Queries, keys and values are recomputed per head from the rebuilt inputs (norm, then that
head's rows of the projection), so grouped-query models are run ungrouped (`ungroup.py`).
In models with a norm after attention (Gemma 2/3), a head's value is its output scaled by
that norm's statistics in the same run, so that the heads still add up to the block's output.

Example:
    >>> gm = GraphModel(model)                               # doctest: +SKIP
    >>> clean = gm.sources(ids)                # [batch, pos, n_sources, d_model]  # doctest: +SKIP
    >>> logits = gm.run(ids, None, mask, corrupt=gm.sources(corrupt_ids))  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from mechscope.circuits.discovery.component_graph import ComponentGraph
from mechscope.circuits.discovery.ungroup import ungrouped
from mechscope.core import names
from mechscope.core.errors import MechscopeError
from mechscope.core.families import get_module
from mechscope.core.hooked import HookedModel
from mechscope.core.partial_runs import layers_return_tensors, replay_prefix
from mechscope.core.runner import StopForward
from mechscope.core.tokens import TokenBatch


@dataclass
class Trace:
    """A graph run's logits, every source value [batch, pos, n_sources, d_model], and the
    residual stream entering each layer plus the final norm's input (`resid[n_layers]`).

    Example:
        >>> from mechscope import HookedModel
        >>> from mechscope.circuits.discovery.induction import induction_pairs
        >>> from mechscope.toys.attn_only import AttnOnlyConfig, AttnOnlyForCausalLM
        >>> toy = AttnOnlyForCausalLM(AttnOnlyConfig(vocab_size=21, hidden_size=16, num_attention_heads=2))
        >>> gm, pairs = GraphModel(HookedModel(toy, name="toy")), induction_pairs(n=4, span=6, n_tokens=20)
        >>> trace = gm.trace(pairs.clean, None, None, None)
        >>> trace.sources.shape, len(trace.resid)                       # [batch, pos, n_sources, d_model]; 2 layers + final
        (torch.Size([4, 12, 5, 16]), 3)
    """

    logits: Tensor
    sources: Tensor
    resid: list[Tensor]


def _stop(act: Tensor, hook: Any) -> None:
    raise StopForward


class _Run:
    """State of one graph run: source differences recorded so far, rebuilt inputs."""

    def __init__(self, gm: GraphModel, mask: Tensor | None, corrupt: Tensor | None,
                 fixed_delta: Tensor | None, record: bool) -> None:
        self.gm, self.graph = gm, gm.graph
        device = gm.model.device
        self.removed = None if mask is None else 1 - mask.to(device)
        self.grad = mask is not None and mask.requires_grad
        self.corrupt = None if corrupt is None else corrupt.to(device)
        self.fixed = None if fixed_delta is None else fixed_delta.to(device)
        self.record = record
        self.values: list[Tensor] = []
        self.deltas: list[tuple[int, int, Tensor]] = []
        self.resid: dict[Any, Tensor] = {}
        self.qkv: dict[int, Tensor] = {}

    def add_source(self, start: int, value: Tensor, record: bool = True) -> None:
        """Record sources `start..start+n` ([batch, pos, n, d_model])."""
        stop = start + value.shape[2]
        if self.record and record:
            self.values.append(value.detach())
        if self.removed is None:
            return
        if self.fixed is not None:
            delta = self.fixed[:, :, start:stop]
        else:
            delta = value - self.corrupt[:, :, start:stop]
        self.deltas.append((start, stop, delta))

    def correction(self, rows: slice, n_up: int) -> Tensor | None:
        """sum_s removed[d, s] * delta_s for destinations `rows`: [batch, pos, n_rows, d_model]."""
        if self.removed is None:
            return None
        removed = self.removed[rows, :n_up]
        if not self.grad and not bool(removed.any()):
            return None
        total: Tensor | None = None
        for start, stop, delta in self.deltas:
            if start >= n_up:
                break
            block = removed[:, start:stop]
            if not self.grad and not bool(block.any()):
                continue
            term = torch.einsum("bpsm,ns->bpnm", delta, block.to(delta.dtype))
            total = term if total is None else total + term
        return total


class GraphModel:
    """A `HookedModel` run edge by edge (see the module docstring).

    Example:
        >>> from mechscope import HookedModel
        >>> from mechscope.circuits.discovery.induction import induction_pairs
        >>> from mechscope.toys.attn_only import AttnOnlyConfig, AttnOnlyForCausalLM
        >>> toy = AttnOnlyForCausalLM(AttnOnlyConfig(vocab_size=21, hidden_size=16, num_attention_heads=2))
        >>> gm, pairs = GraphModel(HookedModel(toy, name="toy")), induction_pairs(n=4, span=6, n_tokens=20)
        >>> with torch.no_grad():
        ...     same = torch.allclose(gm.run(pairs.clean, None, None, None), toy(pairs.clean).logits, atol=1e-5)
        >>> gm.graph.n_edges, same                                      # no mask: the model's own logits
        (29, True)
    """

    def __init__(self, model: HookedModel) -> None:
        self.model = ungrouped(model)
        self.graph = ComponentGraph.for_model(self.model)
        fam, cfg = self.model.family, self.model.cfg
        self.post_norm = fam.attn_out != fam.attn
        layers = self.model.layers
        self.ln1 = [get_module(layer, fam.ln1) for layer in layers]
        self.ln2 = [get_module(layer, fam.ln2) for layer in layers] if self.graph.has_mlp else []
        self.attn_norm = [get_module(layer, fam.attn_out) for layer in layers] if self.post_norm else []
        self.weights, self.biases = zip(*(self._qkv_affine(layer) for layer in range(cfg.n_layers)), strict=True)

    @property
    def cfg(self) -> Any:
        return self.model.cfg

    def _qkv_affine(self, layer: int) -> tuple[Tensor, Tensor]:
        """Per-head affine maps of q, k, v: weights [3, n_heads, d_head, d_model], biases [3, n_heads, d_head]."""
        d = self.cfg.d_model
        ws, bs = [], []
        linear: dict[int, tuple[Tensor, Tensor]] = {}  # per module: its matrix and bias (fused q/k/v: once)
        with torch.no_grad():
            for which in ("q", "k", "v"):
                site = self.model.sites[names.block(layer, f"attn.hook_{which}")]
                if id(site.module) not in linear:
                    base = site.module(torch.zeros(1, d, device=self.model.device, dtype=self.model.dtype))
                    if isinstance(site.module, nn.Linear):  # its matrix as it is: what the identity would give
                        matrix = site.module.weight.detach().T
                    else:
                        matrix = site.module(torch.eye(d, device=base.device, dtype=base.dtype)) - base
                    linear[id(site.module)] = matrix, base
                matrix, base = linear[id(site.module)]
                ws.append(site.read(matrix))
                bs.append(site.read(base)[0])
        return torch.stack(ws).permute(0, 2, 3, 1).contiguous(), torch.stack(bs)

    # -- source values -------------------------------------------------------------------------
    def head_values(self, layer: int, result: Tensor) -> Tensor:
        """Per-head contributions [batch, pos, n_heads, d_model] that sum to the block's attention output."""
        if not self.post_norm:
            return result
        norm = self.attn_norm[layer]
        dtype = torch.promote_types(result.dtype, torch.float32)
        total = result.sum(dim=2).to(dtype)
        eps = getattr(norm, "eps", getattr(norm, "variance_epsilon", 1e-6))
        scale = torch.rsqrt(total.pow(2).mean(-1, keepdim=True) + eps)
        ones = torch.ones(self.cfg.d_model, device=result.device, dtype=dtype)
        gain = norm(ones) * (1 + eps) ** 0.5  # the norm's per-channel gain, whatever its weight convention
        return (result.to(dtype) * (scale * gain.to(dtype))[:, :, None]).to(result.dtype)

    def sources(self, ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Every source's value in a plain run: [batch, pos, n_sources, d_model] (no grad)."""
        state = _Run(self, None, None, None, record=True)
        with torch.no_grad(), contextlib.suppress(StopForward):
            self._forward(state, ids, attention_mask, None, logits=False)
        return torch.cat(state.values, dim=2)

    def run(self, ids: Tensor, attention_mask: Tensor | None, mask: Tensor | None, corrupt: Tensor | None,
            fixed_delta: Tensor | None = None, input_value: Tensor | None = None) -> Tensor:
        """Logits with edges weighted by `mask` [n_dests, n_sources] (None: all kept).

        `corrupt` [batch|1, pos|1, n_sources, d_model] holds each source's corrupted value;
        `input_value` [batch, pos, d_model] replaces the input node (the residual entering block 0).
        """
        if mask is not None:
            if tuple(mask.shape) != (self.graph.n_dests, self.graph.n_sources):
                raise MechscopeError(f"Edge mask has shape {tuple(mask.shape)}; this graph needs "
                                     f"{(self.graph.n_dests, self.graph.n_sources)}.")
            if corrupt is None and fixed_delta is None:
                raise MechscopeError("Removing edges needs corrupted source values.")
        state = _Run(self, mask, corrupt, fixed_delta, record=False)
        return self._forward(state, ids, attention_mask, input_value)

    def can_resume(self, ids: Tensor) -> bool:
        """Whether runs can start at a later layer from a `Trace` (decoder layers return bare tensors)."""
        if not hasattr(self, "_resumable"):
            self._resumable = layers_return_tensors(self.model, TokenBatch(ids, ids.new_ones(ids.shape)))
        return self._resumable

    def trace(self, ids: Tensor, attention_mask: Tensor | None, mask: Tensor | None, corrupt: Tensor | None,
              start: int = 0, prefix: Trace | None = None) -> Trace:
        """A run that records everything; with `start > 0`, layers before `start` are taken from `prefix`.

        Only valid when the edges into layers before `start` are the same as in `prefix`'s run.
        """
        n_layers = self.cfg.n_layers
        if start and (prefix is None or not self.can_resume(ids)):
            start = 0
        state = _Run(self, mask, corrupt, None, record=True)
        if start:
            k = self.graph.layer_start(start) if start < n_layers else self.graph.n_sources
            state.add_source(0, prefix.sources[:, :, :k], record=False)
            state.resid["final"] = prefix.resid[n_layers]
        with torch.no_grad(), replay_prefix(self.model, start, prefix.resid[start] if start else None):
            logits = self._forward(state, ids, attention_mask, None, first=start)
        new = [state.resid[("pre", layer)] for layer in range(start, n_layers)] + [state.resid["final"]]
        sources = torch.cat(([prefix.sources[:, :, :k]] if start else []) + state.values, dim=2)
        return Trace(logits, sources, (prefix.resid[:start] if start else []) + new)

    # -- hooks ------------------------------------------------------------------------------------
    def _forward(self, state: _Run, ids: Tensor, attention_mask: Tensor | None, input_value: Tensor | None,
                 first: int = 0, logits: bool = True) -> Tensor:
        """The hooked run; `logits=False` stops it (`StopForward`) before the unembedding."""
        hooks: list[tuple[str, Callable]] = []
        g, n_layers = self.graph, self.cfg.n_layers
        for layer in range(first, n_layers):
            hooks.append((names.resid_pre(layer), self._resid_pre_hook(state, layer, input_value)))
            for i, which in enumerate(("q", "k", "v")):
                hooks.append((names.block(layer, f"attn.hook_{which}"), self._qkv_hook(state, layer, i)))
            hooks.append((names.block(layer, "attn.hook_result"), self._result_hook(state, layer)))
            if g.has_mlp:
                if not g.parallel:
                    hooks.append((names.block(layer, "hook_resid_mid"), self._keep(state, ("mid", layer))))
                hooks.append((names.block(layer, "ln2.hook_out"), self._mlp_in_hook(state, layer)))
                hooks.append((names.block(layer, "hook_mlp_out"), self._mlp_out_hook(state, layer)))
        if first < n_layers:
            hooks.append((names.resid_post(n_layers - 1), self._keep(state, "final")))
        hooks.append((names.LN_FINAL_OUT, self._final_hook(state)))
        if not logits:
            hooks.append((names.UNEMBED_IN, _stop))
        with self.model.hooks(hooks):
            return self.model(ids, attention_mask)

    def _keep(self, state: _Run, key: Any) -> Callable:
        def fn(act: Tensor, hook: Any) -> None:
            state.resid[key] = act
        return fn

    def _resid_pre_hook(self, state: _Run, layer: int, input_value: Tensor | None) -> Callable:
        def fn(act: Tensor, hook: Any) -> Tensor | None:
            new = None
            if layer == 0:
                if input_value is not None:
                    new = act = input_value.to(act.dtype)
                state.add_source(0, act[:, :, None])
            state.resid[("pre", layer)] = act
            corr = state.correction(self.graph.attn_dests(layer), self.graph.layer_start(layer))
            if corr is not None:
                h = self.cfg.n_heads
                x = act[:, :, None] - corr
                normed = self.ln1[layer].forward(x).view(*x.shape[:2], 3, h, -1)
                w, b = self.weights[layer], self.biases[layer]
                state.qkv[layer] = torch.einsum("bpihm,ihdm->bpihd", normed, w.to(normed.dtype)) + b
            return new
        return fn

    def _qkv_hook(self, state: _Run, layer: int, index: int) -> Callable:
        def fn(act: Tensor, hook: Any) -> Tensor | None:
            qkv = state.qkv.get(layer)
            return None if qkv is None else qkv[:, :, index].to(act.dtype)
        return fn

    def _result_hook(self, state: _Run, layer: int) -> Callable:
        def fn(act: Tensor, hook: Any) -> None:
            state.qkv.pop(layer, None)
            state.add_source(self.graph.layer_start(layer), self.head_values(layer, act))
        return fn

    def _mlp_in_hook(self, state: _Run, layer: int) -> Callable:
        def fn(act: Tensor, hook: Any) -> Tensor | None:
            dest = self.graph.mlp_dest(layer)
            corr = state.correction(slice(dest, dest + 1), self.graph.n_upstream(dest))
            if corr is None:
                return None
            resid = state.resid[("pre", layer) if self.graph.parallel else ("mid", layer)]
            return self.ln2[layer].forward(resid - corr[:, :, 0]).to(act.dtype)
        return fn

    def _mlp_out_hook(self, state: _Run, layer: int) -> Callable:
        def fn(act: Tensor, hook: Any) -> None:
            state.add_source(self.graph.mlp_source(layer), act[:, :, None])
        return fn

    def _final_hook(self, state: _Run) -> Callable:
        def fn(act: Tensor, hook: Any) -> Tensor | None:
            g = self.graph
            corr = state.correction(slice(g.logits_dest, g.logits_dest + 1), g.n_sources)
            if corr is None:
                return None
            final = self.model.final_norm
            return final.forward(state.resid["final"] - corr[:, :, 0]).to(act.dtype)
        return fn

