"""Data-dependent initialisation: decoder bias at the mean or geometric median of a sample.

Example:
    >>> import torch
    >>> pts = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [100.0, 100.0]])
    >>> geometric_median(pts).norm() < 1.0  # robust to the outlier, unlike the mean
    tensor(True)
"""

from __future__ import annotations

import torch  # noqa: F401 - used by the examples
from torch import Tensor


def geometric_median(points: Tensor, max_iter: int = 100, tol: float = 1e-7) -> Tensor:
    """`argmin_y sum_b ||points_b - y||` by Weiszfeld iterations (in float64), `[n, d] -> [d]`.

    Each iteration: `w_b = 1 / max(||p_b - y||, 1e-12)`, `y <- sum_b w_b p_b / sum_b w_b`; stops when
    `y` moves less than `tol * (1 + ||y||)`.

    Example:
        >>> points = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [100.0, 100.0]])
        >>> [round(v, 2) for v in geometric_median(points).tolist()]      # the outlier barely moves it
        [0.5, 0.5]
    """
    p = points.double()
    y = p.mean(0)
    for _ in range(max_iter):
        w = 1.0 / (p - y).norm(dim=1).clamp_min(1e-12)
        y_new = (w[:, None] * p).sum(0) / w.sum()
        moved = float((y_new - y).norm())
        y = y_new
        if moved < tol * (1.0 + float(y.norm())):
            break
    return y.to(points.dtype)


def decoder_bias_init(sample: Tensor, method: str) -> Tensor:
    """Initial `b_dec [d]` from a sample `[n, d]`: `"geometric_median"`, `"mean"` or `"zeros"`.

    Example:
        >>> decoder_bias_init(torch.tensor([[1.0, 2.0], [3.0, 4.0]]), "mean")
        tensor([2., 3.])
    """
    if method == "geometric_median":
        return geometric_median(sample)
    if method == "mean":
        return sample.double().mean(0).to(sample.dtype)
    if method == "zeros":
        return sample.new_zeros(sample.shape[1])
    raise ValueError(f"unknown b_dec init {method!r}: use 'geometric_median', 'mean' or 'zeros'")
