"""The induction task for circuit discovery: repeated-span prompt pairs and the reference circuit.

Clean prompt `[bos, r, r[:-1]]` for a span `r` of distinct random tokens: at the last token
(`r[-2]`) an induction circuit finds the earlier `r[-2]` and predicts what followed it,
`r[-1]`. The corrupt prompt shuffles the first copy so that `r[-2]` is followed there by
another token `b` (never `r[-1]`), which is what induction predicts instead. Both prompts
hold the same tokens, so anything that only reads which tokens are in the context (not their
order) cancels; the metric is `logit[r[-1]] - logit[b]`, positive on clean prompts and
negative on corrupt ones. The last `span - 1` tokens are identical in both prompts, so the
difference enters only through the first copy: which token follows which.

`induction_reference` names the edges of the two-layer induction circuit: layer-0 heads read
each token (values) and write it to the next position, layer-1 heads read that
previous-token information in their keys (K-composition) and in their values
(V-composition: the attended position's layer-0 output is copied along with the token), read
the token itself in their values, and write the logits. Query edges are not in it (the query
position holds the same tokens in both prompts), nor are the layer-1 keys' own-token edges
(induction matches the previous token, not the current one).

Example:
    >>> pairs = induction_pairs(n=4, span=6, n_tokens=20, seed=0)
    >>> pairs.clean.shape, bool((pairs.good != pairs.bad).all())
    (torch.Size([4, 12]), True)
    >>> induction_reference(n_heads=1)
    ['input->a0.h0.v', 'a0.h0->a1.h0.k', 'a0.h0->a1.h0.v', 'input->a1.h0.v', 'a1.h0->logits']
"""

from __future__ import annotations

import torch

from mechscope.circuits.discovery.tasks import Pairs
from mechscope.core.errors import MechscopeError


def induction_pairs(n: int = 24, span: int = 12, n_tokens: int = 64, bos_id: int = 0, seed: int = 0) -> Pairs:
    """`n` induction pairs over token ids `1..n_tokens` (see the module docstring).

    Example:
        >>> pairs = induction_pairs(n=2, span=4, n_tokens=10)
        >>> bool((pairs.clean[:, 5:] == pairs.corrupt[:, 5:]).all())   # only the first copy's order differs
        True
    """
    if not 3 <= span <= n_tokens:
        raise MechscopeError(f"span must be between 3 and n_tokens={n_tokens}, got {span}.")
    gen = torch.Generator().manual_seed(seed)
    r = torch.stack([torch.randperm(n_tokens, generator=gen)[:span] + 1 for _ in range(n)])
    first, bad = torch.empty_like(r), torch.empty(n, 1, dtype=torch.long)
    for i in range(n):
        while True:
            order = torch.randperm(span, generator=gen)
            where = int((order == span - 2).nonzero())  # where the query token r[-2] lands
            if where < span - 1 and int(order[where + 1]) != span - 1:
                break
        first[i], bad[i, 0] = r[i, order], r[i, order[where + 1]]
    bos = torch.full((n, 1), bos_id, dtype=torch.long)
    clean, corrupt = torch.cat([bos, r, r[:, :-1]], 1), torch.cat([bos, first, r[:, :-1]], 1)
    return Pairs(clean, corrupt, None, torch.full((n,), clean.shape[1] - 1), r[:, -1:], bad)


def induction_reference(n_heads: int, layers: tuple[int, int] = (0, 1)) -> list[str]:
    """Edge names of the induction circuit between two layers of `n_heads` heads each.

    Example:
        >>> len(induction_reference(n_heads=2)), induction_reference(n_heads=2)[-1]
        (14, 'a1.h1->logits')
    """
    prev, ind = layers
    if not 0 <= prev < ind:
        raise MechscopeError(f"The previous-token layer must come before the induction layer, got {layers}.")
    heads = range(n_heads)
    return ([f"input->a{prev}.h{h}.v" for h in heads]
            + [f"a{prev}.h{h}->a{ind}.h{j}.{w}" for j in heads for w in ("k", "v") for h in heads]
            + [f"input->a{ind}.h{j}.v" for j in heads] + [f"a{ind}.h{j}->logits" for j in heads])
