"""The base runs a patching sweep starts from: metric, activations, and every layer's residual with its keys and values.

`cached_runs` runs one batch once and keeps what later patched passes reuse (`BaseStates`:
`resid_pre` at every layer, to start rows at their own layer, and the keys and values, to
start at a position); `cached_pair_runs` does the clean and corrupted prompts in one pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from mechscope.core import names as hook_names
from mechscope.core.tokens import TokenBatch
from mechscope.methods.metrics import Metric
from mechscope.methods.patching.engine import forward_metric


class BaseStates(list):
    """The base run's `resid_pre` at every layer (a list), plus its keys and values per layer (`kv`, or None).

    Example:
        >>> import torch
        >>> states = BaseStates([torch.zeros(1, 4, 8), torch.ones(1, 4, 8)])
        >>> len(states), states.kv is None
        (2, True)
    """

    def __init__(self, resid: Sequence[Tensor], kv: list[tuple[Tensor, Tensor]] | None = None) -> None:
        super().__init__(resid)
        self.kv = kv


def cached_runs(model: Any, tokens: TokenBatch, names: Sequence[str], metric: Metric,
                extra_hooks: Sequence[Any] = (), keep_kv: bool = True) -> tuple[Tensor, dict[str, Tensor], BaseStates]:
    """One run: (per-pair metric, activations at `names`, resid_pre at every layer with the run's keys and values).

    `keep_kv=False` keeps no keys and values (`BaseStates.kv` is None).

    Example:
        >>> import torch
        >>> from mechscope.core.examples import tiny_model
        >>> model = tiny_model(vocab_size=50)       # 2-layer random Llama, width 16
        >>> clean, corrupt = torch.tensor([[1, 2, 3, 4, 5]]), torch.tensor([[1, 2, 9, 4, 5]])
        >>> from mechscope.core.tokens import TokenBatch
        >>> from mechscope.methods.metrics import LogitDiff
        >>> value, acts, states = cached_runs(model, TokenBatch(clean, torch.ones_like(clean)),
        ...                                   ["blocks.1.hook_attn_out"], LogitDiff(answer=6, wrong=7))
        >>> value.shape, list(acts), len(states), len(states.kv)
        (torch.Size([1]), ['blocks.1.hook_attn_out'], 2, 2)
    """
    wanted = list(dict.fromkeys([*names, *(hook_names.resid_pre(layer) for layer in range(model.cfg.n_layers))]))
    store: dict[str, Tensor] = {}

    def keep(act: Tensor, point: Any) -> None:
        store[point.name] = act.detach().clone()

    kv: list[tuple[Tensor, Tensor]] = []
    with torch.no_grad():
        value = forward_metric(model, tokens, metric, [*extra_hooks, *((n, keep) for n in wanted)],
                               keep_kv=kv if keep_kv else None)
    resid = [store[hook_names.resid_pre(layer)] for layer in range(model.cfg.n_layers)]
    n_pairs, n_pos = tokens.ids.shape
    usable = len(kv) == model.cfg.n_layers and all(k.shape[0] == n_pairs and k.dim() == 4 and k.shape[-2] == n_pos
                                                   for k, _ in kv)
    return value.float().cpu(), {n: store[n] for n in names}, BaseStates(resid, kv if usable else None)


def cached_pair_runs(model: Any, first: TokenBatch, second: TokenBatch, names: Sequence[str], metric: Metric
                     ) -> tuple[tuple[Tensor, dict[str, Tensor], BaseStates], ...]:
    """`cached_runs` of two batches of the same shape (say clean and corrupted) in one batched pass.

    One pass of twice the rows costs far less than two on short prompts, where reading the
    weights dominates.

    Example:
        >>> import torch
        >>> from mechscope.core.examples import tiny_model
        >>> model = tiny_model(vocab_size=50)       # 2-layer random Llama, width 16
        >>> from mechscope.core.tokens import TokenBatch
        >>> from mechscope.methods.metrics import LogitDiff
        >>> clean, corrupt = (TokenBatch(torch.tensor([ids]), torch.ones(1, 5, dtype=torch.long))
        ...                   for ids in ([1, 2, 3, 4, 5], [1, 2, 9, 4, 5]))
        >>> (value, acts, states), _ = cached_pair_runs(model, clean, corrupt, ["blocks.1.hook_attn_out"],
        ...                                             LogitDiff(answer=6, wrong=7))
        >>> alone, _, _ = cached_runs(model, clean, ["blocks.1.hook_attn_out"], LogitDiff(answer=6, wrong=7))
        >>> torch.allclose(value, alone, atol=1e-5), states[0].shape[0], states.kv[0][0].shape[0]
        (True, 1, 1)
    """
    n = first.ids.shape[0]
    both = TokenBatch(torch.cat([first.ids, second.ids]), torch.cat([first.attention_mask, second.attention_mask]))
    value, acts, states = cached_runs(model, both, names, metric)

    def half(part: slice) -> tuple[Tensor, dict[str, Tensor], BaseStates]:
        kv = None if states.kv is None else [(k[part], v[part]) for k, v in states.kv]
        return (value[part], {name: act[part] for name, act in acts.items()},
                BaseStates([resid[part] for resid in states], kv))

    return half(slice(0, n)), half(slice(n, 2 * n))
