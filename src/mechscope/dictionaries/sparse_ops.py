"""Sparse kernels for dictionaries whose codes have few active latents per row (TopK, BatchTopK).

A sparse code is a list of `n` active entries `(rows[n], cols[n], vals[n])`: token `rows[n]`
uses latent `cols[n]` with activation `vals[n]`. With k=32 of 9216 latents the decoder forward
and the weight gradients only touch the active latents, which these functions exploit:

- `sparse_decode(pattern, vals, W_dec)` is `F @ W_dec` for the dense `F` the triplets
  describe (a CSR sparse-dense matmul); its backward computes `dvals` as a sampled dense-dense
  matmul (SDDMM) and `dW_dec = F^T @ grad` with the transposed pattern;
- `gather_preacts(...)` re-attaches autograd to pre-activations already computed without
  gradients, so the encoder weight gradient `S^T @ x` only involves the `n` active entries.

Rows must be sorted ascending (TopK and BatchTopK produce them so); the transposed pattern is
built once per batch by a stable sort of the columns and shared by all the backward products.

Example:
    >>> import torch
    >>> W = torch.eye(3)
    >>> p = SparsePattern.build(torch.tensor([0, 1]), torch.tensor([2, 0]), batch=2, d_sae=3)
    >>> sparse_decode(p, torch.tensor([2.0, 3.0]), W)
    tensor([[0., 0., 2.],
            [3., 0., 0.]])
"""

from __future__ import annotations

import warnings
from typing import Any, NamedTuple

import torch
from torch import Tensor


class SparsePattern(NamedTuple):
    """Positions of the active entries of a `[batch, d_sae]` code, in CSR form and transposed.

    `rows, cols [n]` (rows sorted ascending); `crow [batch+1]`; `perm_t [n]` orders the entries
    by column (stable); `crow_t [d_sae+1]`.

    Example:
        >>> p = SparsePattern.build(torch.tensor([0, 0, 1]), torch.tensor([2, 0, 2]), batch=2, d_sae=3)
        >>> p.crow.tolist(), p.crow_t.tolist()
        ([0, 2, 3], [0, 1, 1, 3])
        >>> p.matmul(torch.tensor([1.0, 2.0, 3.0]), torch.eye(3)).tolist()
        [[2.0, 0.0, 1.0], [0.0, 0.0, 3.0]]
    """

    rows: Tensor
    cols: Tensor
    batch: int
    d_sae: int
    crow: Tensor
    perm_t: Tensor
    crow_t: Tensor

    @classmethod
    def build(cls, rows: Tensor, cols: Tensor, batch: int, d_sae: int) -> SparsePattern:
        """Pattern of the entries `(rows[n], cols[n])`; `rows` must be sorted ascending."""
        crow = torch.zeros(batch + 1, dtype=torch.int64, device=rows.device)
        crow[1:] = torch.cumsum(torch.bincount(rows, minlength=batch), 0)
        perm_t = torch.argsort(cols, stable=True)
        crow_t = torch.zeros(d_sae + 1, dtype=torch.int64, device=rows.device)
        crow_t[1:] = torch.cumsum(torch.bincount(cols, minlength=d_sae), 0)
        return cls(rows, cols, batch, d_sae, crow, perm_t, crow_t)

    def csr(self, values: Tensor) -> Tensor:
        """The `[batch, d_sae]` sparse matrix with `values[n]` at `(rows[n], cols[n])`."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "sparse CSR support is in beta"
            return torch.sparse_csr_tensor(self.crow, self.cols, values, (self.batch, self.d_sae))

    def csr_t(self, values: Tensor) -> Tensor:
        """Its transpose, `[d_sae, batch]`."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.sparse_csr_tensor(self.crow_t, self.rows[self.perm_t], values[self.perm_t],
                                           (self.d_sae, self.batch))

    def matmul(self, values: Tensor, dense: Tensor) -> Tensor:
        """`S @ dense`: `[batch, d_sae] x [d_sae, d] -> [batch, d]`."""
        return torch.sparse.mm(self.csr(values), dense)

    def t_matmul(self, values: Tensor, dense: Tensor) -> Tensor:
        """`S^T @ dense`: `[d_sae, batch] x [batch, d] -> [d_sae, d]`."""
        return torch.sparse.mm(self.csr_t(values), dense)

    def sampled_dot(self, a: Tensor, b: Tensor) -> Tensor:
        """`out[n] = a[rows[n]] . b[cols[n]]` for `a [batch, d]`, `b [d_sae, d]` (SDDMM)."""
        ones = self.csr(torch.ones(self.rows.numel(), dtype=a.dtype, device=a.device))
        return torch.sparse.sampled_addmm(ones, a, b.t(), beta=0.0).values()


class _SparseDecode(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, vals: Tensor, W_dec: Tensor, pattern: SparsePattern) -> Tensor:
        ctx.save_for_backward(vals, W_dec)
        ctx.pattern = pattern
        return pattern.matmul(vals, W_dec)

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Any, ...]:
        vals, W_dec = ctx.saved_tensors
        p: SparsePattern = ctx.pattern
        grad_out = grad_out.contiguous()
        grad_vals = p.sampled_dot(grad_out, W_dec) if ctx.needs_input_grad[0] else None
        grad_W = p.t_matmul(vals, grad_out) if ctx.needs_input_grad[1] else None
        return grad_vals, grad_W, None


def sparse_decode(pattern: SparsePattern, vals: Tensor, W_dec: Tensor) -> Tensor:
    """Decode a sparse code without its bias: `vals [n]`, `W_dec [d_sae, d_out]` -> `[batch, d_out]`.

    Gradients flow to `vals` and to the used rows of `W_dec` only.

    Example:
        >>> p = SparsePattern.build(torch.tensor([0, 1]), torch.tensor([1, 0]), batch=2, d_sae=3)
        >>> W_dec = torch.arange(6.0).reshape(3, 2).requires_grad_()
        >>> out = sparse_decode(p, torch.tensor([1.0, 2.0]), W_dec)
        >>> out.tolist()                                         # 1 * W_dec[1], 2 * W_dec[0]
        [[2.0, 3.0], [0.0, 2.0]]
        >>> out.sum().backward(); W_dec.grad[2].tolist()         # the unused row gets no gradient
        [0.0, 0.0]
    """
    return _SparseDecode.apply(vals, W_dec, pattern)


class _GatherPreacts(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any, x: Tensor, b_dec: Tensor, W_enc: Tensor, b_enc: Tensor, values: Tensor,
        pattern: SparsePattern, subtract_b_dec: bool,
    ) -> Tensor:
        ctx.save_for_backward(x, b_dec, W_enc)
        ctx.pattern = pattern
        ctx.subtract_b_dec = subtract_b_dec
        return values.clone()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Any, ...]:
        x, b_dec, W_enc = ctx.saved_tensors
        p: SparsePattern = ctx.pattern
        grad_b_enc = grad.new_zeros(p.d_sae).index_add_(0, p.cols, grad)
        grad_W = grad_b_dec = grad_x = None
        if ctx.needs_input_grad[2]:
            x_c = x - b_dec if ctx.subtract_b_dec else x
            grad_W = p.t_matmul(grad, x_c).t().contiguous()
        if ctx.subtract_b_dec and ctx.needs_input_grad[1]:
            grad_b_dec = -(W_enc @ grad_b_enc)
        if ctx.needs_input_grad[0]:
            grad_x = p.matmul(grad, W_enc.t().contiguous())
        return grad_x, grad_b_dec, grad_W, grad_b_enc, None, None, None


def gather_preacts(
    x: Tensor, b_dec: Tensor, W_enc: Tensor, b_enc: Tensor, values: Tensor, pattern: SparsePattern,
    subtract_b_dec: bool = True,
) -> Tensor:
    """The pre-activations `((x - b_dec) @ W_enc + b_enc)[rows, cols]`, given their `values`.

    `values` were computed densely without gradients (to choose the active entries); this
    returns them with a backward pass that costs `O(n * d_in)` instead of a dense matmul.
    Shapes: x `[batch, d_in]`, W_enc `[d_in, d_sae]`, values `[n]`.

    Example:
        >>> x, W_enc = torch.randn(2, 4), torch.randn(4, 3, requires_grad=True)
        >>> b_dec, b_enc = torch.zeros(4), torch.zeros(3, requires_grad=True)
        >>> p = SparsePattern.build(torch.tensor([0, 1]), torch.tensor([2, 0]), batch=2, d_sae=3)
        >>> values = (x @ W_enc).detach()[p.rows, p.cols]
        >>> pre = gather_preacts(x, b_dec, W_enc, b_enc, values, p)
        >>> torch.equal(pre, values)
        True
        >>> pre.sum().backward(); b_enc.grad.tolist()            # one entry each in latents 0 and 2
        [1.0, 0.0, 1.0]
    """
    return _GatherPreacts.apply(x, b_dec, W_enc, b_enc, values, pattern, subtract_b_dec)
