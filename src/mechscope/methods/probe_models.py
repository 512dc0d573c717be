"""Linear probe models fitted on activations ``X`` ``[n, d_model]``: logistic, ridge, difference of means.

- Classification: multinomial logistic regression on standardised features with an L2
  penalty, fitted by L-BFGS (:func:`fit_logistic`).
- Regression: ridge regression in closed form (:func:`fit_ridge`), scored by :func:`r2_score`.
- Difference of means between two classes (:func:`difference_of_means`), for steering.

Example:
    >>> X = torch.cat([torch.randn(20, 3) + 2, torch.randn(20, 3) - 2])
    >>> y = torch.tensor([1] * 20 + [0] * 20)
    >>> fit_logistic(X, y).accuracy(X, y)
    1.0
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from mechscope.core.errors import BadInputError


def _standardise(X: Tensor) -> tuple[Tensor, Tensor]:
    mean = X.mean(0)
    std = X.std(0, unbiased=False).clamp_min(1e-6)
    return mean, std


@dataclass
class LogisticProbe:
    """Multinomial logistic regression on standardised features.

    ``logits = ((X - mean) / std) @ weight.T + bias`` with ``weight`` ``[C, d]``.

    Example:
        >>> import torch
        >>> X, y = torch.tensor([[0.0], [1.0], [3.0], [4.0]]), torch.tensor([0, 0, 1, 1])
        >>> probe = fit_logistic(X, y)
        >>> probe.weight.shape, probe.predict(torch.tensor([[-1.0], [5.0]])).tolist(), probe.accuracy(X, y)
        (torch.Size([2, 1]), [0, 1], 1.0)
    """

    weight: Tensor
    bias: Tensor
    mean: Tensor
    std: Tensor
    classes: list[Any] = field(default_factory=list)

    def logits(self, X: Tensor) -> Tensor:
        """Class logits ``[n, C]``."""
        Z = (X.to(self.mean.dtype) - self.mean) / self.std
        return Z @ self.weight.T + self.bias

    def predict(self, X: Tensor) -> Tensor:
        """Predicted class indices ``[n]``."""
        return self.logits(X).argmax(-1)

    def accuracy(self, X: Tensor, y: Tensor) -> float:
        """``mean(predict(X) == y)``."""
        return float((self.predict(X) == y).double().mean())


def fit_logistic(
    X: Tensor, y: Tensor, *, l2: float = 1e-3, n_classes: int | None = None, max_iter: int = 500
) -> LogisticProbe:
    """Fit multinomial logistic regression with L-BFGS (float64).

    Minimises ``mean_n CE(softmax(Z W^T + b), y) + (l2 / 2) ||W||_F^2`` where ``Z`` is
    ``X`` standardised with the training mean and standard deviation; the bias is not
    penalised.

    Example:
        >>> X = torch.tensor([[0.0], [1.0], [2.0], [3.0]])
        >>> fit_logistic(X, torch.tensor([0, 0, 1, 1])).accuracy(X, torch.tensor([0, 0, 1, 1]))
        1.0
    """
    if X.ndim != 2 or y.ndim != 1 or len(X) != len(y):
        raise BadInputError(f"expected X [n, d] and y [n], got {tuple(X.shape)} and {tuple(y.shape)}")
    X = X.double()
    mean, std = _standardise(X)
    Z = (X - mean) / std
    C = n_classes if n_classes is not None else int(y.max()) + 1
    W = torch.zeros(C, X.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(C, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS(
        [W, b],
        lr=1.0,
        max_iter=max_iter,
        tolerance_grad=1e-9,
        tolerance_change=1e-12,
        line_search_fn="strong_wolfe",
    )

    def closure() -> Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(Z @ W.T + b, y) + 0.5 * l2 * (W**2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return LogisticProbe(weight=W.detach(), bias=b.detach(), mean=mean, std=std)


@dataclass
class RidgeProbe:
    """Ridge regression on standardised features: ``y_hat = ((X - mean) / std) @ weight + bias``.

    Example:
        >>> import torch
        >>> X = torch.arange(10.0).view(10, 1)
        >>> probe = fit_ridge(X, 3 * X[:, 0] - 1, alpha=0.0)
        >>> [round(v, 4) for v in probe.predict(torch.tensor([[20.0]])).tolist()]
        [59.0]
    """

    weight: Tensor
    bias: Tensor
    mean: Tensor
    std: Tensor

    def predict(self, X: Tensor) -> Tensor:
        """Predictions ``[n]``."""
        return ((X.to(self.mean.dtype) - self.mean) / self.std) @ self.weight + self.bias

    def r2(self, X: Tensor, y: Tensor) -> float:
        """Coefficient of determination, see :func:`r2_score`."""
        return r2_score(self.predict(X), y)


def r2_score(pred: Tensor, y: Tensor) -> float:
    """``R^2 = 1 - sum (y - pred)^2 / sum (y - mean(y))^2`` (mean of the evaluated ``y``).

    Example:
        >>> r2_score(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1.0, 2.0, 4.0]))
        0.7857142857142857
    """
    y = y.double()
    ss_res = ((y - pred.double()) ** 2).sum()
    ss_tot = ((y - y.mean()) ** 2).sum()
    return float(1.0 - ss_res / ss_tot) if ss_tot > 0 else float("nan")


def fit_ridge(X: Tensor, y: Tensor, *, alpha: float = 1.0) -> RidgeProbe:
    """Closed-form ridge regression on standardised features (float64).

    ``w = (Z^T Z + alpha I)^{-1} Z^T (y - mean(y))``, ``b = mean(y)``, with ``Z`` the
    standardised ``X``; the bias is not penalised.

    Example:
        >>> X = torch.arange(10.0).view(10, 1)
        >>> round(fit_ridge(X, 2 * X[:, 0] + 1, alpha=0.0).r2(X, 2 * X[:, 0] + 1), 6)
        1.0
    """
    if X.ndim != 2 or y.ndim != 1 or len(X) != len(y):
        raise BadInputError(f"expected X [n, d] and y [n], got {tuple(X.shape)} and {tuple(y.shape)}")
    X, y = X.double(), y.double()
    mean, std = _standardise(X)
    Z = (X - mean) / std
    y_mean = y.mean()
    A = Z.T @ Z + alpha * torch.eye(Z.shape[1], dtype=torch.float64)
    w = (
        torch.linalg.lstsq(A, Z.T @ (y - y_mean)).solution
        if alpha == 0
        else torch.linalg.solve(A, Z.T @ (y - y_mean))
    )
    return RidgeProbe(weight=w, bias=y_mean, mean=mean, std=std)


# ----------------------------------------------------------------------------- directions


@dataclass
class MeanDifference:
    """``direction = mean(X[y == a]) - mean(X[y == b])``; ``unit = direction / ||direction||``.

    Example:
        >>> import torch
        >>> X, labels = torch.tensor([[2.0, 0.0], [4.0, 0.0], [0.0, 0.0]]), torch.tensor([1, 1, 0])
        >>> md = difference_of_means(X, labels, 1, 0)
        >>> md.unit, md.midpoint, md.accuracy(X, labels == 1)
        (tensor([1., 0.]), tensor([1.5000, 0.0000]), 1.0)
    """

    direction: Tensor
    unit: Tensor
    midpoint: Tensor

    def accuracy(self, X: Tensor, is_a: Tensor) -> float:
        """Accuracy of ``(X - midpoint) . unit > 0`` as a classifier of class ``a``."""
        return float((((X.to(self.unit.dtype) - self.midpoint) @ self.unit > 0) == is_a).double().mean())


def difference_of_means(X: Tensor, labels: Tensor, a: Any, b: Any) -> MeanDifference:
    """Difference of class means ``mean(X | a) - mean(X | b)`` and its normalised version.

    ``midpoint = (mean(X | a) + mean(X | b)) / 2``.

    Example:
        >>> X = torch.tensor([[2.0, 0.0], [4.0, 0.0], [0.0, 0.0]])
        >>> difference_of_means(X, torch.tensor([1, 1, 0]), 1, 0).direction
        tensor([3., 0.])
    """
    mask_a, mask_b = labels == a, labels == b
    if not mask_a.any() or not mask_b.any():
        raise BadInputError(
            f"both classes need examples: {int(mask_a.sum())} of {a!r}, {int(mask_b.sum())} of {b!r}"
        )
    mu_a, mu_b = X[mask_a].mean(0), X[mask_b].mean(0)
    direction = mu_a - mu_b
    return MeanDifference(direction, direction / direction.norm().clamp_min(1e-12), (mu_a + mu_b) / 2)
