"""ReLU sparse autoencoder trained with an L1 penalty (Bricken et al. 2023; Anthropic April 2024 update).

`f = ReLU((x - b_dec) @ W_enc + b_enc)`, `x_hat = f @ W_dec + b_dec`. Two ways to stop the L1
penalty from being dodged by shrinking `f` and growing `W_dec`, chosen by `decoder_norm`:

- `"unit"`: decoder rows are kept at unit norm (gradient projected onto the sphere, rows
  renormalised after each step); sparsity = `sum_i f_i`.
- `"weighted"`: decoder rows are free; sparsity = `sum_i f_i * ||W_dec[i]||`.

Loss = `mse + l1_coefficient * sparsity_scale * mean_batch(sparsity)`.

Example:
    >>> import torch
    >>> sae = ReluSAE(ReluSAEConfig(d_in=8, d_sae=32, l1_coefficient=1.0), seed=0)
    >>> sorted(sae(torch.randn(4, 8)).losses)
    ['l1', 'mse']
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from mechscope.dictionaries.base import Dictionary, DictionaryConfig, DictionaryOutput, register
from mechscope.dictionaries.errors import DictionaryConfigError


@dataclass
class ReluSAEConfig(DictionaryConfig):
    """`l1_coefficient` (>= 0) and `decoder_norm` (`"unit"` or `"weighted"`), see the module docstring."""

    l1_coefficient: float = 5.0

    architecture = "relu"
    decoder_norms = ("unit", "weighted")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.l1_coefficient >= 0:
            raise DictionaryConfigError(f"l1_coefficient must be >= 0, got {self.l1_coefficient!r}")


@register
class ReluSAE(Dictionary):
    """ReLU + L1 sparse autoencoder (or transcoder when `d_out != d_in`)."""

    config_class = ReluSAEConfig
    cfg: ReluSAEConfig

    def _encode_n(self, x_n: Tensor) -> Tensor:
        return self._preact(x_n, self.b_enc).relu_()  # in place: addmm does not keep its output

    def _forward_n(self, x_n: Tensor, target_n: Tensor, sparsity_scale: float, dead_mask: Tensor | None) -> DictionaryOutput:
        acts = self._encode_n(x_n)
        recon = torch.addmm(self.b_dec, acts, self.W_dec)
        per_latent = acts.sum(0)
        fired = per_latent.detach() > 0
        if self.cfg.decoder_norm == "weighted":
            per_latent = per_latent * self.W_dec.norm(dim=1)
        l1 = per_latent.sum() * (self.cfg.l1_coefficient * sparsity_scale / acts.shape[0])
        return self._dense_output(recon, target_n, acts, {"l1": l1}, fired)
