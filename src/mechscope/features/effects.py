"""What a latent writes and who its neighbours are: logit effects, decoder-cosine and co-occurrence neighbours.

Logit effects are `W_dec @ W_U.T` (`W_U` is the model's unembedding `[d_vocab, d_model]`),
the direct effect of one unit of the latent on each output logit. The final norm is *not*
folded in (its scale depends on the whole residual vector, so no per-direction constant is
exact); the database records this as `logit_effects_fold_norm: false`.

Example:
    >>> import torch
    >>> W_dec = torch.eye(3); W_U = torch.tensor([[1., 0, 0], [0, 2, 0], [0, 0, -1]])
    >>> logit_effects(W_dec, W_U, 1).positive_ids.tolist()
    [[0], [1], [0]]
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor


class LogitEffects(NamedTuple):
    """Top `n` output tokens per latent: ids and values `[d_sae, n]`, positive (descending) and negative (ascending).

    Example:
        >>> eff = logit_effects(torch.eye(2), torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 2.0]]), n=1)
        >>> eff.positive_ids.tolist(), eff.negative_ids.tolist(), eff.negative_values.tolist()
        ([[0], [2]], [[2], [0]], [[-1.0], [0.0]])
    """

    positive_ids: Tensor
    positive_values: Tensor
    negative_ids: Tensor
    negative_values: Tensor


class Neighbours(NamedTuple):
    """Per latent the `n` best other latents `[d_sae, n]` (id -1 where fewer exist), their value and Jaccard index.

    Example:
        >>> near = Neighbours(ids=torch.tensor([[1], [0]]), values=torch.tensor([[0.9], [0.9]]), jaccard=None)
        >>> near.ids[0].tolist(), near.jaccard is None     # decoder neighbours carry no Jaccard index
        ([1], True)
    """

    ids: Tensor
    values: Tensor
    jaccard: Tensor | None


@torch.no_grad()
def logit_effects(W_dec: Tensor, W_U: Tensor, n: int, block: int = 256) -> LogitEffects:
    """Top positive / negative entries of each row of `W_dec [d_sae, d_model] @ W_U.T`, in float32 blocks.

    Example:
        >>> W_U = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 2.0]])       # 3 tokens, d_model 2
        >>> eff = logit_effects(torch.tensor([[1.0, 1.0]]), W_U, n=2)
        >>> eff.positive_ids.tolist(), eff.positive_values.tolist()
        ([[0, 1]], [[1.0, 1.0]])
    """
    n = min(n, W_U.shape[0])
    parts: list[tuple[Tensor, Tensor, Tensor, Tensor]] = []
    W_U = W_U.float()
    for start in range(0, W_dec.shape[0], block):
        logits = W_dec[start:start + block].float() @ W_U.t()
        top = logits.topk(n, dim=1)
        bottom = logits.topk(n, dim=1, largest=False)
        parts.append((top.indices, top.values, bottom.indices, bottom.values))
    return LogitEffects(*(torch.cat(p) for p in zip(*parts, strict=True)))


@torch.no_grad()
def decoder_neighbours(W_dec: Tensor, n: int, block: int = 1024) -> Neighbours:
    """The `n` latents whose decoder rows have the largest cosine with each row (itself excluded).

    Example:
        >>> near = decoder_neighbours(torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]), n=1)
        >>> near.ids.tolist(), [round(v, 4) for v in near.values[:, 0].tolist()]
        ([[1], [0], [1]], [0.7071, 0.7071, 0.7071])
    """
    W = W_dec.double()
    W = W / W.norm(dim=1, keepdim=True).clamp_min(1e-12)
    n = min(n, W.shape[0] - 1)
    ids, vals = [], []
    for start in range(0, W.shape[0], block):
        cos = W[start:start + block] @ W.t()
        rows = torch.arange(start, min(start + block, W.shape[0]))
        cos[rows - start, rows] = -torch.inf
        top = cos.topk(n, dim=1)
        ids.append(top.indices)
        vals.append(top.values.float())
    return Neighbours(torch.cat(ids), torch.cat(vals), None)


@torch.no_grad()
def cooccurrence_neighbours(upper: Tensor, counts: Tensor, n: int, block: int = 512) -> Neighbours:
    """The `n` latents that fire on the same tokens most often (ties: smaller id), with Jaccard indices.

    `upper [d_sae, d_sae]` holds for i < j the number of tokens where both fire; `counts [d_sae]`
    how often each fires. Jaccard `= c_ij / (c_i + c_j - c_ij)`. Pairs that never co-occur get id -1.

    Example:
        >>> upper = torch.tensor([[0, 3, 1], [0, 0, 0], [0, 0, 0]])       # 0 and 1 share 3 tokens, 0 and 2 one
        >>> near = cooccurrence_neighbours(upper, counts=torch.tensor([4, 3, 2]), n=2)
        >>> near.ids.tolist(), near.jaccard[0].tolist()                    # 3 / (4 + 3 - 3), 1 / (4 + 2 - 1)
        ([[1, 2], [0, -1], [0, -1]], [0.75, 0.2])
    """
    d = upper.shape[0]
    n = min(n, d - 1)
    counts = counts.to(torch.int64)
    ids, vals, jac = [], [], []
    for start in range(0, d, block):
        stop = min(start + block, d)
        both = upper[start:stop].to(torch.int64) + upper[:, start:stop].t().to(torch.int64)
        key = both * (d + 1) + (d - torch.arange(d))  # larger count first, then smaller id
        key[torch.arange(stop - start), torch.arange(start, stop)] = -1
        top = key.topk(n, dim=1)
        c = both.gather(1, top.indices)
        other = torch.where(c > 0, top.indices, torch.full_like(top.indices, -1))
        union = counts[start:stop, None] + counts[top.indices] - c
        ids.append(other)
        vals.append(c.float())
        jac.append(torch.where(c > 0, c.double() / union.clamp_min(1).double(), torch.zeros_like(c, dtype=torch.float64)))
    return Neighbours(torch.cat(ids), torch.cat(vals), torch.cat(jac))
