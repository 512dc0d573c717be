"""ReLU sparse autoencoder trained with an L1 penalty (Bricken et al. 2023; Anthropic April 2024 update).

`f = ReLU((x - b_dec) @ W_enc + b_enc)`, `x_hat = f @ W_dec + b_dec`. Two ways to stop the L1
penalty from being dodged by shrinking `f` and growing `W_dec`, chosen by `decoder_norm`:

- `"unit"`: decoder rows are kept at unit norm (gradient projected onto the sphere, rows
  renormalised after each step); sparsity = `sum_i f_i`.
- `"weighted"`: decoder rows are free; sparsity = `sum_i f_i * ||W_dec[i]||`.

Loss = `mse + l1_coefficient * sparsity_scale * mean_batch(sparsity)`.

Example:
    >>> import torch
    >>> sae = ReluSAE(ReluSAEConfig(d_in=8, d_sae=32, l1_coefficient=1.0), seed=0)
    >>> sorted(sae(torch.randn(4, 8)).losses)
    ['l1', 'mse']
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from mechscope.dictionaries.base import Dictionary, DictionaryConfig, DictionaryOutput, register
from mechscope.dictionaries.errors import DictionaryConfigError


class ReluL1Function(torch.autograd.Function):
    """`ReLU(pre)` in place; its backward also adds the L1 gradient `l1_grad [d_sae]` before masking.

    `grad_pre = (grad_acts + l1_grad) * [pre > 0]`, computed in place on the incoming gradient, so
    the penalty costs no extra `[batch, d_sae]` buffer. The caller adds the penalty's value with
    the activations detached.

    Example:
        >>> pre = torch.tensor([[1.0, -2.0]], requires_grad=True)
        >>> acts = ReluL1Function.apply(pre.clone(), torch.tensor([0.5, 0.5]))
        >>> acts.sum().backward()
        >>> acts.tolist(), pre.grad.tolist()                # (1 + 0.5) where active, 0 elsewhere
        ([[1.0, 0.0]], [[1.5, 0.0]])
    """

    @staticmethod
    def forward(ctx: Any, pre: Tensor, l1_grad: Tensor) -> Tensor:
        acts = pre.relu_()
        ctx.mark_dirty(pre)
        ctx.save_for_backward(acts, l1_grad)
        return acts

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Any, ...]:
        acts, l1_grad = ctx.saved_tensors
        grad = grad.contiguous() if grad.is_contiguous() else grad.clone(memory_format=torch.contiguous_format)
        grad.add_(l1_grad)
        return torch.ops.aten.threshold_backward.grad_input(grad, acts, 0.0, grad_input=grad), None


@dataclass
class ReluSAEConfig(DictionaryConfig):
    """`l1_coefficient` (>= 0) and `decoder_norm` (`"unit"` or `"weighted"`), see the module docstring.

    Example:
        >>> cfg = ReluSAEConfig(d_in=4, d_sae=16, l1_coefficient=2.0)
        >>> cfg.architecture, cfg.decoder_norm, cfg.sparsity_coefficient
        ('relu', 'weighted', 'l1_coefficient')
    """

    l1_coefficient: float = 1.0
    decoder_norm: str = "weighted"

    architecture = "relu"
    decoder_norms = ("unit", "weighted")
    sparsity_coefficient = "l1_coefficient"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.l1_coefficient >= 0:
            raise DictionaryConfigError(f"l1_coefficient must be >= 0, got {self.l1_coefficient!r}")


@register
class ReluSAE(Dictionary):
    """ReLU + L1 sparse autoencoder (or transcoder when `d_out != d_in`).

    Example:
        >>> sae = ReluSAE(ReluSAEConfig(d_in=4, d_sae=16), seed=0)
        >>> out = sae(torch.randn(3, 4))
        >>> sorted(out.losses), bool((out.feature_acts >= 0).all())
        (['l1', 'mse'], True)
    """

    config_class = ReluSAEConfig
    cfg: ReluSAEConfig

    def _encode_n(self, x_n: Tensor) -> Tensor:
        return self._preact(x_n, self.b_enc).relu_()  # in place: addmm does not keep its output

    def _forward_n(self, x_n: Tensor, target_n: Tensor, sparsity_scale: float, dead_mask: Tensor | None) -> DictionaryOutput:
        coef = self.cfg.l1_coefficient * sparsity_scale / x_n.shape[0]
        weights = self.W_dec.norm(dim=1) if self.cfg.decoder_norm == "weighted" else None
        l1_grad = (weights.detach() * coef) if weights is not None else self.b_enc.new_full((self.cfg.d_sae,), coef)
        acts = ReluL1Function.apply(self._preact(x_n, self.b_enc), l1_grad)
        recon = torch.addmm(self.b_dec, acts, self.W_dec)
        with torch.no_grad():
            per_latent = acts.sum(0)
        fired = per_latent > 0
        # value of coef * sum_b sum_i f_bi * w_i; its gradient in f comes from ReluL1Function, in W_dec from here
        l1 = coef * (per_latent @ weights if weights is not None else per_latent.sum())
        return self._dense_output(recon, target_n, acts, {"l1": l1}, fired)
