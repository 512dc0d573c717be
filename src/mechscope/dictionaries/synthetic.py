"""Ground-truth benchmark: activations built from known sparse features, and how well a dictionary finds them.

Data (`SyntheticData`): `n_features` random unit directions in `d_model` dimensions (more
features than dimensions, so they live in superposition). Feature `i` fires independently with
probability `p_i`, log-spaced from `p_max` down to `p_min` (varied frequencies); the first
`n_correlated_pairs` pairs `(2j, 2j+1)` are correlated: when `2j` fires, `2j+1` also fires with
probability `pair_prob`. A firing feature has magnitude `U(0.5, 1.5)` (non-negative). Each token is
`x = sum_i a_i * feature_i + noise`, `noise ~ N(0, noise_std^2 I)`.

Metrics, with `u_i` the true unit features and `w_j` the decoder rows normalised to unit norm:

- MMCS (mean max cosine similarity) `= mean_i max_j <u_i, w_j>`;
- fraction recovered `= mean_i [max_j <u_i, w_j> > 0.9]`.

Default setting (used by the test suite): `d_model=32`, `n_features=64`, `d_sae=128`,
`p` log-spaced from 0.08 to 0.01 (about 2.3 active features per token), 8 correlated pairs
with `pair_prob=0.5`, `noise_std=0.01`; 1500 Adam steps of 512 tokens, seed 0; architecture
settings in `ARCHITECTURE_DEFAULTS` (TopK / BatchTopK `k=3`, BatchTopK AuxK coefficient 0.25). On this setting TopK, BatchTopK and
JumpReLU recover at least 90% of the features, ReLU-L1 at least 80%.

Example:
    >>> result = run_synthetic("topk", seed=0, steps=20)  # doctest: +SKIP
    >>> sorted(result)[:3]  # doctest: +SKIP
    ['architecture', 'batch_size', 'd_model']
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

from mechscope.dictionaries.base import Dictionary, make_dictionary
from mechscope.dictionaries.trainer import Trainer, TrainerConfig

logger = logging.getLogger(__name__)

ARCHITECTURE_DEFAULTS: dict[str, dict[str, Any]] = {
    "relu": {"l1_coefficient": 1.0},
    "topk": {"k": 3},
    "batchtopk": {"k": 3, "aux_k_coefficient": 0.25},
    "jumprelu": {"l0_coefficient": 2.0, "bandwidth": 0.05, "threshold_init": 0.1},
    "gated": {"l1_coefficient": 3.0},
}


@dataclass
class SyntheticData:
    """Generator of synthetic activations with known features (see the module docstring)."""

    d_model: int = 32
    n_features: int = 64
    p_max: float = 0.08
    p_min: float = 0.01
    n_correlated_pairs: int = 8
    pair_prob: float = 0.5
    noise_std: float = 0.01
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n_correlated_pairs * 2 > self.n_features:
            raise ValueError("n_correlated_pairs * 2 must not exceed n_features")
        gen = torch.Generator().manual_seed(self.seed)
        f = torch.randn(self.n_features, self.d_model, generator=gen)
        self.features = f / f.norm(dim=1, keepdim=True)  # [n_features, d_model]
        ranks = torch.randperm(self.n_features, generator=gen).double()
        span = ranks / max(self.n_features - 1, 1)
        self.probs = torch.exp(torch.log(torch.tensor(self.p_max)) * (1 - span) + torch.log(torch.tensor(self.p_min)) * span).float()
        self._gen = gen

    def sample(self, batch: int) -> Tensor:
        """A batch `[batch, d_model]` of activations (advances the internal generator)."""
        gen = self._gen
        fires = torch.rand(batch, self.n_features, generator=gen) < self.probs
        if self.n_correlated_pairs:
            lead = fires[:, 0 : 2 * self.n_correlated_pairs : 2]
            follow = torch.rand(lead.shape, generator=gen) < self.pair_prob
            fires[:, 1 : 2 * self.n_correlated_pairs : 2] |= lead & follow
        mags = 0.5 + torch.rand(batch, self.n_features, generator=gen)
        x = (fires * mags) @ self.features
        return x + self.noise_std * torch.randn(batch, self.d_model, generator=gen)

    def batches(self, batch: int, n: int) -> Iterator[Tensor]:
        """`n` batches from `sample`."""
        for _ in range(n):
            yield self.sample(batch)


def max_cosine_similarities(true_features: Tensor, decoder: Tensor) -> Tensor:
    """For each true feature `u_i` (`[n_features, d]`), `max_j cos(u_i, w_j)` over decoder rows `[d_sae, d]`."""
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
    d_sae: int = 128,
    lr: float = 3e-3,
    data: SyntheticData | None = None,
    dictionary_kwargs: dict[str, Any] | None = None,
    trainer_kwargs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train `architecture` on synthetic data and measure feature recovery.

    Returns `architecture`, `mmcs`, `fraction_recovered`, the final `l0` and
    `explained_variance` (on a fresh evaluation batch, in eval mode) and every setting used.
    """
    data = data or SyntheticData(seed=seed)
    arch_kwargs = {**ARCHITECTURE_DEFAULTS.get(architecture, {}), **(dictionary_kwargs or {})}
    sae: Dictionary = make_dictionary(architecture, d_in=data.d_model, d_sae=d_sae, seed=seed, **arch_kwargs)
    tcfg = {"total_steps": steps, "lr": lr, "lr_warmup_steps": steps // 20, "sparsity_warmup_steps": steps // 10,
            "dead_window_tokens": 50 * batch_size, "seed": seed, "progress": False, "log_every": steps,
            "resample_every": None if sae.uses_aux_k else max(steps // 6, 1), **(trainer_kwargs or {})}
    result = Trainer(sae, TrainerConfig(**tcfg)).fit(data.batches(batch_size, steps))
    sae.eval()
    with torch.no_grad():
        x = data.sample(4096)
        out = sae(x)
    from mechscope.dictionaries.metrics import explained_variance, mean_l0

    summary = {
        "architecture": architecture,
        "mmcs": mean_max_cosine_similarity(data.features, sae.W_dec.detach()),
        "fraction_recovered": fraction_recovered(data.features, sae.W_dec.detach()),
        "l0": mean_l0(out.feature_acts),
        "explained_variance": explained_variance(x, out.reconstruction),
        "seed": seed, "steps": result.steps, "batch_size": batch_size, "d_sae": d_sae, "lr": lr,
        "dictionary_kwargs": arch_kwargs, "data": {k: v for k, v in asdict(data).items()},
    }
    logger.info("synthetic %s: mmcs %.3f, recovered %.3f", architecture, summary["mmcs"], summary["fraction_recovered"])
    return summary
