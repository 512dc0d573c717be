"""Reconstruction and sparsity metrics of dictionaries. Each formula is written in its docstring.

Example:
    >>> import torch
    >>> x = torch.tensor([[1.0, 0.0], [3.0, 0.0]])
    >>> explained_variance(x, x)
    1.0
"""

from __future__ import annotations

import torch  # noqa: F401 - used by the examples
from torch import Tensor


def explained_variance(x: Tensor, x_hat: Tensor) -> float:
    """`1 - sum_b ||x_b - x_hat_b||^2 / sum_b ||x_b - mean_b(x)||^2` over a batch `[batch, d]`.

    One number for the whole batch (not a mean of per-token ratios); the one definition used
    everywhere (training logs, evaluation, synthetic benchmark), through `explained_variance_from_sums`.

    Example:
        >>> explained_variance(torch.tensor([[0.0], [2.0]]), torch.tensor([[0.0], [1.0]]))
        0.5
    """
    x, x_hat = x.double(), x_hat.double()
    return explained_variance_from_sums(float((x - x_hat).pow(2).sum()), float(x.pow(2).sum()), x.sum(0), x.shape[0])


def explained_variance_from_sums(sum_err2: float, sum_x2: float, sum_x: Tensor, n: int) -> float:
    """`explained_variance` from running sums over `n` tokens, for streaming evaluation.

    `sum_err2 = sum_b ||x_b - x_hat_b||^2`, `sum_x2 = sum_b ||x_b||^2`, `sum_x = sum_b x_b` `[d]`;
    `sum_b ||x_b - mean||^2 = sum_x2 - ||sum_x||^2 / n`. NaN when that total is 0.

    Example:
        >>> explained_variance_from_sums(1.0, 4.0, torch.tensor([2.0]), 2)  # x = [0], [2]; x_hat = [0], [1]
        0.5
    """
    total = sum_x2 - float(sum_x.double().pow(2).sum()) / n
    return 1.0 - sum_err2 / total if total > 0 else float("nan")


def mean_l0(feature_acts: Tensor) -> float:
    """Mean number of non-zero latents per token: `mean_b #{i : f_bi != 0}` for `[batch, d_sae]`.

    Example:
        >>> mean_l0(torch.tensor([[1.0, 0.0], [2.0, 3.0]]))
        1.5
    """
    return float((feature_acts != 0).sum(-1).double().mean())


def mean_squared_error(x: Tensor, x_hat: Tensor) -> float:
    """`mean_b ||x_b - x_hat_b||^2` (squared error summed over features, averaged over tokens).

    Example:
        >>> mean_squared_error(torch.zeros(2, 2), torch.ones(2, 2))
        2.0
    """
    return float((x.double() - x_hat.double()).pow(2).sum(-1).mean())


def dead_fraction(tokens_since_fired: Tensor, window: int) -> float:
    """Fraction of latents that did not fire in the last `window` tokens: `mean_i [s_i >= window]`.

    Example:
        >>> dead_fraction(torch.tensor([0, 10, 100, 5]), 10)
        0.5
    """
    return float((tokens_since_fired >= window).double().mean())


def fixed_norm_scale(x: Tensor) -> float:
    """Scale `s` with `mean_b ||s * x_b|| = sqrt(d)`: `s = sqrt(d) / mean_b ||x_b||` for `[batch, d]`.

    Example:
        >>> fixed_norm_scale(torch.tensor([[3.0, 4.0]]))  # sqrt(2) / 5
        0.282842712474619
    """
    mean_norm = float(x.double().norm(dim=-1).mean())
    return x.shape[-1] ** 0.5 / mean_norm if mean_norm > 0 else 1.0
