"""BatchTopK sparse autoencoder (Bussmann et al. 2024).

Training keeps the `k * batch` largest ReLU'd pre-activations of the whole batch (so tokens
vary in how many latents they use, `k` on average) and tracks a threshold: the running mean
`theta <- (1 - threshold_lr) * theta + threshold_lr * m` of `m`, the smallest activation kept in
each batch. At evaluation (`model.eval()`) the dictionary is a JumpReLU with that threshold:
`f = pre * (pre > theta)`, per token and independent of the batch. AuxK as in `topk`.
Under DistributedDataParallel each rank selects within its own slice of the batch (so the
selection equals a single process with the per-rank batch size); the threshold statistic is the
minimum over ranks.

Example:
    >>> import torch
    >>> sae = BatchTopKSAE(BatchTopKSAEConfig(d_in=8, d_sae=32, k=3), seed=0)
    >>> int(sae(torch.randn(4, 8)).l0)
    3
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from mechscope.dictionaries.base import DictionaryOutput, SparseCodes, register
from mechscope.dictionaries.errors import DictionaryConfigError
from mechscope.dictionaries.topk import TopKSAE, TopKSAEConfig


@dataclass
class BatchTopKSAEConfig(TopKSAEConfig):
    """`k` is the mean number of active latents per token; `threshold_lr` the threshold's EMA rate."""

    threshold_lr: float = 0.01

    architecture = "batchtopk"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.threshold_lr <= 1:
            raise DictionaryConfigError(f"threshold_lr must be in (0, 1], got {self.threshold_lr!r}")


@register
class BatchTopKSAE(TopKSAE):
    """BatchTopK at training time, JumpReLU with the learned threshold at evaluation."""

    config_class = BatchTopKSAEConfig  # type: ignore[assignment]
    cfg: BatchTopKSAEConfig  # type: ignore[assignment]

    def _init_extra(self, gen: torch.Generator | None) -> None:
        # -1 marks "not measured yet"; the first batch sets it directly.
        self.threshold: Tensor
        self.register_buffer("threshold", torch.tensor(-1.0, dtype=torch.float64))
        self._last_min: Tensor | None = None

    def _select(self, pre: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        flat = pre.relu().reshape(-1)
        _, idx = flat.topk(self.cfg.k * pre.shape[0], sorted=False)
        idx = idx.sort().values  # row-major order: rows ascending, as sparse patterns need
        return idx // pre.shape[1], idx % pre.shape[1], flat[idx]

    def _encode_n(self, x_n: Tensor) -> Tensor:
        pre = self._preact(x_n, self.b_enc)
        if self.training:
            rows, cols, vals = self._select(pre)
            return SparseCodes(rows, cols, vals, pre.shape[0], pre.shape[1]).to_dense()
        return pre * (pre > self.threshold.to(pre.dtype).clamp_min(0))

    def _forward_n(self, x_n: Tensor, target_n: Tensor, sparsity_scale: float, dead_mask: Tensor | None) -> DictionaryOutput:
        if not self.training:
            acts = self._encode_n(x_n)
            recon = torch.addmm(self.b_dec, acts, self.W_dec)
            return self._dense_output(recon, target_n, acts, {})
        out = super()._forward_n(x_n, target_n, sparsity_scale, dead_mask)
        assert out.sparse_acts is not None
        with torch.no_grad():
            vals = out.sparse_acts.vals
            positive = vals[vals > 0]
            self._last_min = positive.min().double() if positive.numel() else None
        return out

    @torch.no_grad()
    def after_optimizer_step(self, reduce_min: Any = None) -> None:
        """Renormalise decoder rows and move the threshold towards this batch's smallest kept activation."""
        super().after_optimizer_step(reduce_min)
        m = self._last_min
        if m is None:
            return
        if reduce_min is not None:
            m = reduce_min(m)
        lr = self.cfg.threshold_lr
        new = m if float(self.threshold) < 0 else (1 - lr) * self.threshold + lr * m
        self.threshold.copy_(new)
        self._last_min = None

