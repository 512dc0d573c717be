"""Ground-truth benchmark: activations built from known sparse features, and how well a dictionary finds them.

Data (`SyntheticData`): `n_features` random unit directions in `d_model` dimensions (more
features than dimensions, so they live in superposition). Feature `i` fires independently with
probability `p_i`: `frequency_law="log_uniform"` spaces them log-evenly from `p_max` down to
`p_min`; `"power"` gives the feature of rank `r` (random order) a frequency `~ r^-alpha` (Zipf).
With `true_l0` set, the probabilities are rescaled so a token holds `true_l0` active features on
average (each capped at 1). The first `n_correlated_pairs` pairs `(2j, 2j+1)` are correlated:
when `2j` fires, `2j+1` also fires with probability `pair_prob`. A firing feature has magnitude
`U(0.5, 1.5)` (non-negative). Each token is `x = offset + sum_i a_i * feature_i + noise`, with a
fixed random `offset` of norm `mean_offset` and `noise ~ N(0, noise_std^2 I)`.

Metrics, with `u_i` the true unit features and `w_j` the decoder rows normalised to unit norm:

- MMCS (mean max cosine similarity) `= mean_i max_j <u_i, w_j>`;
- fraction recovered `= mean_i [max_j <u_i, w_j> > 0.9]`.

The family (`FAMILY`): `builtin` (`d_model=32`, `n_features=64`, log-uniform `p` from 0.08 to
0.01, about 2.3 active features per token, 8 correlated pairs, `noise_std=0.01`) and members
that vary the number of features, the frequency law, correlation, offset, noise and the true L0
(2 to 32). `run_synthetic` trains with the library's defaults and only `k` (TopK, BatchTopK) or
`target_l0` (penalty architectures) set to the member's true L0; `d_sae = 2 * n_features`.
`scripts/synthetic_family.py` runs every architecture on every member and writes the table of
docs/dictionaries.md.

Example:
    >>> result = run_synthetic("topk", seed=0, steps=20)  # doctest: +SKIP
    >>> sorted(result)[:3]  # doctest: +SKIP
    ['architecture', 'batch_size', 'd_model']
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

from mechscope.dictionaries.base import Dictionary, make_dictionary
from mechscope.dictionaries.metrics import explained_variance, mean_l0
from mechscope.dictionaries.trainer import Trainer, TrainerConfig

logger = logging.getLogger(__name__)

SPARSITY_BY_K = ("topk", "batchtopk")


@dataclass
class SyntheticData:
    """Generator of synthetic activations with known features (see the module docstring).

    Example:
        >>> data = SyntheticData(d_model=8, n_features=16, n_correlated_pairs=2, seed=0)
        >>> data.features.shape, data.sample(5).shape
        (torch.Size([16, 8]), torch.Size([5, 8]))
        >>> 0 < data.expected_l0 < 16
        True
    """

    d_model: int = 32
    n_features: int = 64
    p_max: float = 0.08
    p_min: float = 0.01
    n_correlated_pairs: int = 8
    pair_prob: float = 0.5
    noise_std: float = 0.01
    seed: int = 0
    frequency_law: str = "log_uniform"
    alpha: float = 1.0
    true_l0: float | None = None
    mean_offset: float = 0.0

    def __post_init__(self) -> None:
        if self.n_correlated_pairs * 2 > self.n_features:
            raise ValueError("n_correlated_pairs * 2 must not exceed n_features")
        if self.frequency_law not in ("log_uniform", "power"):
            raise ValueError(f"frequency_law must be 'log_uniform' or 'power', got {self.frequency_law!r}")
        gen = torch.Generator().manual_seed(self.seed)
        f = torch.randn(self.n_features, self.d_model, generator=gen)
        self.features = f / f.norm(dim=1, keepdim=True)  # [n_features, d_model]
        ranks = torch.randperm(self.n_features, generator=gen).double()
        if self.frequency_law == "power":
            probs = (ranks + 1) ** -self.alpha * self.p_max
        else:
            span = ranks / max(self.n_features - 1, 1)
            probs = torch.exp(torch.log(torch.tensor(self.p_max, dtype=torch.float64)) * (1 - span)
                              + torch.log(torch.tensor(self.p_min, dtype=torch.float64)) * span)
        if self.true_l0 is not None:
            probs = self._rescale(probs, float(self.true_l0))
        self.probs = probs.float()
        offset = torch.randn(self.d_model, generator=gen)
        self.offset = offset / offset.norm() * self.mean_offset
        self._gen = gen

    def _rescale(self, probs: Tensor, l0: float) -> Tensor:
        """Scale `probs` (capped at 1) so that `expected_l0` equals `l0` (bisection on the factor)."""
        lo, hi = 0.0, 1.0
        while self._expected(torch.clamp(probs * hi, max=1.0)) < l0:
            hi *= 2
            if hi > 1e9:
                raise ValueError(f"true_l0={l0} is more than n_features={self.n_features} can give")
        for _ in range(60):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if self._expected(torch.clamp(probs * mid, max=1.0)) < l0 else (lo, mid)
        return torch.clamp(probs * hi, max=1.0)

    def _with_pairs(self, probs: Tensor) -> Tensor:
        """Firing probabilities once correlation is applied: a follower also fires with its lead."""
        pairs = 2 * self.n_correlated_pairs
        out = probs.clone()
        lead, follow = probs[0:pairs:2], probs[1:pairs:2]
        out[1:pairs:2] = follow + (1 - follow) * lead * self.pair_prob
        return out

    def _expected(self, probs: Tensor) -> float:
        return float(self._with_pairs(probs).sum())

    def probs_with_pairs(self) -> Tensor:
        """Each feature's firing probability `[n_features]`, correlation included."""
        return self._with_pairs(self.probs.double()).float()

    @property
    def expected_l0(self) -> float:
        """Mean number of active features per token."""
        return self._expected(self.probs.double())

    def sample(self, batch: int) -> Tensor:
        """A batch `[batch, d_model]` of activations (advances the internal generator)."""
        gen = self._gen
        fires = torch.rand(batch, self.n_features, generator=gen) < self.probs
        if self.n_correlated_pairs:
            lead = fires[:, 0 : 2 * self.n_correlated_pairs : 2]
            follow = torch.rand(lead.shape, generator=gen) < self.pair_prob
            fires[:, 1 : 2 * self.n_correlated_pairs : 2] |= lead & follow
        mags = 0.5 + torch.rand(batch, self.n_features, generator=gen)
        x = (fires * mags) @ self.features + self.offset
        return x + self.noise_std * torch.randn(batch, self.d_model, generator=gen)

    def batches(self, batch: int, n: int) -> Iterator[Tensor]:
        """`n` batches from `sample`."""
        for _ in range(n):
            yield self.sample(batch)


# The family of benchmarks the defaults are measured on. Keys: SyntheticData fields.
FAMILY: dict[str, dict[str, Any]] = {
    "builtin": {},
    "power-l4-offset": {"n_features": 96, "frequency_law": "power", "alpha": 0.8, "true_l0": 4,
                        "mean_offset": 3.0, "n_correlated_pairs": 8},
    "wide-l2": {"d_model": 24, "n_features": 128, "true_l0": 2, "n_correlated_pairs": 0, "p_max": 0.05,
                "p_min": 0.005},
    "noisy-l8": {"d_model": 48, "n_features": 128, "true_l0": 8, "noise_std": 0.05, "n_correlated_pairs": 16,
                 "pair_prob": 0.8},
    "dense-l16": {"d_model": 64, "n_features": 192, "true_l0": 16, "frequency_law": "power", "alpha": 0.5},
    "dense-l32": {"d_model": 192, "n_features": 384, "true_l0": 32, "frequency_law": "power", "alpha": 0.3,
                  "mean_offset": 2.0, "n_correlated_pairs": 0},
}


def family_member(name: str, seed: int = 0) -> SyntheticData:
    """The family member `name` (see `FAMILY`) with its features drawn from `seed`.

    Example:
        >>> round(family_member("wide-l2").expected_l0, 6)
        2.0
    """
    if name not in FAMILY:
        from mechscope.core.errors import unknown_name_message

        raise ValueError(unknown_name_message("synthetic member", name, FAMILY))
    return SyntheticData(seed=seed, **FAMILY[name])


def max_cosine_similarities(true_features: Tensor, decoder: Tensor) -> Tensor:
    """For each true feature `u_i` (`[n_features, d]`), `max_j cos(u_i, w_j)` over decoder rows `[d_sae, d]`.

    Example:
        >>> true = torch.eye(2)
        >>> [round(v, 4) for v in max_cosine_similarities(true, torch.tensor([[2.0, 0.0], [1.0, 1.0]])).tolist()]
        [1.0, 0.7071]
    """
    u = true_features / true_features.norm(dim=1, keepdim=True)
    w = decoder / decoder.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return (u @ w.t()).max(dim=1).values


def mean_max_cosine_similarity(true_features: Tensor, decoder: Tensor) -> float:
    """MMCS `= mean_i max_j <u_i, w_j>` (unit vectors).

    Example:
        >>> round(mean_max_cosine_similarity(torch.eye(2), torch.tensor([[1.0, 0.0], [1.0, 1.0]])), 6)
        0.853553
    """
    return float(max_cosine_similarities(true_features, decoder).mean())


def fraction_recovered(true_features: Tensor, decoder: Tensor, threshold: float = 0.9) -> float:
    """`mean_i [max_j <u_i, w_j> > threshold]` (unit vectors).

    Example:
        >>> fraction_recovered(torch.eye(2), torch.tensor([[1.0, 0.0], [1.0, 1.0]]))
        0.5
    """
    return float((max_cosine_similarities(true_features, decoder) > threshold).float().mean())


def run_synthetic(
    architecture: str,
    seed: int = 0,
    *,
    steps: int = 1500,
    batch_size: int = 512,
    d_sae: int | None = None,
    lr: float | None = None,
    data: SyntheticData | None = None,
    dictionary_kwargs: dict[str, Any] | None = None,
    trainer_kwargs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train `architecture` on synthetic data with the library's defaults and measure feature recovery.

    Only the sparsity is given: `k = ceil(true L0)` for TopK and BatchTopK, `target_l0 = true L0`
    for the penalty architectures (override either through the kwargs). `d_sae` defaults to
    `2 * n_features`. Returns `architecture`, `mmcs`, `fraction_recovered`, the final `l0` and
    `explained_variance` (on a fresh evaluation batch, in eval mode) and every setting used.

    Example:
        >>> data = SyntheticData(d_model=8, n_features=16, n_correlated_pairs=2, seed=0)
        >>> out = run_synthetic("topk", data=data, steps=20, batch_size=64)
        >>> out["architecture"], out["steps"], out["d_sae"], 0 <= out["fraction_recovered"] <= 1
        ('topk', 20, 32, True)
    """
    data = data or SyntheticData(seed=seed)
    true_l0 = data.expected_l0
    d_sae = d_sae or 2 * data.n_features
    sparsity: dict[str, Any] = {"k": math.ceil(true_l0 - 1e-6)} if architecture in SPARSITY_BY_K else {}
    arch_kwargs = {**sparsity, **(dictionary_kwargs or {})}
    sae: Dictionary = make_dictionary(architecture, d_in=data.d_model, d_sae=d_sae, seed=seed, **arch_kwargs)
    tcfg = {"total_steps": steps, "lr": lr, "seed": seed, "progress": False, "log_every": steps,
            **({"target_l0": true_l0} if sae.cfg.sparsity_coefficient else {}), **(trainer_kwargs or {})}
    result = Trainer(sae, TrainerConfig(**tcfg)).fit(data.batches(batch_size, steps))
    sae.eval()
    with torch.no_grad():
        x = data.sample(4096)
        out = sae(x)
    summary = {
        "architecture": architecture,
        "mmcs": mean_max_cosine_similarity(data.features, sae.W_dec.detach()),
        "fraction_recovered": fraction_recovered(data.features, sae.W_dec.detach()),
        "l0": mean_l0(out.feature_acts), "true_l0": true_l0,
        "explained_variance": explained_variance(x, out.reconstruction),
        "seed": seed, "steps": result.steps, "batch_size": batch_size, "d_sae": d_sae, "lr": lr,
        "dictionary_kwargs": arch_kwargs, "trainer_kwargs": {k: v for k, v in tcfg.items() if k != "progress"},
        "final_config": sae.cfg.to_dict(), "data": {k: v for k, v in asdict(data).items()},
    }
    logger.info("synthetic %s: mmcs %.3f, recovered %.3f", architecture, summary["mmcs"], summary["fraction_recovered"])
    return summary
