"""JumpReLU sparse autoencoder with an L0 penalty (Rajamanoharan et al. 2024).

`pre = (x - b_dec) @ W_enc + b_enc`, `f = pre * H(pre - theta)` with a learned per-latent
threshold `theta = exp(log_threshold)`, `x_hat = f @ W_dec + b_dec`.
Loss = `mse + l0_coefficient * sparsity_scale * v * mean_b sum_i H(pre_i - theta_i)`, where
`v = mean_{b,j} (t_bj - b_dec_j)^2` (no gradient) is the squared error per output dimension of an
empty code on the batch. In normalised units `v` is about 1 for centred activations and smaller
when a constant offset carries much of their norm, so one coefficient means the same trade-off
(an active latent against `l0_coefficient` dimensions' worth of variance) on either.

The step function `H` has no useful gradient; both `JumpReLUFunction` and `StepFunction`
give `theta` a straight-through pseudo-gradient with kernel
`K(u) = 1 if |u| < 1/2 else 0` and bandwidth `eps`:
`d f / d theta = -(theta / eps) K((pre - theta) / eps)` and `d H / d theta = -(1 / eps) K((pre - theta) / eps)`.
`pre` gets the ordinary gradient `H(pre - theta)` through `f`; with `through_pre` it also gets the
jump's pseudo-gradient, the negative of `theta`'s (`+(theta / eps) K` through `f`, `+(1 / eps) K`
through `H`), as in Anthropic's JumpReLU training update (January 2025).

Training defaults (`JumpReLUSAEConfig`): the pre-activations get the jump's gradient
(`straight_through_pre=True`) and each latent's bandwidth is its own threshold
(`eps_i = relative_bandwidth * theta_i`, `relative_bandwidth=1.0`), so it follows the scale of
the pre-activations. Without the first, the encoder learns only from tokens on which a latent
already fires, and on dense data half the latents fall silent while the rest fire as mixtures
of features (docs/dictionaries.md). The forward pass, and so a loaded file, is the same either way.

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


def _kernel(pre: Tensor, theta: Tensor, bandwidth: float | Tensor) -> Tensor:
    return (((pre - theta) / bandwidth).abs() < 0.5).to(pre.dtype)


class JumpReLUFunction(torch.autograd.Function):
    """`pre * H(pre - theta)` with the straight-through threshold gradient. Shapes `[batch, d_sae]`, `[d_sae]`.

    Arguments: `pre`, `theta`, `bandwidth` (a number or one per latent, `[d_sae]`) and optionally
    `through_pre` (also give `pre` the jump's pseudo-gradient; default off).

    Example:
        >>> JumpReLUFunction.apply(torch.tensor([[0.2, 0.8]]), torch.tensor([0.5, 0.5]), 0.05).tolist()
        [[0.0, 0.8...]]
    """

    @staticmethod
    def forward(ctx: Any, pre: Tensor, theta: Tensor, bandwidth: float | Tensor, through_pre: bool = False) -> Tensor:
        ctx.save_for_backward(pre, theta)
        ctx.bandwidth, ctx.through_pre = bandwidth, through_pre
        return pre * (pre > theta)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Any, ...]:
        pre, theta = ctx.saved_tensors
        grad_pre = grad * (pre > theta)
        jump = (theta / ctx.bandwidth) * _kernel(pre, theta, ctx.bandwidth) * grad
        if ctx.through_pre:
            grad_pre = grad_pre + jump
        return grad_pre, -jump.sum(0), None, None


class StepFunction(torch.autograd.Function):
    """`H(pre - theta)` with the straight-through threshold gradient; `pre` gets none unless `through_pre`.

    Example:
        >>> theta = torch.tensor([0.5, 0.5], requires_grad=True)
        >>> pre = torch.tensor([[0.51, 0.9]], requires_grad=True)
        >>> step = StepFunction.apply(pre, theta, 0.05, True)
        >>> step.sum().backward()
        >>> step.tolist(), theta.grad.tolist(), pre.grad.tolist()  # only the entry within the band moves
        ([[1.0, 1.0]], [-20.0, -0.0], [[20.0, 0.0]])
    """

    @staticmethod
    def forward(ctx: Any, pre: Tensor, theta: Tensor, bandwidth: float | Tensor, through_pre: bool = False) -> Tensor:
        ctx.save_for_backward(pre, theta)
        ctx.bandwidth, ctx.through_pre = bandwidth, through_pre
        return (pre > theta).to(pre.dtype)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Any, ...]:
        pre, theta = ctx.saved_tensors
        jump = (1.0 / ctx.bandwidth) * _kernel(pre, theta, ctx.bandwidth) * grad
        return (jump if ctx.through_pre else None), -jump.sum(0), None, None


@dataclass
class JumpReLUSAEConfig(DictionaryConfig):
    """`l0_coefficient`, initial threshold `threshold_init` (normalised units) and the straight-through estimator.

    The estimator's bandwidth is `relative_bandwidth * theta_i` per latent, or the fixed number
    `bandwidth` when that is set (normalised units; files written before the relative default
    carry `bandwidth` 0.05 and keep it). `straight_through_pre` also gives the pre-activations the
    jump's pseudo-gradient. None of these change the forward pass.

    Chosen on the synthetic family (docs/dictionaries.md): `l0_coefficient` is in units of the
    batch's variance per dimension (module docstring), where the L0 controller ends between 0.6
    and 1.8 on the family, so it starts at 1.0 instead of climbing from 1e-3 (it overshot by a
    factor 10,000 and left latents dead); with the pre-activation gradient and a bandwidth equal to
    the threshold, dense-l16 recovers 0.95 of its features instead of 0.09. A coefficient saved
    before this unit was an absolute one; it only matters when training resumes.

    Example:
        >>> cfg = JumpReLUSAEConfig(d_in=4, d_sae=16, threshold_init=0.25)
        >>> cfg.architecture, cfg.sparsity_coefficient, cfg.relative_bandwidth, cfg.bandwidth, cfg.straight_through_pre
        ('jumprelu', 'l0_coefficient', 1.0, None, True)
        >>> JumpReLUSAEConfig(d_in=4, d_sae=16, relative_bandwidth=0.0)
        Traceback (most recent call last):
        ...
        mechscope.dictionaries.errors.DictionaryConfigError: need ... relative_bandwidth > 0 ...
    """

    l0_coefficient: float = 1.0
    threshold_init: float = 0.5
    relative_bandwidth: float = 1.0
    bandwidth: float | None = None
    straight_through_pre: bool = True

    architecture = "jumprelu"
    sparsity_coefficient = "l0_coefficient"

    def __post_init__(self) -> None:
        super().__post_init__()
        if (not self.l0_coefficient >= 0 or not self.threshold_init > 0 or not self.relative_bandwidth > 0
                or (self.bandwidth is not None and not self.bandwidth > 0)):
            raise DictionaryConfigError(
                "need l0_coefficient >= 0, threshold_init > 0, relative_bandwidth > 0 and bandwidth > 0 (or None), got "
                f"{self.l0_coefficient!r}, {self.threshold_init!r}, {self.relative_bandwidth!r}, {self.bandwidth!r}")

    def bandwidth_for(self, theta: Tensor) -> float | Tensor:
        """The straight-through bandwidth for thresholds `theta [d_sae]`: the fixed `bandwidth`, or
        `relative_bandwidth * theta` (detached).

        Example:
            >>> JumpReLUSAEConfig(d_in=4, d_sae=2).bandwidth_for(torch.tensor([0.5, 2.0])).tolist()
            [0.5, 2.0]
            >>> JumpReLUSAEConfig(d_in=4, d_sae=2, bandwidth=0.05).bandwidth_for(torch.tensor([0.5, 2.0]))
            0.05
        """
        return self.bandwidth if self.bandwidth is not None else self.relative_bandwidth * theta.detach()


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
        bandwidth, through = self.cfg.bandwidth_for(theta), self.cfg.straight_through_pre
        acts = JumpReLUFunction.apply(pre, theta, bandwidth, through)
        recon = torch.addmm(self.b_dec, acts, self.W_dec)
        l0 = StepFunction.apply(pre, theta, bandwidth, through).sum(-1).mean()
        unit = (target_n - self.b_dec).detach().pow(2).mean()
        return self._dense_output(recon, target_n, acts, {"l0": self.cfg.l0_coefficient * sparsity_scale * unit * l0})
