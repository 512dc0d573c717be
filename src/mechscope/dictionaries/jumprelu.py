"""JumpReLU sparse autoencoder with an L0 penalty (Rajamanoharan et al. 2024).

`pre = (x - b_dec) @ W_enc + b_enc`, `f = pre * H(pre - theta)` with a learned per-latent
threshold `theta = exp(log_threshold)`, `x_hat = f @ W_dec + b_dec`.
Loss = `mse + l0_coefficient * sparsity_scale * mean_b sum_i H(pre_i - theta_i)`.

The step function `H` has no useful gradient; both `JumpReLUFunction` and `StepFunction`
give `theta` a straight-through pseudo-gradient with kernel
`K(u) = 1 if |u| < 1/2 else 0` and bandwidth `eps`:
`d f / d theta = -(theta / eps) K((pre - theta) / eps)` and `d H / d theta = -(1 / eps) K((pre - theta) / eps)`.
`pre` gets the ordinary gradient `H(pre - theta)` through `f` and none through `H`.

Example:
    >>> import torch
    >>> sae = JumpReLUSAE(JumpReLUSAEConfig(d_in=8, d_sae=32), seed=0)
    >>> sorted(sae(torch.randn(4, 8)).losses)
    ['l0', 'mse']
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from mechscope.dictionaries.base import Dictionary, DictionaryConfig, DictionaryOutput, register
from mechscope.dictionaries.errors import DictionaryConfigError


def _kernel(pre: Tensor, theta: Tensor, bandwidth: float) -> Tensor:
    return (((pre - theta) / bandwidth).abs() < 0.5).to(pre.dtype)


class JumpReLUFunction(torch.autograd.Function):
    """`pre * H(pre - theta)` with the straight-through threshold gradient. Shapes `[batch, d_sae]`, `[d_sae]`.

    Example:
        >>> JumpReLUFunction.apply(torch.tensor([[0.2, 0.8]]), torch.tensor([0.5, 0.5]), 0.05).tolist()
        [[0.0, 0.8...]]
    """

    @staticmethod
    def forward(ctx: Any, pre: Tensor, theta: Tensor, bandwidth: float) -> Tensor:
        ctx.save_for_backward(pre, theta)
        ctx.bandwidth = bandwidth
        return pre * (pre > theta)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Any, ...]:
        pre, theta = ctx.saved_tensors
        grad_pre = grad * (pre > theta)
        grad_theta = -(theta / ctx.bandwidth) * (_kernel(pre, theta, ctx.bandwidth) * grad).sum(0)
        return grad_pre, grad_theta, None


class StepFunction(torch.autograd.Function):
    """`H(pre - theta)` with the straight-through threshold gradient; no gradient to `pre`.

    Example:
        >>> theta = torch.tensor([0.5, 0.5], requires_grad=True)
        >>> step = StepFunction.apply(torch.tensor([[0.51, 0.9]]), theta, 0.05)
        >>> step.sum().backward()
        >>> step.tolist(), theta.grad.tolist()          # only the pre-activation within the band moves theta
        ([[1.0, 1.0]], [-20.0, -0.0])
    """

    @staticmethod
    def forward(ctx: Any, pre: Tensor, theta: Tensor, bandwidth: float) -> Tensor:
        ctx.save_for_backward(pre, theta)
        ctx.bandwidth = bandwidth
        return (pre > theta).to(pre.dtype)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Any, ...]:
        pre, theta = ctx.saved_tensors
        grad_theta = -(1.0 / ctx.bandwidth) * (_kernel(pre, theta, ctx.bandwidth) * grad).sum(0)
        return None, grad_theta, None


@dataclass
class JumpReLUSAEConfig(DictionaryConfig):
    """`l0_coefficient`, straight-through `bandwidth`, initial threshold `threshold_init` (normalised units).

    Example:
        >>> cfg = JumpReLUSAEConfig(d_in=4, d_sae=16, threshold_init=0.25)
        >>> cfg.architecture, cfg.sparsity_coefficient, cfg.bandwidth
        ('jumprelu', 'l0_coefficient', 0.05)
    """

    l0_coefficient: float = 1e-3
    bandwidth: float = 0.05
    threshold_init: float = 0.5

    architecture = "jumprelu"
    sparsity_coefficient = "l0_coefficient"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.l0_coefficient < 0 or self.bandwidth <= 0 or self.threshold_init <= 0:
            raise DictionaryConfigError("need l0_coefficient >= 0, bandwidth > 0 and threshold_init > 0")


@register
class JumpReLUSAE(Dictionary):
    """JumpReLU sparse autoencoder (or transcoder when `d_out != d_in`).

    Example:
        >>> sae = JumpReLUSAE(JumpReLUSAEConfig(d_in=4, d_sae=16, threshold_init=0.25), seed=0)
        >>> sae.threshold[:2].tolist()
        [0.25, 0.25]
        >>> out = sae(torch.randn(3, 4))
        >>> sorted(out.losses), bool(((out.feature_acts == 0) | (out.feature_acts > 0.25)).all())
        (['l0', 'mse'], True)
    """

    config_class = JumpReLUSAEConfig
    cfg: JumpReLUSAEConfig

    def _init_extra(self, gen: torch.Generator | None) -> None:
        init = torch.full((self.cfg.d_sae,), math.log(self.cfg.threshold_init), dtype=self.W_enc.dtype)
        self.log_threshold = nn.Parameter(init)

    @property
    def threshold(self) -> Tensor:
        """Per-latent threshold `exp(log_threshold)`, `[d_sae]`."""
        return self.log_threshold.exp()

    @torch.no_grad()
    def reset_latents(self, idx: Tensor, pre: Tensor) -> list[tuple[nn.Parameter, tuple[Any, ...]]]:
        """A resampled latent's threshold becomes half its largest pre-activation on the batch (when
        that is positive; otherwise the median threshold of the other latents).

        Its old threshold, trained for the old direction, usually lies above anything the new,
        smaller encoder column produces, so the latent would stay dead.
        """
        others = torch.ones_like(self.log_threshold, dtype=torch.bool)
        others[idx] = False
        median = self.threshold[others].median() if bool(others.any()) else self.threshold.new_tensor(self.cfg.threshold_init)
        top = pre.amax(0).to(median.dtype)
        self.log_threshold[idx] = torch.where(top > 0, 0.5 * top, median).log()
        return [(self.log_threshold, (idx,))]

    def _encode_n(self, x_n: Tensor) -> Tensor:
        pre = self._preact(x_n, self.b_enc)
        return pre * (pre > self.threshold)

    def _forward_n(self, x_n: Tensor, target_n: Tensor, sparsity_scale: float, dead_mask: Tensor | None) -> DictionaryOutput:
        pre = self._preact(x_n, self.b_enc)
        theta = self.threshold
        acts = JumpReLUFunction.apply(pre, theta, self.cfg.bandwidth)
        recon = torch.addmm(self.b_dec, acts, self.W_dec)
        l0 = StepFunction.apply(pre, theta, self.cfg.bandwidth).sum(-1).mean()
        return self._dense_output(recon, target_n, acts, {"l0": self.cfg.l0_coefficient * sparsity_scale * l0})
