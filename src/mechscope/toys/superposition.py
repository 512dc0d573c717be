"""Toy models of superposition (Elhage et al., 2022, "Toy Models of Superposition").

``n`` sparse features pass through an ``m``-dimensional bottleneck and back:
``x' = ReLU(W^T W x + b)`` with ``W`` of shape ``[m, n]``. Each feature is zero with
probability ``S`` (the sparsity) and uniform in ``[0, 1]`` otherwise; feature ``i``
carries importance ``I_i = decay**i`` in the loss
``L = mean over batch of sum_i I_i (x_i - x'_i)^2``.

One model per sparsity value (and ``instances_per_sparsity`` random restarts of each) is
trained in parallel as a batch of independent models with Adam. Dense features give
about ``m`` represented features, each orthogonal to the others; sparse features are
packed into the bottleneck in superposition, so more than ``m`` features are represented.

Example:
    >>> cfg = SuperpositionConfig(n_features=5, d_hidden=2, sparsities=(0.0, 0.9), steps=2000)
    >>> result = train_superposition(cfg)                 # doctest: +SKIP
    >>> [r.n_represented for r in result.results]         # doctest: +SKIP
    [2, 5]
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor

from mechscope.core.provenance import __version__

logger = logging.getLogger(__name__)

REPRESENTED_NORM = 0.5


@dataclass
class SuperpositionConfig:
    """Settings of a superposition sweep.

    Attributes:
        n_features: number of input features ``n``.
        d_hidden: bottleneck width ``m``.
        sparsities: values of ``S`` (probability that a feature is zero), one model each.
        importance_decay: feature ``i`` has importance ``importance_decay**i``.
        instances_per_sparsity: random restarts per sparsity; the lowest-loss one is kept.
        steps: Adam steps.
        batch_size: samples per step.
        lr: Adam learning rate (cosine-decayed to 10% over training).
        eval_samples: samples of the final loss used to pick the best restart.
        seed: seed of initialisation and data.
        num_threads: torch CPU threads while training (restored afterwards); the models
            are tiny, so one thread is fastest. ``None`` keeps the current setting.

    Example:
        >>> SuperpositionConfig(n_features=3, importance_decay=0.5).importance()
        tensor([1.0000, 0.5000, 0.2500])
    """

    n_features: int = 20
    d_hidden: int = 5
    sparsities: tuple[float, ...] = (0.0, 0.7, 0.9, 0.97, 0.99)
    importance_decay: float = 0.9
    instances_per_sparsity: int = 3
    steps: int = 3000
    batch_size: int = 1024
    lr: float = 1e-2
    eval_samples: int = 8192
    seed: int = 0
    num_threads: int | None = 1

    def __post_init__(self) -> None:
        self.sparsities = tuple(float(s) for s in self.sparsities)
        if self.n_features < 1 or self.d_hidden < 1:
            raise ValueError(
                f"n_features and d_hidden must be positive, got {self.n_features}, {self.d_hidden}"
            )
        if not self.sparsities:
            raise ValueError("sparsities must not be empty")
        if any(not 0.0 <= s < 1.0 for s in self.sparsities):
            raise ValueError(f"each sparsity must be in [0, 1), got {self.sparsities}")
        if not 0.0 < self.importance_decay <= 1.0:
            raise ValueError(f"importance_decay must be in (0, 1], got {self.importance_decay}")
        for name in ("instances_per_sparsity", "steps", "batch_size", "eval_samples"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")

    def importance(self) -> Tensor:
        """Feature importances ``I_i = importance_decay**i``, shape ``[n_features]``."""
        return self.importance_decay ** torch.arange(self.n_features, dtype=torch.float32)


@dataclass
class SparsityResult:
    """A trained toy model at one sparsity and its superposition statistics.

    Attributes:
        sparsity: ``S``, probability that a feature is zero.
        loss: importance-weighted reconstruction loss on fresh samples.
        W: weights ``[m, n]``; column ``W_i`` is feature ``i``'s direction.
        b: bias ``[n]``.
        norms: ``||W_i||`` per feature.
        n_represented: number of features with ``||W_i|| > 0.5``.
        interference: per feature ``sum_{j != i} (W_i_hat . W_j)^2`` with
            ``W_i_hat = W_i / ||W_i||``: how much other features overlap feature ``i``'s
            direction (the superposition measure; 0 when ``W_i`` is orthogonal to all).
        dims_per_feature: ``m / ||W||_F^2``: bottleneck dimensions per represented
            feature (1 for ``m`` orthogonal unit features, 1/2 for antipodal pairs).
        feature_dimensionality: per feature ``D_i = ||W_i||^2 / sum_j (W_i_hat . W_j)^2``
            (the sum includes ``j = i``): the fraction of a dimension feature ``i`` owns.

    Example:
        >>> W = torch.tensor([[1.0, -1.0, 0.0]])
        >>> r = SparsityResult(sparsity=0.9, loss=0.1, W=W, b=torch.zeros(3), **superposition_stats(W))
        >>> r.n_represented, r.to_dict()["W"]
        (2, [[1.0, -1.0, 0.0]])
    """

    sparsity: float
    loss: float
    W: Tensor
    b: Tensor
    norms: list[float] = field(default_factory=list)
    n_represented: int = 0
    interference: list[float] = field(default_factory=list)
    dims_per_feature: float = 0.0
    feature_dimensionality: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (weights as nested lists)."""
        d = asdict(self)
        d["W"] = self.W.tolist()
        d["b"] = self.b.tolist()
        return d


@dataclass
class SuperpositionResult:
    """A superposition sweep: its config and one :class:`SparsityResult` per sparsity.

    Example:
        >>> result = train_superposition(SuperpositionConfig(n_features=5, d_hidden=2, sparsities=(0.0, 0.9),
        ...     instances_per_sparsity=1, steps=10, batch_size=64, eval_samples=64))
        >>> [r.sparsity for r in result.results], result.to_dict()["kind"]
        ([0.0, 0.9], 'toy_superposition')
    """

    config: SuperpositionConfig
    results: list[SparsityResult]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict with a ``provenance`` block."""
        return {
            "schema_version": 1,
            "kind": "toy_superposition",
            "provenance": {
                "model": "toy-superposition",
                "mechscope_version": __version__,
                "torch_version": torch.__version__,
                "dtype": "float32",
                "seed": self.config.seed,
            },
            "config": asdict(self.config),
            "results": [r.to_dict() for r in self.results],
        }

    def to_json(self, indent: int | None = 2) -> str:
        """The result as a JSON string (see :meth:`to_dict`)."""
        return json.dumps(self.to_dict(), indent=indent)

    def summary(self) -> list[dict[str, float]]:
        """Per sparsity: ``sparsity``, ``n_represented``, ``dims_per_feature``, ``loss``."""
        return [
            {
                "sparsity": r.sparsity,
                "n_represented": r.n_represented,
                "dims_per_feature": r.dims_per_feature,
                "loss": r.loss,
            }
            for r in self.results
        ]


def sample_features(
    n_samples: int, feature_probability: Tensor, generator: torch.Generator | None = None
) -> Tensor:
    """Sparse features: each uniform in [0, 1] with its probability, else 0.

    ``feature_probability`` has shape ``[instances]`` (``1 - S`` per model); returns
    ``[instances, n_samples, n_features]`` once broadcast by the caller's ``n_features``.

    Example:
        >>> x = sample_features(4, torch.tensor([0.0, 1.0]).view(2, 1, 1).expand(2, 1, 3))
        >>> x.shape, bool((x[0] == 0).all())
        (torch.Size([2, 4, 3]), True)
    """
    instances, _, n = feature_probability.shape
    shape = (instances, n_samples, n)
    values = torch.rand(shape, generator=generator)
    active = torch.rand(shape, generator=generator) < feature_probability
    return values * active


def reconstruct(W: Tensor, b: Tensor, x: Tensor) -> Tensor:
    """``ReLU(W^T W x + b)`` for a batch of models: W ``[k, m, n]``, b ``[k, n]``, x ``[k, batch, n]``.

    Example:
        >>> W = torch.tensor([[[1.0, 0.0]]])                                       # k=1 model, m=1, n=2
        >>> reconstruct(W, torch.zeros(1, 2), torch.tensor([[[0.5, 0.7]]]))        # feature 1 is not represented
        tensor([[[0.5000, 0.0000]]])
    """
    hidden = torch.einsum("kmn,kbn->kbm", W, x)
    return torch.relu(torch.einsum("kmn,kbm->kbn", W, hidden) + b[:, None, :])


def weighted_loss(W: Tensor, b: Tensor, x: Tensor, importance: Tensor) -> Tensor:
    """Per model ``mean_batch sum_i I_i (x_i - x'_i)^2``, shape ``[k]``.

    Example:
        >>> W = torch.tensor([[[1.0, 0.0]]])
        >>> weighted_loss(W, torch.zeros(1, 2), torch.tensor([[[0.5, 0.7]]]), torch.tensor([1.0, 0.5]))   # 0.5 * 0.7**2
        tensor([0.2450])
    """
    err = (x - reconstruct(W, b, x)) ** 2
    return (err * importance).sum(-1).mean(-1)


def superposition_stats(W: Tensor) -> dict[str, Any]:
    """Norms, represented count, interference and dimensionality of one ``W`` ``[m, n]``.

    See :class:`SparsityResult` for each formula.

    Example:
        >>> stats = superposition_stats(torch.tensor([[1.0, -1.0, 0.0]]))
        >>> stats["n_represented"], stats["interference"], stats["dims_per_feature"]
        (2, [1.0, 1.0, 0.0], 0.5)
    """
    m = W.shape[0]
    norms = W.norm(dim=0)
    unit = W / norms.clamp_min(1e-12)
    overlaps = (unit.T @ W) ** 2  # [i, j] = (W_i_hat . W_j)^2
    total = overlaps.sum(dim=1)
    interference = total - overlaps.diagonal()
    frob = float((W**2).sum())
    dimensionality = torch.where(norms > 1e-12, norms**2 / total.clamp_min(1e-12), torch.zeros_like(norms))
    return {
        "norms": norms.tolist(),
        "n_represented": int((norms > REPRESENTED_NORM).sum()),
        "interference": interference.tolist(),
        "dims_per_feature": m / frob if frob > 0 else float("inf"),
        "feature_dimensionality": dimensionality.tolist(),
    }


def train_superposition(config: SuperpositionConfig | None = None) -> SuperpositionResult:
    """Train one toy model per sparsity (times restarts) in parallel and measure superposition.

    Example:
        >>> result = train_superposition(SuperpositionConfig(n_features=5, d_hidden=2, steps=10))
        >>> len(result.results)
        5
    """
    cfg = config or SuperpositionConfig()
    previous_threads = torch.get_num_threads()
    if cfg.num_threads is not None:
        torch.set_num_threads(cfg.num_threads)
    try:
        return _train(cfg)
    finally:
        torch.set_num_threads(previous_threads)


def _train(cfg: SuperpositionConfig) -> SuperpositionResult:
    gen = torch.Generator().manual_seed(cfg.seed)
    n, m, r = cfg.n_features, cfg.d_hidden, cfg.instances_per_sparsity
    k = len(cfg.sparsities) * r
    prob = torch.tensor([1.0 - s for s in cfg.sparsities for _ in range(r)]).view(k, 1, 1).expand(k, 1, n)
    importance = cfg.importance()

    W = (torch.randn(k, m, n, generator=gen) * (2.0 / (m + n)) ** 0.5).requires_grad_(True)  # Xavier normal
    b = torch.zeros(k, n, requires_grad=True)
    opt = torch.optim.Adam([W, b], lr=cfg.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.steps, eta_min=cfg.lr * 0.1)

    for step in range(cfg.steps):
        x = sample_features(cfg.batch_size, prob, gen)
        loss = weighted_loss(W, b, x, importance).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 1000 == 0:
            logger.debug("step %d loss %.5f", step, loss.item() / k)

    with torch.no_grad():
        x = sample_features(cfg.eval_samples, prob, gen)
        final = weighted_loss(W, b, x, importance).view(len(cfg.sparsities), r)
        best = final.argmin(dim=1)
    results = []
    for s_idx, sparsity in enumerate(cfg.sparsities):
        inst = s_idx * r + int(best[s_idx])
        W_i = W[inst].detach().clone()
        results.append(
            SparsityResult(
                sparsity=sparsity,
                loss=float(final[s_idx, best[s_idx]]),
                W=W_i,
                b=b[inst].detach().clone(),
                **superposition_stats(W_i),
            )
        )
        logger.info(
            "sparsity %.3f: %d/%d features represented in %d dims", sparsity, results[-1].n_represented, n, m
        )
    return SuperpositionResult(config=cfg, results=results)
