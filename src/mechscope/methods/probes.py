"""Linear probes on collected activations, with control tasks and difference-of-means directions.

Everything here works on tensors already collected (``X`` of shape ``[n, d_model]`` per
layer); reading activations out of a model happens elsewhere.

- Classification: multinomial logistic regression on standardised features with an L2
  penalty, fitted by L-BFGS (:func:`fit_logistic`).
- Regression: ridge regression in closed form (:func:`fit_ridge`).
- Control task (Hewitt and Liang, 2019): each word type gets a random label drawn from the
  empirical label distribution, the same for all its occurrences
  (:func:`control_labels`); ``selectivity = score - control_score``.
- Difference of means between two classes (:func:`difference_of_means`), for steering.

Example:
    >>> acts = {0: torch.randn(200, 16), 1: torch.randn(200, 16)}
    >>> labels = torch.randint(0, 2, (200,))
    >>> report = fit_probes_by_layer(acts, labels, word_types=[str(i % 20) for i in range(200)])
    >>> sorted(report.to_dict()["layers"][0])[:3]
    ['accuracy', 'chance', 'control_accuracy']
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

from mechscope.core.provenance import __version__

logger = logging.getLogger(__name__)

Task = Literal["auto", "classification", "regression"]


# ----------------------------------------------------------------------------- split, labels


def held_out_split(n: int, held_out_fraction: float = 0.2, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Deterministic random split of ``range(n)`` into (train, held-out) index tensors.

    The held-out part has ``max(1, round(n * held_out_fraction))`` examples.

    Example:
        >>> train, test = held_out_split(10, 0.3)
        >>> len(train), len(test), sorted(torch.cat([train, test]).tolist()) == list(range(10))
        (7, 3, True)
    """
    if not 0.0 < held_out_fraction < 1.0:
        raise ValueError(f"held_out_fraction must be in (0, 1), got {held_out_fraction}")
    if n < 2:
        raise ValueError(f"need at least 2 examples to split, got {n}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_test = min(n - 1, max(1, round(n * held_out_fraction)))
    return perm[n_test:].sort().values, perm[:n_test].sort().values


def encode_labels(labels: Sequence[Any] | Tensor) -> tuple[Tensor, list[Any]]:
    """Class labels to indices ``0..C-1`` (classes sorted) and the list of classes.

    Example:
        >>> encode_labels(["b", "a", "b"])
        (tensor([1, 0, 1]), ['a', 'b'])
    """
    values = labels.tolist() if isinstance(labels, Tensor) else list(labels)
    classes = sorted(set(values))
    index = {c: i for i, c in enumerate(classes)}
    return torch.tensor([index[v] for v in values], dtype=torch.long), classes


def control_labels(word_types: Sequence[str], labels: Tensor, seed: int = 0) -> Tensor:
    """Control-task labels: one random label per word type, shared by its occurrences.

    Word types are visited in sorted order; each gets ``labels[j]`` for ``j`` drawn
    uniformly from all examples, i.e. a draw from the empirical label distribution
    (Hewitt and Liang, 2019). Works for class indices and for scalar targets.

    Example:
        >>> ctrl = control_labels(["a", "b", "a"], torch.tensor([0, 1, 1]))
        >>> bool(ctrl[0] == ctrl[2])
        True
    """
    if len(word_types) != len(labels):
        raise ValueError(f"{len(word_types)} word types for {len(labels)} labels")
    gen = torch.Generator().manual_seed(seed)
    types = sorted(set(word_types))
    draws = torch.randint(0, len(labels), (len(types),), generator=gen)
    by_type = {t: labels[int(j)] for t, j in zip(types, draws, strict=True)}
    return torch.stack([by_type[t] for t in word_types])


# ----------------------------------------------------------------------------- probes


def _standardise(X: Tensor) -> tuple[Tensor, Tensor]:
    mean = X.mean(0)
    std = X.std(0, unbiased=False).clamp_min(1e-6)
    return mean, std


@dataclass
class LogisticProbe:
    """Multinomial logistic regression on standardised features.

    ``logits = ((X - mean) / std) @ weight.T + bias`` with ``weight`` ``[C, d]``.
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
        raise ValueError(f"expected X [n, d] and y [n], got {tuple(X.shape)} and {tuple(y.shape)}")
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
    """Ridge regression on standardised features: ``y_hat = ((X - mean) / std) @ weight + bias``."""

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
        raise ValueError(f"expected X [n, d] and y [n], got {tuple(X.shape)} and {tuple(y.shape)}")
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
    """``direction = mean(X[y == a]) - mean(X[y == b])``; ``unit = direction / ||direction||``."""

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
        raise ValueError(
            f"both classes need examples: {int(mask_a.sum())} of {a!r}, {int(mask_b.sum())} of {b!r}"
        )
    mu_a, mu_b = X[mask_a].mean(0), X[mask_b].mean(0)
    direction = mu_a - mu_b
    return MeanDifference(direction, direction / direction.norm().clamp_min(1e-12), (mu_a + mu_b) / 2)


# ----------------------------------------------------------------------------- per-layer report


@dataclass
class LayerProbe:
    """Held-out probe results at one layer.

    ``score`` is accuracy (classification) or R^2 (regression); ``control_score`` the same
    on control-task labels; ``selectivity = score - control_score``; ``chance`` the
    majority-class rate on the held-out examples (0 for regression).
    """

    layer: int
    score: float
    train_score: float
    chance: float
    control_score: float | None = None
    selectivity: float | None = None
    mean_difference_accuracy: float | None = None


@dataclass
class ProbeReport:
    """Probe results per layer, plus the probes and difference-of-means directions."""

    task: Literal["classification", "regression"]
    layers: dict[int, LayerProbe]
    probes: dict[int, LogisticProbe | RidgeProbe]
    directions: dict[int, MeanDifference]
    classes: list[Any]
    contrast: tuple[Any, Any] | None
    n_train: int
    n_held_out: int
    settings: dict[str, Any]

    @property
    def metric(self) -> str:
        """``"accuracy"`` for classification, ``"r2"`` for regression."""
        return "accuracy" if self.task == "classification" else "r2"

    def best_layer(self) -> int:
        """Layer with the highest held-out score."""
        return max(self.layers, key=lambda layer: self.layers[layer].score)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: per layer ``accuracy``, ``control_accuracy``, ``selectivity`` (or ``r2``...)."""
        name = self.metric
        layers = {}
        for layer, res in sorted(self.layers.items()):
            row = {
                name: res.score,
                f"control_{name}": res.control_score,
                "selectivity": res.selectivity,
                f"train_{name}": res.train_score,
                "chance": res.chance,
            }
            if res.mean_difference_accuracy is not None:
                row["mean_difference_accuracy"] = res.mean_difference_accuracy
                row["mean_difference_norm"] = float(self.directions[layer].direction.norm())
            layers[layer] = row
        return {
            "schema_version": 1,
            "kind": "probes",
            "task": self.task,
            "metric": name,
            "classes": [c if isinstance(c, (int, float, str)) else str(c) for c in self.classes],
            "contrast": list(self.contrast) if self.contrast else None,
            "n_train": self.n_train,
            "n_held_out": self.n_held_out,
            "provenance": {"mechscope_version": __version__, "seed": self.settings["seed"]},
            "settings": self.settings,
            "layers": layers,
        }

    def to_json(self, indent: int | None = 2) -> str:
        """The report as JSON (see :meth:`to_dict`)."""
        return json.dumps(self.to_dict(), indent=indent)


def _infer_task(labels: Sequence[Any] | Tensor) -> Literal["classification", "regression"]:
    if isinstance(labels, Tensor):
        return "regression" if labels.is_floating_point() else "classification"
    values = list(labels)
    if all(isinstance(v, float) for v in values) and any(not float(v).is_integer() for v in values):
        return "regression"
    return "classification"


def _fit_score(
    task: str, X_tr: Tensor, y_tr: Tensor, X_te: Tensor, y_te: Tensor, reg: float, n_classes: int
) -> tuple[LogisticProbe | RidgeProbe, float, float]:
    if task == "classification":
        probe = fit_logistic(X_tr, y_tr, l2=reg, n_classes=n_classes)
        return probe, probe.accuracy(X_te, y_te), probe.accuracy(X_tr, y_tr)
    ridge = fit_ridge(X_tr, y_tr, alpha=reg)
    return ridge, ridge.r2(X_te, y_te), ridge.r2(X_tr, y_tr)


def fit_probes_by_layer(
    acts: dict[int, Tensor],
    labels: Sequence[Any] | Tensor,
    word_types: Sequence[str] | None = None,
    *,
    task: Task = "auto",
    regularisation: float | None = None,
    held_out_fraction: float = 0.2,
    seed: int = 0,
    contrast: tuple[Any, Any] | None = None,
) -> ProbeReport:
    """Fit one linear probe per layer and score it on a held-out split.

    Args:
        acts: layer -> activations ``[n, d_model]`` (same examples in the same order).
        labels: ``n`` class labels (ints, strings, bools) or float targets.
        word_types: the word/token string each example is read at; enables the control
            task and selectivity.
        task: ``"classification"``, ``"regression"`` or ``"auto"`` (float targets with
            fractional values are regression).
        regularisation: L2 strength ``l2`` of :func:`fit_logistic` (default 1e-3) or
            ``alpha`` of :func:`fit_ridge` (default 1.0).
        held_out_fraction: fraction of examples held out (:func:`held_out_split`).
        seed: seed of the split and of the control labels.
        contrast: classes ``(a, b)`` for the difference-of-means direction ``a - b``;
            defaults to (second class, first class) in sorted order for binary tasks.

    Example:
        >>> report = fit_probes_by_layer({0: torch.randn(50, 4)}, [i % 2 for i in range(50)])  # doctest: +SKIP
        >>> report.to_dict()["layers"][0]["accuracy"]                                          # doctest: +SKIP
    """
    if not acts:
        raise ValueError("acts is empty")
    n = len(labels)
    for layer, X in acts.items():
        if X.ndim != 2 or X.shape[0] != n:
            raise ValueError(f"layer {layer}: expected activations [{n}, d_model], got {tuple(X.shape)}")
        if not torch.isfinite(X).all():
            raise ValueError(f"layer {layer}: activations contain NaN or Inf")
    if word_types is not None and len(word_types) != n:
        raise ValueError(f"{len(word_types)} word types for {n} labels")
    task = _infer_task(labels) if task == "auto" else task
    if task == "classification":
        y, classes = encode_labels(labels)
        if len(classes) < 2:
            raise ValueError(f"classification needs at least 2 classes, got {classes}")
        reg = 1e-3 if regularisation is None else regularisation
    else:
        y = (labels if isinstance(labels, Tensor) else torch.tensor(list(labels))).double()
        classes = []
        reg = 1.0 if regularisation is None else regularisation
    if task == "classification" and contrast is None and len(classes) == 2:
        contrast = (classes[1], classes[0])
    if contrast is not None and task == "classification":
        missing = [c for c in contrast if c not in classes]
        if missing:
            raise ValueError(f"contrast classes {missing} are not among the labels {classes}")
    train, test = held_out_split(n, held_out_fraction, seed)
    ctrl = control_labels(word_types, y, seed) if word_types is not None else None
    chance = float(torch.bincount(y[test]).max()) / len(test) if task == "classification" else 0.0

    layers, probes, directions = {}, {}, {}
    for layer in sorted(acts):
        X = acts[layer].double()
        probe, score, train_score = _fit_score(task, X[train], y[train], X[test], y[test], reg, len(classes))
        result = LayerProbe(layer=layer, score=score, train_score=train_score, chance=chance)
        if ctrl is not None:
            _, control_score, _ = _fit_score(
                task, X[train], ctrl[train], X[test], ctrl[test], reg, len(classes)
            )
            result.control_score = control_score
            result.selectivity = score - control_score
        if contrast is not None and task == "classification":
            a, b = classes.index(contrast[0]), classes.index(contrast[1])
            md = difference_of_means(X[train], y[train], a, b)
            pair = (y[test] == a) | (y[test] == b)
            directions[layer] = md
            result.mean_difference_accuracy = (
                md.accuracy(X[test][pair], y[test][pair] == a) if pair.any() else math.nan
            )
        layers[layer], probes[layer] = result, probe
        logger.info("layer %d: %s %.3f (control %s)", layer, task, score, result.control_score)
    settings = {"regularisation": reg, "held_out_fraction": held_out_fraction, "seed": seed}
    return ProbeReport(task, layers, probes, directions, classes, contrast, len(train), len(test), settings)
