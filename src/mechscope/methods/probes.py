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
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from mechscope.core.errors import BadInputError
from mechscope.core.provenance import __version__
from mechscope.methods.probe_models import (
    LogisticProbe,
    MeanDifference,
    RidgeProbe,
    difference_of_means,
    fit_logistic,
    fit_ridge,
)

logger = logging.getLogger(__name__)

Task = Literal["auto", "classification", "regression"]


# ----------------------------------------------------------------------------- split, labels


def held_out_split(n: int, held_out_fraction: float = 0.2, seed: int = 0, groups: Sequence[str] | None = None,
                   strata: Sequence[Any] | None = None) -> tuple[Tensor, Tensor]:
    """Deterministic random split of ``range(n)`` into (train, held-out) index tensors.

    Without ``groups`` the held-out part has ``max(1, round(n * held_out_fraction))`` examples.
    With ``groups`` (the word each example is read at) whole groups are held out, so no word is
    on both sides: a probe cannot score by memorising words. With ``strata`` (class labels)
    groups are drawn per class (by each group's most common label), ``round(fraction * groups)``
    of each class that has two or more groups.

    Example:
        >>> train, test = held_out_split(10, 0.3)
        >>> len(train), len(test), sorted(torch.cat([train, test]).tolist()) == list(range(10))
        (7, 3, True)
        >>> words = ["cat", "dog", "cow", "cat", "dog", "cow"]
        >>> train, test = held_out_split(6, 0.3, groups=words)
        >>> sorted({words[i] for i in test}), sorted({words[i] for i in train})
        (['dog'], ['cat', 'cow'])
    """
    if not 0.0 < held_out_fraction < 1.0:
        raise BadInputError(f"held_out_fraction must be in (0, 1), got {held_out_fraction}")
    if n < 2:
        raise BadInputError(f"need at least 2 examples to split, got {n}")
    generator = torch.Generator().manual_seed(seed)
    if groups is None:
        perm = torch.randperm(n, generator=generator)
        n_test = min(n - 1, max(1, round(n * held_out_fraction)))
        return perm[n_test:].sort().values, perm[:n_test].sort().values
    held = _held_out_groups(list(groups), list(strata) if strata is not None else [0] * n, held_out_fraction,
                            generator)
    test = torch.tensor([i for i, g in enumerate(groups) if g in held], dtype=torch.long)
    train = torch.tensor([i for i, g in enumerate(groups) if g not in held], dtype=torch.long)
    return train, test


def _held_out_groups(groups: list[str], strata: list[Any], fraction: float, generator: torch.Generator) -> set[str]:
    unique = sorted(set(groups))
    if len(unique) < 2:
        raise BadInputError(f"Every example is read at the same word ({unique[0]!r}); holding out words needs at "
                            "least two different words: vary the read token (the 'token' field).")
    votes: dict[str, Counter] = {g: Counter() for g in unique}
    for g, s in zip(groups, strata, strict=True):
        votes[g][s] += 1
    by_stratum: dict[str, list[str]] = {}
    for g in unique:
        by_stratum.setdefault(repr(votes[g].most_common(1)[0][0]), []).append(g)
    held: set[str] = set()
    for key in sorted(by_stratum):
        members = by_stratum[key]
        if len(members) >= 2:
            order = torch.randperm(len(members), generator=generator).tolist()
            k = min(len(members) - 1, max(1, round(len(members) * fraction)))
            held.update(members[i] for i in order[:k])
    if not held:  # every class has a single word: hold out one word of the largest class
        largest = max(by_stratum.values(), key=len)
        held.add(largest[int(torch.randint(len(largest), (1,), generator=generator))])
    return held


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
        raise BadInputError(f"{len(word_types)} word types for {len(labels)} labels")
    gen = torch.Generator().manual_seed(seed)
    types = sorted(set(word_types))
    draws = torch.randint(0, len(labels), (len(types),), generator=gen)
    by_type = {t: labels[int(j)] for t, j in zip(types, draws, strict=True)}
    return torch.stack([by_type[t] for t in word_types])


# ----------------------------------------------------------------------------- per-layer report


@dataclass
class LayerProbe:
    """Held-out probe results at one layer.

    ``score`` is accuracy (classification) or R^2 (regression); ``control_score`` the same
    on control-task labels; ``selectivity = score - control_score``; ``chance`` the
    majority-class rate on the held-out examples (0 for regression).

    Example:
        >>> row = LayerProbe(layer=3, score=0.92, train_score=0.97, chance=0.5, control_score=0.61, selectivity=0.31)
        >>> round(row.score - row.control_score, 2) == row.selectivity
        True
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
    """Probe results per layer, plus the probes and difference-of-means directions.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> labels = [i % 2 for i in range(40)]
        >>> acts = {layer: torch.randn(40, 4) + layer * torch.tensor(labels)[:, None] for layer in range(3)}
        >>> report = fit_probes_by_layer(acts, labels, [f"w{i % 8}" for i in range(40)])
        >>> report.task, report.metric, report.layers[0].score < report.layers[2].score   # no signal at layer 0
        ('classification', 'accuracy', True)
        >>> sorted(report.to_dict()["layers"][2])[:3]
        ['accuracy', 'chance', 'control_accuracy']
    """

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
        >>> _ = torch.manual_seed(0)
        >>> labels = [i % 2 for i in range(50)]
        >>> acts = {0: torch.randn(50, 4) + 3 * torch.tensor(labels)[:, None]}      # the label is linearly readable
        >>> report = fit_probes_by_layer(acts, labels, [f"w{i % 10}" for i in range(50)])
        >>> report.to_dict()["layers"][0]["accuracy"], report.n_train + report.n_held_out
        (1.0, 50)
    """
    if not acts:
        raise BadInputError("acts is empty")
    n = len(labels)
    for layer, X in acts.items():
        if X.ndim != 2 or X.shape[0] != n:
            raise BadInputError(f"layer {layer}: expected activations [{n}, d_model], got {tuple(X.shape)}")
        if not torch.isfinite(X).all():
            raise BadInputError(f"layer {layer}: activations contain NaN or Inf")
    if word_types is not None and len(word_types) != n:
        raise BadInputError(f"{len(word_types)} word types for {n} labels")
    task = _infer_task(labels) if task == "auto" else task
    if task == "classification":
        y, classes = encode_labels(labels)
        if len(classes) < 2:
            raise BadInputError(f"classification needs at least 2 classes, got {classes}")
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
            raise BadInputError(f"contrast classes {missing} are not among the labels {classes}")
    strata = y.tolist() if task == "classification" else None
    train, test = held_out_split(n, held_out_fraction, seed, groups=word_types, strata=strata)
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
    settings = {"regularisation": reg, "held_out_fraction": held_out_fraction, "seed": seed,
                "split": "held-out examples" if word_types is None else "held-out words"}
    if word_types is not None:
        settings["held_out_words"] = sorted({word_types[i] for i in test.tolist()})
    return ProbeReport(task, layers, probes, directions, classes, contrast, len(train), len(test), settings)
