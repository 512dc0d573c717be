"""Sparse kernels for dictionaries whose codes have few active latents per row (TopK, BatchTopK).

A sparse code is a list of `n` active entries `(rows[n], cols[n], vals[n])`: token `rows[n]`
uses latent `cols[n]` with activation `vals[n]`. With k=32 of 9216 latents the decoder forward
and the weight gradients only touch the active latents, which these functions exploit:

- `sparse_decode(rows, cols, vals, W_dec, batch)` is `F @ W_dec` for the dense `F` the triplets
  describe, computed as a sum of `n` decoder rows;
- `gather_preacts(...)` re-attaches autograd to pre-activations already computed without
  gradients, so the encoder weight gradient is a sum over the `n` active entries only.

Example:
    >>> import torch
    >>> W = torch.eye(3)
    >>> rows, cols, vals = torch.tensor([0, 1]), torch.tensor([2, 0]), torch.tensor([2.0, 3.0])
    >>> sparse_decode(rows, cols, vals, W, 2)
    tensor([[0., 0., 2.],
            [3., 0., 0.]])
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

CHUNK = 16384  # active entries handled at once; bounds the [chunk, d] temporaries to a few MB


def scatter_outer(index_out: Tensor, index_in: Tensor, weights: Tensor, dense: Tensor, n_out: int) -> Tensor:
    """`out[index_out[n]] += weights[n] * dense[index_in[n]]`, i.e. `S @ dense` for a sparse `S`.

    Shapes: index_out, index_in, weights `[n]`; dense `[m, d]`; returns `[n_out, d]`.

    Example:
        >>> scatter_outer(torch.tensor([1]), torch.tensor([0]), torch.tensor([2.0]), torch.ones(1, 2), 2)
        tensor([[0., 0.],
                [2., 2.]])
    """
    out = dense.new_zeros(n_out, dense.shape[1])
    for start in range(0, index_out.numel(), CHUNK):
        sl = slice(start, start + CHUNK)
        out.index_add_(0, index_out[sl], dense.index_select(0, index_in[sl]) * weights[sl, None])
    return out


def sampled_dot(rows: Tensor, cols: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """`out[n] = a[rows[n]] . b[cols[n]]`: the entries of `a @ b.T` at the given positions.

    Shapes: rows, cols `[n]`; a `[batch, d]`; b `[d_sae, d]`; returns `[n]`.

    Example:
        >>> sampled_dot(torch.tensor([0]), torch.tensor([1]), torch.ones(1, 2), torch.eye(2))
        tensor([1.])
    """
    out = a.new_empty(rows.numel())
    for start in range(0, rows.numel(), CHUNK):
        sl = slice(start, start + CHUNK)
        out[sl] = (a.index_select(0, rows[sl]) * b.index_select(0, cols[sl])).sum(-1)
    return out


class _SparseDecode(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, rows: Tensor, cols: Tensor, vals: Tensor, W_dec: Tensor, batch: int) -> Tensor:
        ctx.save_for_backward(rows, cols, vals, W_dec)
        return scatter_outer(rows, cols, vals, W_dec, batch)

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Any, ...]:
        rows, cols, vals, W_dec = ctx.saved_tensors
        grad_vals = sampled_dot(rows, cols, grad_out, W_dec) if ctx.needs_input_grad[2] else None
        grad_W = scatter_outer(cols, rows, vals, grad_out, W_dec.shape[0]) if ctx.needs_input_grad[3] else None
        return None, None, grad_vals, grad_W, None


def sparse_decode(rows: Tensor, cols: Tensor, vals: Tensor, W_dec: Tensor, batch: int) -> Tensor:
    """Decode a sparse code without its bias: `[n]` triplets, `W_dec [d_sae, d_out]` -> `[batch, d_out]`.

    Gradients flow to `vals` and to the `n` used rows of `W_dec` only.
    """
    return _SparseDecode.apply(rows, cols, vals, W_dec, batch)


class _GatherPreacts(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any, x: Tensor, b_dec: Tensor, W_enc: Tensor, b_enc: Tensor, rows: Tensor, cols: Tensor,
        values: Tensor, subtract_b_dec: bool,
    ) -> Tensor:
        ctx.save_for_backward(x, b_dec, W_enc, rows, cols)
        ctx.subtract_b_dec = subtract_b_dec
        return values.clone()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Any, ...]:
        x, b_dec, W_enc, rows, cols = ctx.saved_tensors
        d_sae = W_enc.shape[1]
        grad_b_enc = grad.new_zeros(d_sae).index_add_(0, cols, grad)
        grad_W = grad_b_dec = grad_x = None
        if ctx.needs_input_grad[2]:
            x_c = x - b_dec if ctx.subtract_b_dec else x
            grad_W = scatter_outer(cols, rows, grad, x_c, d_sae).t().contiguous()
        if ctx.subtract_b_dec and ctx.needs_input_grad[1]:
            grad_b_dec = -(W_enc @ grad_b_enc)
        if ctx.needs_input_grad[0]:
            grad_x = scatter_outer(rows, cols, grad, W_enc.t().contiguous(), x.shape[0])
        return grad_x, grad_b_dec, grad_W, grad_b_enc, None, None, None, None


def gather_preacts(
    x: Tensor, b_dec: Tensor, W_enc: Tensor, b_enc: Tensor, rows: Tensor, cols: Tensor, values: Tensor,
    subtract_b_dec: bool = True,
) -> Tensor:
    """The pre-activations `((x - b_dec) @ W_enc + b_enc)[rows, cols]`, given their `values`.

    `values` were computed densely without gradients (to choose the active entries); this
    returns them with a backward pass that costs `O(n * d_in)` instead of a dense matmul.
    Shapes: x `[batch, d_in]`, W_enc `[d_in, d_sae]`, rows/cols/values `[n]`.
    """
    return _GatherPreacts.apply(x, b_dec, W_enc, b_enc, rows, cols, values, subtract_b_dec)
