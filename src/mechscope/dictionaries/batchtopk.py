"""BatchTopK sparse autoencoder (Bussmann et al. 2024).

Training keeps the `k * batch` largest ReLU'd pre-activations of the whole batch (so tokens
vary in how many latents they use, `k` on average) and tracks a threshold: the running mean
`theta <- (1 - threshold_lr) * theta + threshold_lr * m` of `m`, the smallest activation kept in
each batch. At evaluation (`model.eval()`) the dictionary is a JumpReLU with that threshold:
`f = pre * (pre > theta)`, per token and independent of the batch. AuxK as in `topk`.

Warm-up: for the first `per_token_warmup` fraction of the trainer's steps (default 0.8) the
selection is TopK's, `k` per token, and the threshold is not tracked. Selecting over the batch from
the first step left many latents silent on the `dense-l16` synthetic member (1,500 steps: 0.05 of
the features recovered); with a 60% warm-up 0.87, with 80% 0.94 (docs/dictionaries.md). Outside the `Trainer`
(`training_progress` 1.0) there is no warm-up.

Selection without a full sort of `batch * d_sae` values: each token's `c = min(d_sae, 4k)`
largest pre-activations are the candidates (a per-row top-c, parallel over rows); the batch
threshold `t` is the `(k * batch)`-th largest candidate, and the entries kept are the positive
candidates `>= t`. This is exact whenever every token's smallest candidate lies below `t`
(then no non-candidate can reach `t`); otherwise (a token with more than `c` winners) the
threshold is taken over all values instead. Under `torchrun` (the trainer sets `distributed`)
the candidates of every rank are gathered, so `t` is the global batch's threshold and two
processes select what one process selects on the whole batch; the threshold statistic is the
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
import torch.distributed as dist
from torch import Tensor

from mechscope.dictionaries.base import Dictionary, DictionaryOutput, SparseCodes, register
from mechscope.dictionaries.errors import DictionaryConfigError
from mechscope.dictionaries.topk import TopKSAE, TopKSAEConfig


@dataclass
class BatchTopKSAEConfig(TopKSAEConfig):
    """`k` is the mean number of active latents per token; `threshold_lr` the threshold's EMA rate.

    Example:
        >>> cfg = BatchTopKSAEConfig(d_in=8, d_sae=32, k=3)
        >>> cfg.architecture, cfg.threshold_lr, cfg.per_token_warmup
        ('batchtopk', 0.01, 0.8)
    """

    threshold_lr: float = 0.01
    per_token_warmup: float = 0.8

    architecture = "batchtopk"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.threshold_lr <= 1:
            raise DictionaryConfigError(f"threshold_lr must be in (0, 1], got {self.threshold_lr!r}")
        if not 0 <= self.per_token_warmup < 1:
            raise DictionaryConfigError(f"per_token_warmup must be in [0, 1), got {self.per_token_warmup!r}")


@register
class BatchTopKSAE(TopKSAE):
    """BatchTopK at training time, JumpReLU with the learned threshold at evaluation.

    Example:
        >>> sae = BatchTopKSAE(BatchTopKSAEConfig(d_in=8, d_sae=32, k=3), seed=0)
        >>> sae.threshold.item()                                  # not measured yet
        -1.0
        >>> _ = sae.train()(torch.randn(4, 8))
        >>> sae.after_optimizer_step()
        >>> sae.threshold.item() > 0                              # set from the first batch
        True
    """

    config_class = BatchTopKSAEConfig  # type: ignore[assignment]
    cfg: BatchTopKSAEConfig  # type: ignore[assignment]

    def _init_extra(self, gen: torch.Generator | None) -> None:
        # -1 marks "not measured yet"; the first batch sets it directly.
        self.threshold: Tensor
        self.register_buffer("threshold", torch.tensor(-1.0, dtype=torch.float64))
        self._last_min: Tensor | None = None

    def _warming_up(self) -> bool:
        return self.training_progress < self.cfg.per_token_warmup

    def _select(self, pre: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        if self._warming_up():
            return super()._select(pre)
        batch, d_sae = pre.shape
        c = min(d_sae, 4 * self.cfg.k)
        cand, cand_cols = pre.topk(c, dim=-1, sorted=False)
        cand = cand.relu_()
        thr = self._threshold(cand.reshape(-1), self.cfg.k * batch)
        if c < d_sae and self._any(cand.amin(-1) >= thr):  # a token may hold winners beyond its candidates
            cand, cand_cols = pre.relu(), torch.arange(d_sae, device=pre.device).expand(batch, d_sae)
            thr = self._threshold(cand.reshape(-1), self.cfg.k * batch)
        keep = (cand >= thr) & (cand > 0)
        rows, j = keep.nonzero(as_tuple=True)  # row-major: rows ascending, as sparse patterns need
        return rows, cand_cols[rows, j], cand[rows, j]

    def _threshold(self, values: Tensor, n_local: int) -> Tensor:
        """The `n`-th largest of `values` over the (global) batch, `n = k * global batch`."""
        if self.distributed:
            parts = [torch.empty_like(values) for _ in range(dist.get_world_size())]
            dist.all_gather(parts, values.contiguous())
            values, n_local = torch.cat(parts), n_local * dist.get_world_size()
        return values.topk(min(n_local, values.numel()), sorted=False).values.min()

    def _any(self, flag: Tensor) -> bool:
        """`flag.any()`, agreed across ranks."""
        found = flag.any().to(torch.int64).reshape(1)
        if self.distributed:
            dist.all_reduce(found, op=dist.ReduceOp.MAX)
        return bool(found)

    _encode_sparse_n = Dictionary._encode_sparse_n  # a batch threshold, not TopK's per-token choice

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
        if self._warming_up():  # per-token winners say nothing about the batch threshold
            self._last_min = None
            return out
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

