"""TopK sparse autoencoder (Gao et al. 2024) with the AuxK loss for dead latents.

`f = TopK_k(ReLU-free pre-activations) then ReLU`, `x_hat = f @ W_dec + b_dec`. No sparsity
penalty: exactly `k` latents are active per token. Training is sparse: pre-activations are
computed densely once without gradients, the `k` winners are re-attached to autograd through
`sparse_ops.gather_preacts`, and decoding is a CSR sparse-dense matmul (`sparse_ops.sparse_decode`),
so the decoder forward and both weight gradients cost `O(batch * k * d)`; only the encoder forward
is dense.

AuxK (dead latents only, `dead_mask` given): the `aux_k` largest dead pre-activations, raw
(no ReLU, as in OpenAI's and SAELens's implementations, so a latent whose pre-activation never
becomes positive still gets a gradient), reconstruct the residual `e = target - x_hat` (detached)
without the decoder bias: `e_hat = z_dead @ W_dec`;
`aux = aux_k_coefficient * mean_b ||e_hat - e||^2 / mean_b ||e - mean_b(e)||^2`.

Example:
    >>> import torch
    >>> sae = TopKSAE(TopKSAEConfig(d_in=8, d_sae=32, k=3), seed=0)
    >>> (sae.encode(torch.randn(2, 8)) > 0).sum(-1).tolist()
    [3, 3]
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from mechscope.dictionaries.base import Dictionary, DictionaryConfig, DictionaryOutput, SparseCodes, register
from mechscope.dictionaries.errors import DictionaryConfigError
from mechscope.dictionaries.sparse_ops import SparsePattern, gather_preacts, sparse_decode


@dataclass
class TopKSAEConfig(DictionaryConfig):
    """`k` active latents per token; `aux_k` (default `d_in // 2`) and `aux_k_coefficient` for AuxK.

    Example:
        >>> cfg = TopKSAEConfig(d_in=8, d_sae=32, k=4)
        >>> cfg.aux_k, cfg.architecture
        (4, 'topk')
        >>> TopKSAEConfig(d_in=8, d_sae=32, k=40)
        Traceback (most recent call last):
        ...
        mechscope.dictionaries.errors.DictionaryConfigError: k must be in 1..d_sae=32, got 40
    """

    k: int = 32
    aux_k: int | None = None
    aux_k_coefficient: float = 1 / 32

    architecture = "topk"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.k <= self.d_sae:
            raise DictionaryConfigError(f"k must be in 1..d_sae={self.d_sae}, got {self.k!r}")
        if self.aux_k is None:
            self.aux_k = max(1, self.d_in // 2)
        if self.aux_k <= 0 or self.aux_k_coefficient < 0:
            raise DictionaryConfigError("aux_k must be positive and aux_k_coefficient >= 0")


@register
class TopKSAE(Dictionary):
    """TopK sparse autoencoder (or transcoder when `d_out != d_in`).

    Example:
        >>> sae = TopKSAE(TopKSAEConfig(d_in=8, d_sae=32, k=3), seed=0).train()
        >>> out = sae(torch.randn(4, 8), dead_mask=torch.ones(32, dtype=torch.bool))
        >>> sorted(out.losses), out.l0.item()
        (['aux_k', 'mse'], 3.0)
    """

    config_class = TopKSAEConfig
    cfg: TopKSAEConfig
    uses_aux_k = True

    @torch.no_grad()
    def _preacts(self, x_n: Tensor) -> Tensor:
        """Dense pre-activations `[batch, d_sae]`, without gradients."""
        return self._preact(x_n, self.b_enc)

    def _select(self, pre: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Chosen entries `(rows, cols, values)` of the pre-activations."""
        vals, cols = pre.topk(self.cfg.k, dim=-1, sorted=False)
        rows = torch.arange(pre.shape[0], device=pre.device).repeat_interleave(self.cfg.k)
        return rows, cols.reshape(-1), vals.reshape(-1)

    def _encode_n(self, x_n: Tensor) -> Tensor:
        pre = self._preact(x_n, self.b_enc)
        vals, cols = pre.topk(self.cfg.k, dim=-1, sorted=False)
        return torch.zeros_like(pre).scatter_(-1, cols, vals.relu())

    def _encode_sparse_n(self, x_n: Tensor) -> SparseCodes:
        pre = self._preact(x_n, self.b_enc)
        vals, cols = pre.topk(self.cfg.k, dim=-1, sorted=False)
        cols, order = cols.sort(dim=-1)
        vals = vals.gather(-1, order).relu_()
        active = vals != 0
        rows = torch.arange(pre.shape[0], device=pre.device)[:, None].expand_as(cols)[active]
        return SparseCodes(rows, cols[active], vals[active], pre.shape[0], self.cfg.d_sae)

    def _sparse_acts(self, x_n: Tensor, pattern: SparsePattern, values: Tensor) -> Tensor:
        pre = gather_preacts(x_n, self.b_dec, self.W_enc, self.b_enc, values, pattern,
                             bool(self.cfg.apply_b_dec_to_input))
        return torch.relu(pre)

    def _forward_n(self, x_n: Tensor, target_n: Tensor, sparsity_scale: float, dead_mask: Tensor | None) -> DictionaryOutput:
        batch = x_n.shape[0]
        pre = self._preacts(x_n)
        rows, cols, values = self._select(pre)
        pattern = SparsePattern.build(rows, cols, batch, self.cfg.d_sae)
        acts = self._sparse_acts(x_n, pattern, values)
        recon = sparse_decode(pattern, acts, self.W_dec) + self.b_dec
        mse = self._mse(recon, target_n)
        losses = {"mse": mse}
        if dead_mask is not None and self.training:
            losses["aux_k"] = self._aux_k_loss(x_n, pre, dead_mask, (target_n - recon).detach())
        with torch.no_grad():
            fired = torch.zeros(self.cfg.d_sae, dtype=torch.bool, device=acts.device)
            fired[cols[acts > 0]] = True
        codes = SparseCodes(rows, cols, acts, batch, self.cfg.d_sae)
        return DictionaryOutput(recon, sum(losses.values()), losses, fired, sparse_acts=codes)  # type: ignore[arg-type]

    def _aux_k_loss(self, x_n: Tensor, pre: Tensor, dead_mask: Tensor, residual: Tensor) -> Tensor:
        n_dead = int(dead_mask.sum())
        if n_dead == 0 or self.cfg.aux_k_coefficient == 0:
            return residual.new_zeros(())
        k_aux = min(int(self.cfg.aux_k), n_dead)  # type: ignore[arg-type]
        vals, cols = pre.masked_fill(~dead_mask, float("-inf")).topk(k_aux, dim=-1, sorted=False)
        rows = torch.arange(pre.shape[0], device=pre.device).repeat_interleave(k_aux)
        pattern = SparsePattern.build(rows, cols.reshape(-1), pre.shape[0], self.cfg.d_sae)
        raw = gather_preacts(x_n, self.b_dec, self.W_enc, self.b_enc, vals.reshape(-1), pattern,
                             bool(self.cfg.apply_b_dec_to_input))
        e_hat = sparse_decode(pattern, raw, self.W_dec)
        denom = (residual - residual.mean(0)).pow(2).sum(-1).mean().clamp_min(1e-12)
        return self.cfg.aux_k_coefficient * self._mse(e_hat, residual) / denom
