"""Gated sparse autoencoder (Rajamanoharan et al. 2024, "Improving dictionary learning with gated SAEs").

Shared encoder directions, separate gate and magnitude paths:
`z = (x - b_dec) @ W_enc`, `pi_gate = z + b_gate`, `pi_mag = z * exp(r_mag) + b_mag`,
`f = H(pi_gate) * ReLU(pi_mag)`, `x_hat = f @ W_dec + b_dec`. Here `b_gate` is the base
class's `b_enc`.

Loss = `mse + l1_coefficient * sparsity_scale * mean_b sum_i ReLU(pi_gate_i) * w_i + aux`, with
`w_i = ||W_dec[i]||` (`decoder_norm="weighted"`) or 1 (`"unit"`), and
`aux = mean_b ||ReLU(pi_gate) @ sg(W_dec) + sg(b_dec) - x||^2` (sg: stop-gradient), which trains
the gate path to reconstruct on its own.

Example:
    >>> import torch
    >>> sae = GatedSAE(GatedSAEConfig(d_in=8, d_sae=32), seed=0)
    >>> sorted(sae(torch.randn(4, 8)).losses)
    ['aux', 'l1', 'mse']
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from mechscope.dictionaries.base import Dictionary, DictionaryConfig, DictionaryOutput, register
from mechscope.dictionaries.errors import DictionaryConfigError


@dataclass
class GatedSAEConfig(DictionaryConfig):
    """`l1_coefficient` on the gate pre-activations; `decoder_norm` `"unit"` or `"weighted"`.

    The default 3.0 is where the L0 controller ends on the synthetic family (1.6 to 5.5, about 3 at
    the median; docs/dictionaries.md): from 1.0, dense-l16 recovered 0.89 of its features, from 3.0 0.92.

    Example:
        >>> cfg = GatedSAEConfig(d_in=4, d_sae=16)
        >>> cfg.architecture, cfg.l1_coefficient, cfg.decoder_norm
        ('gated', 3.0, 'unit')
    """

    l1_coefficient: float = 3.0

    architecture = "gated"
    decoder_norms = ("unit", "weighted")
    sparsity_coefficient = "l1_coefficient"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.l1_coefficient >= 0:
            raise DictionaryConfigError(f"l1_coefficient must be >= 0, got {self.l1_coefficient!r}")


@register
class GatedSAE(Dictionary):
    """Gated sparse autoencoder (or transcoder when `d_out != d_in`).

    Example:
        >>> sae = GatedSAE(GatedSAEConfig(d_in=4, d_sae=16), seed=0)
        >>> out = sae(torch.randn(3, 4))
        >>> out.reconstruction.shape, out.feature_acts.shape
        (torch.Size([3, 4]), torch.Size([3, 16]))
    """

    config_class = GatedSAEConfig
    cfg: GatedSAEConfig

    def _init_extra(self, gen: torch.Generator | None) -> None:
        self.b_mag = nn.Parameter(torch.zeros(self.cfg.d_sae, dtype=self.W_enc.dtype))
        self.r_mag = nn.Parameter(torch.zeros(self.cfg.d_sae, dtype=self.W_enc.dtype))

    @torch.no_grad()
    def reset_latents(self, idx: Tensor, pre: Tensor) -> list[tuple[nn.Parameter, tuple[Any, ...]]]:
        """A resampled latent's magnitude path restarts as its gate's (`r_mag = b_mag = 0`)."""
        self.r_mag[idx] = 0.0
        self.b_mag[idx] = 0.0
        return [(self.r_mag, (idx,)), (self.b_mag, (idx,))]

    def _paths(self, x_n: Tensor) -> tuple[Tensor, Tensor]:
        z = self._preact(x_n, torch.zeros_like(self.b_enc))
        return z + self.b_enc, z * self.r_mag.exp() + self.b_mag

    def _encode_n(self, x_n: Tensor) -> Tensor:
        pi_gate, pi_mag = self._paths(x_n)
        return (pi_gate > 0) * torch.relu(pi_mag)

    def _forward_n(self, x_n: Tensor, target_n: Tensor, sparsity_scale: float, dead_mask: Tensor | None) -> DictionaryOutput:
        pi_gate, pi_mag = self._paths(x_n)
        acts = (pi_gate > 0) * torch.relu(pi_mag)
        recon = torch.addmm(self.b_dec, acts, self.W_dec)
        gate_acts = torch.relu(pi_gate)
        per_latent = gate_acts.sum(0)
        if self.cfg.decoder_norm == "weighted":
            per_latent = per_latent * self.W_dec.norm(dim=1)
        l1 = per_latent.sum() * (self.cfg.l1_coefficient * sparsity_scale / x_n.shape[0])
        aux = self._mse(torch.addmm(self.b_dec.detach(), gate_acts, self.W_dec.detach()), target_n)
        return self._dense_output(recon, target_n, acts, {"l1": l1, "aux": aux})
