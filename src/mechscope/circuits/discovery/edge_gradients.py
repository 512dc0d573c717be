"""Every edge's gradient from one plain forward and one backward (the fast path of EAP and EAP-IG).

With every edge weight at one (the full circuit), `d metric / d mask[d, s] = sum g_d . delta_s`
over positions, where `g_d` is the gradient of the metric with respect to destination `d`'s own
input (the residual stream before its norm) and `delta_s = value_s - corrupt_s`. All
destinations of a layer read the same residual, so the model runs as it is (no copy of the
residual per destination) and `g_d` is read off the backward pass:

- a head's q, k or v input: the gradient at that head's q, k or v, sent back through that
  head's rows of the projection and the layer's norm (one vector-Jacobian product of the norm,
  in closed form for LayerNorm and RMSNorm, batched over the layer's `3 * n_heads` destinations);
- an MLP's input: the gradient at the MLP norm's input (`hook_mlp_in`: the MLP branch alone);
- the logits: the gradient at the final norm's input (the last block's output).

Then `scores[layer's destinations, upstream sources] = g^T delta`, one matmul per layer, with
the source differences kept detached as `[n_sources, batch * pos * d_model]` (`contract`; with a
fixed delta, as in EAP-IG, the steps' gradients are added first and contracted once). The numbers are
those of `eap.mask_gradient` at weight one (the reference formulation, which reruns every
destination on its own rebuilt input).

Example:
    >>> from mechscope import HookedModel
    >>> from mechscope.circuits.discovery.graph_run import GraphModel
    >>> from mechscope.circuits.discovery.induction import induction_pairs
    >>> from mechscope.toys.attn_only import AttnOnlyConfig, AttnOnlyForCausalLM
    >>> toy = AttnOnlyForCausalLM(AttnOnlyConfig(vocab_size=21, hidden_size=16, num_attention_heads=2))
    >>> gm, pairs = GraphModel(HookedModel(toy, name="toy")), induction_pairs(n=4, span=6, n_tokens=20)
    >>> grad = edge_gradient(gm, pairs, gm.sources(pairs.corrupt))
    >>> grad.shape
    torch.Size([13, 5])
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from mechscope.circuits.discovery.component_graph import ComponentGraph
from mechscope.circuits.discovery.graph_run import GraphModel
from mechscope.circuits.discovery.tasks import Pairs
from mechscope.core import names
from mechscope.core.errors import MechscopeError
from mechscope.core.norms import NormSpec, norm_spec


def flat_sources(values: Tensor) -> Tensor:
    """Source values `[batch, pos, n_sources, d_model]` as `[n_sources, batch * pos * d_model]`.

    Example:
        >>> flat_sources(torch.zeros(2, 3, 5, 4)).shape
        torch.Size([5, 24])
    """
    return values.permute(2, 0, 1, 3).reshape(values.shape[2], -1)


def norm_vjp(norm: nn.Module, x: Tensor, cotangents: Tensor) -> Tensor:
    """`J^T c` of `norm` at `x` [batch, pos, d] for every cotangent `c` in `cotangents` [n, batch, pos, d],
    by autograd (any norm module; `norm_vjp_closed` is the fast form for LayerNorm and RMSNorm).

    Example:
        >>> ln = nn.LayerNorm(4)
        >>> x, c = torch.randn(2, 3, 4), torch.randn(5, 2, 3, 4)
        >>> xr = x.clone().requires_grad_(True)
        >>> (one,) = torch.autograd.grad(ln(xr), xr, c[1])
        >>> torch.allclose(norm_vjp(ln, x, c)[1], one)
        True
    """
    with torch.enable_grad():
        xr = x.detach().requires_grad_(True)
        y = norm(xr)
        (out,) = torch.autograd.grad(y, xr, cotangents.to(y.dtype), is_grads_batched=True)
    return out


def norm_vjp_closed(spec: NormSpec, weight: Tensor, x: Tensor, cotangents: Tensor,
                    out: Tensor | None = None) -> Tensor:
    """`norm_vjp` in closed form for a LayerNorm or RMSNorm described by `spec` with `weight` [d]:
    with `r = 1 / scale`, `xh` the normalized input and `c' = c (weight + offset)`,
    `J^T c = r (c' - xh mean(c' xh))`, minus `r mean(c')` for LayerNorm (a few passes over `c`).
    `out` (which may be `cotangents` itself) receives the result.

    Example:
        >>> ln = nn.LayerNorm(4)
        >>> x, c = torch.randn(2, 3, 4), torch.randn(5, 2, 3, 4)
        >>> fast = norm_vjp_closed(norm_spec(ln), ln.weight.detach(), x, c)
        >>> torch.allclose(fast, norm_vjp(ln, x, c), atol=1e-6)
        True
    """
    dtype = torch.promote_types(x.dtype, torch.float32)  # HF norms compute in float32 at least
    x, c = x.to(dtype), cotangents.to(dtype)
    w = weight.detach().to(dtype) + spec.weight_offset
    if spec.kind == "layer":
        x = x - x.mean(-1, keepdim=True)
    r = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + spec.eps)  # [b, p, 1]
    xh = x * r
    d = x.shape[-1]
    dot = torch.linalg.vecdot(c, xh * (w / d)).unsqueeze(-1)  # mean(c' xh): [n, b, p, 1]
    shift = (c @ w).unsqueeze(-1) * (r / d) if spec.kind == "layer" else None  # r mean(c')
    inplace = out is not None and out.dtype == dtype
    result = torch.mul(c, w * r, out=out if inplace else None).addcmul_(dot, xh * r, value=-1)
    if shift is not None:
        result -= shift
    if out is None:
        return result.to(cotangents.dtype)
    return result if inplace else out.copy_(result)


class _Recorder:
    """Forward hooks of one run: the layers' residuals, the tensors whose gradients are the
    destinations' (q/k/v, MLP inputs, final norm input), and, when asked, the source values
    (written into `values` [n_sources, batch, pos, d_model]).

    With `shrink = 1 - weight > 0` every edge is weighted `weight`: each destination reads the
    residual minus `shrink` times the sum of its upstream sources' `value - corrupt` (kept in the
    graph, as `GraphModel.run` does), the layer's attention norm its own rebuilt input."""

    def __init__(self, gm: GraphModel, input_value: Tensor | None, record: bool, shrink: float = 0.0,
                 corrupt: Tensor | None = None) -> None:
        self.gm, self.input_value, self.record = gm, input_value, record
        self.shrink, self.corrupt = shrink, corrupt
        self.resid: dict[int, Tensor] = {}
        self.nodes: dict[Any, Tensor] = {}
        self.values: Tensor | None = None
        self.delta_sum: Tensor | None = None  # sum of value - corrupt over the sources so far (shrink > 0)
        self.delta_at_layer: dict[int, Tensor] = {}  # delta_sum entering each layer
        self.attn_inputs: dict[int, Tensor] = {}  # each layer's rebuilt attention input

    def hooks(self) -> list[tuple[str, Callable]]:
        g = self.gm.graph
        out: list[tuple[str, Callable]] = []
        for layer in range(g.n_layers):
            out.append((names.resid_pre(layer), self._resid_pre(layer)))
            if self.shrink:
                out.append((names.block(layer, "ln1.hook_out"), self._attn_input(layer)))
            for which in ("q", "k", "v"):
                out.append((names.block(layer, f"attn.hook_{which}"), self._node((which, layer))))
            if self.record:
                out.append((names.block(layer, "attn.hook_result"), self._result(layer)))
            if g.has_mlp:
                out.append((names.block(layer, "hook_mlp_in"), self._node(("mlp", layer), layer)))
                if self.record:
                    out.append((names.block(layer, "hook_mlp_out"), self._mlp_value(layer)))
        out.append((names.resid_post(g.n_layers - 1), self._node("final", "final")))
        return out

    def _add(self, first: int, value: Tensor) -> None:
        """Record sources `first..` ([batch, pos, n, d_model], in the graph) and, with shrink, sum their deltas."""
        if self.record:
            self.values[first:first + value.shape[2]] = value.detach().permute(2, 0, 1, 3)
        if self.shrink:
            delta = (value - self.corrupt[:, :, first:first + value.shape[2]]).sum(2)
            self.delta_sum = delta if self.delta_sum is None else self.delta_sum + delta

    def _resid_pre(self, layer: int) -> Callable:
        def fn(act: Tensor, hook: Any) -> Tensor | None:
            new = None
            if layer == 0:
                start = act if self.input_value is None else self.input_value.to(act.device, act.dtype)
                new = act = start.detach().requires_grad_(True)  # the graph starts here: no weight gradients
                if self.record:
                    self.values = act.new_empty(self.gm.graph.n_sources, *act.shape)
                self._add(0, act[:, :, None])
            if self.shrink:  # the layer's heads read every source before them
                self.delta_at_layer[layer] = self.delta_sum
                act = self.attn_inputs[layer] = act - self.shrink * self.delta_sum
            self.resid[layer] = act.detach()
            return new
        return fn

    def _attn_input(self, layer: int) -> Callable:
        def fn(act: Tensor, hook: Any) -> Tensor:
            return self.gm.ln1[layer].forward(self.attn_inputs.pop(layer)).to(act.dtype)
        return fn

    def _node(self, key: Any, reads: Any = None) -> Callable:
        """The tensor at this hook, as a node of its own (its gradient is this branch's alone); with
        shrink, the MLP (`reads` its layer) and the logits (`reads` "final") read their rebuilt inputs."""
        def fn(act: Tensor, hook: Any) -> Tensor:
            if self.shrink and reads is not None:  # parallel MLPs do not read their own layer's heads
                parallel = reads != "final" and self.gm.graph.parallel
                new = act - self.shrink * (self.delta_at_layer[reads] if parallel else self.delta_sum)
            else:
                new = act.clone()
            self.nodes[key] = new
            return new
        return fn

    def _result(self, layer: int) -> Callable:
        def fn(act: Tensor, hook: Any) -> None:
            start = self.gm.graph.layer_start(layer)
            if self.shrink:
                self._add(start, self.gm.head_values(layer, act))
                return
            with torch.no_grad():  # norm weights may require grad (Gemma 2/3's post-attention norm)
                self._add(start, self.gm.head_values(layer, act.detach()))
        return fn

    def _mlp_value(self, layer: int) -> Callable:
        def fn(act: Tensor, hook: Any) -> None:
            self._add(self.gm.graph.mlp_source(layer), act[:, :, None])
        return fn


def edge_gradient(gm: GraphModel, part: Pairs, corrupt: Tensor | None, fixed_delta: Tensor | None = None,
                  input_value: Tensor | None = None, weight: float = 1.0) -> Tensor:
    """d (sum of the metric over `part`) / d edge weights at every weight `weight`: [n_dests, n_sources].

    `corrupt` [batch|1, pos|1, n_sources, d_model]: the corrupted sources (then `delta` is this
    run's sources minus them); or `fixed_delta` [n_sources, batch * pos * d_model] (see
    `flat_sources`) gives `delta` directly (at weight one only). `input_value` [batch, pos, d_model]
    replaces the input node.

    Example:
        >>> grad = edge_gradient(gm, pairs, Corruption(gm, pairs).values(slice(0, len(pairs))))   # doctest: +SKIP
        >>> grad.shape == (gm.graph.n_dests, gm.graph.n_sources)                                   # doctest: +SKIP
        True
    """
    if (corrupt is None) == (fixed_delta is None):
        raise MechscopeError("edge_gradient needs exactly one of `corrupt` and `fixed_delta`.")
    if weight != 1 and corrupt is None:
        raise MechscopeError(f"Edges weighted {weight} need the corrupted sources (`corrupt`), not a fixed delta.")
    grads, values = dest_gradients(gm, part, input_value, record=fixed_delta is None, weight=weight, corrupt=corrupt)
    if values is None:
        return contract(gm.graph, grads, fixed_delta)
    values -= corrupt.to(values.device, values.dtype).permute(2, 0, 1, 3)
    return contract(gm.graph, grads, values.view(values.shape[0], -1))


def dest_gradients(gm: GraphModel, part: Pairs, input_value: Tensor | None = None, record: bool = False,
                   weight: float = 1.0, corrupt: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
    """Every destination's input gradient `g_d` of (sum of the metric over `part`) in a plain run, as
    `[n_dests, batch * pos * d_model]`; with `record`, also the run's sources `[n_sources, batch, pos, d_model]`.
    With `weight` below one, every edge is weighted `weight` (a destination reads `weight` of each
    upstream source's `value - corrupt` on top of `corrupt`), which needs `corrupt`.

    Example:
        >>> grads, values = dest_gradients(gm, pairs, record=True)        # doctest: +SKIP
        >>> contract(gm.graph, grads, flat_sources(corrupt_delta))          # doctest: +SKIP
    """
    g, model = gm.graph, gm.model
    if weight != 1 and corrupt is None:
        raise MechscopeError(f"Edges weighted {weight} need the corrupted sources (`corrupt`).")
    shrink = 1.0 - float(weight)
    rec = _Recorder(gm, input_value, record, shrink, None if corrupt is None else corrupt.to(gm.model.device))
    with torch.enable_grad(), model.hooks(rec.hooks()):
        logits = model(part.clean, part.attention_mask)
        keys = list(rec.nodes)
        found = torch.autograd.grad(part.metric(logits).sum(), [rec.nodes[k] for k in keys],
                                    allow_unused=True, materialize_grads=True)
    grads = dict(zip(keys, found, strict=True))
    del logits, rec.nodes, found
    b, p, d_model = rec.resid[0].shape
    out = torch.empty(g.n_dests, b * p * d_model, device=rec.resid[0].device, dtype=rec.resid[0].dtype)
    for layer in range(g.n_layers):
        per_head = torch.stack([grads.pop((w, layer)) for w in ("q", "k", "v")], dim=2)  # [b, p, 3, H, d_head]
        h, d_head = per_head.shape[3:]
        rows = gm.weights[layer].view(3 * h, d_head, -1)  # each destination's rows of its projection
        into = out[g.attn_dests(layer)].view(3 * h, b, p, d_model)  # written in place
        torch.bmm(per_head.reshape(b * p, 3 * h, d_head).transpose(0, 1), rows.to(out.dtype),
                  out=into.view(3 * h, b * p, d_model))
        _ln1_vjp(gm, layer, rec.resid.pop(layer), into)
        if g.has_mlp:
            out[g.mlp_dest(layer)] = grads.pop(("mlp", layer)).reshape(-1)
    out[g.logits_dest] = grads.pop("final").reshape(-1)
    return out, rec.values


def contract(graph: ComponentGraph, grads: Tensor, delta: Tensor) -> Tensor:
    """`scores[d, s] = grads[d] . delta[s]` on every edge (zero elsewhere): grads [n_dests, k], delta [n_sources, k].

    One matmul per layer (its destinations against their upstream sources).

    Example:
        >>> g = ComponentGraph(n_layers=1, n_heads=1)
        >>> contract(g, torch.ones(g.n_dests, 2), torch.ones(g.n_sources, 2))
        tensor([[2., 0., 0.],
                [2., 0., 0.],
                [2., 0., 0.],
                [2., 2., 0.],
                [2., 2., 2.]])
    """
    grads = grads.to(delta.dtype)
    out = torch.zeros(graph.n_dests, graph.n_sources, device=delta.device, dtype=delta.dtype)
    for layer in range(graph.n_layers):
        dests = graph.attn_dests(layer)
        n_up = graph.layer_start(layer)
        out[dests, :n_up] = grads[dests] @ delta[:n_up].T
        if graph.has_mlp:
            dest = graph.mlp_dest(layer)
            up = graph.n_upstream(dest)
            out[dest, :up] = delta[:up] @ grads[dest]
    out[graph.logits_dest] = delta @ grads[graph.logits_dest]
    return out


def _ln1_vjp(gm: GraphModel, layer: int, x: Tensor, cotangents: Tensor) -> None:
    """`cotangents` replaced in place by `norm_vjp` of layer `layer`'s attention norm (closed form where
    it is a LayerNorm or RMSNorm)."""
    norm = gm.ln1[layer]
    spec = norm_spec(norm, gm.model.family.norm_offset)
    if spec is None:
        cotangents.copy_(norm_vjp(norm, x, cotangents))
    else:
        norm_vjp_closed(spec, norm.weight, x, cotangents, out=cotangents)
