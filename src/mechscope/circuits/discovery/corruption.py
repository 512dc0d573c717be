"""Corrupted source values: from paired prompts, zero, the mean over the dataset, or resampled prompts.

Each returns `[batch|1, pos|1, n_sources, d_model]` for a slice of pairs:

- `paired`: the sources of each pair's corrupt prompt;
- `zero`: zeros (zero ablation);
- `mean`: each source's mean over all clean prompts and their real positions;
- `resample`: the clean sources of another pair (a fixed random permutation; all clean
  prompts must then have the same length).

Example:
    >>> corrupt = Corruption(gm, pairs, "mean")            # doctest: +SKIP
    >>> corrupt.values(slice(0, 8)).shape                  # doctest: +SKIP
"""

from __future__ import annotations

import torch
from torch import Tensor

from mechscope.circuits.discovery.graph_run import GraphModel
from mechscope.circuits.discovery.tasks import Pairs
from mechscope.core.errors import MechscopeError, unknown_name_message

MODES = ("paired", "zero", "mean", "resample")


class Corruption:
    """Corrupted source values for `pairs` under one `mode` (see the module docstring).

    Example:
        >>> from mechscope.circuits.discovery.graph_run import GraphModel
        >>> from mechscope import HookedModel
        >>> from mechscope.circuits.discovery.induction import induction_pairs
        >>> from mechscope.toys.attn_only import AttnOnlyConfig, AttnOnlyForCausalLM
        >>> toy = AttnOnlyForCausalLM(AttnOnlyConfig(vocab_size=21, hidden_size=16, num_attention_heads=2))
        >>> gm, pairs = GraphModel(HookedModel(toy, name="toy")), induction_pairs(n=4, span=6, n_tokens=20)
        >>> Corruption(gm, pairs, "zero").values(slice(0, 2)).abs().sum()
        tensor(0.)
    """

    def __init__(self, gm: GraphModel, pairs: Pairs, mode: str = "paired", seed: int = 0,
                 batch_size: int = 16) -> None:
        if mode not in MODES:
            raise MechscopeError(unknown_name_message("corruption", mode, list(MODES)))
        self.gm, self.pairs, self.mode = gm, pairs, mode
        self._mean: Tensor | None = None
        self._perm: Tensor | None = None
        if mode == "mean":
            self._mean = self._dataset_mean(batch_size)
        if mode == "resample":
            if pairs.attention_mask is not None:
                raise MechscopeError("Resample corruption needs clean prompts of one length (no padding).")
            gen = torch.Generator().manual_seed(seed)
            n = len(pairs)
            perm = torch.randperm(n, generator=gen)
            # a permutation with no fixed point where possible: shift any pair that drew itself
            self._perm = torch.where(perm == torch.arange(n), (perm + 1) % n, perm) if n > 1 else perm

    def _dataset_mean(self, batch_size: int) -> Tensor:
        total, count = None, 0
        for start in range(0, len(self.pairs), batch_size):
            rows = self.pairs.rows(slice(start, start + batch_size))
            values = self.gm.sources(rows.clean, rows.attention_mask)
            keep = torch.ones(values.shape[:2]) if rows.attention_mask is None else rows.attention_mask.float()
            keep = keep.to(values.device, values.dtype)
            part = torch.einsum("bpsm,bp->sm", values, keep)
            total = part if total is None else total + part
            count += int(keep.sum())
        return (total / count)[None, None]

    def values(self, rows: slice) -> Tensor:
        """Corrupted source values for pairs `rows`."""
        part = self.pairs.rows(rows)
        if self.mode == "paired":
            return self.gm.sources(part.corrupt, part.attention_mask)
        if self.mode == "zero":
            g, cfg = self.gm.graph, self.gm.cfg
            return torch.zeros(1, 1, g.n_sources, cfg.d_model, device=self.gm.model.device, dtype=self.gm.model.dtype)
        if self.mode == "mean":
            return self._mean
        other = self._perm[rows]
        return self.gm.sources(self.pairs.clean[other], None)

