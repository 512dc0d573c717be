"""Ablations as building blocks: zero, mean and resample ablation of any site, head or position.

An ablation replaces an activation slice (a hook name, optionally one position and/or one
head) by

- `zero`: 0;
- `mean`: its mean over a reference set, per position (`mean_over="batch"`, reference
  prompts must have the inputs' length) or over every position too (`mean_over="batch_pos"`);
- `resample`: the same slice from a reference prompt drawn at random per input row
  (seeded), i.e. patching from another prompt.

`ablate` runs a model with ablations; `ablation_sweep` scores every cell of a site like a
patching sweep (batched), as the change in the metric: `metric(ablated) - metric(original)`.

Example:
    >>> logits = ablate(model, "The Eiffel Tower is in the city of",
    ...                 [Target("blocks.5.attn.hook_z", head=3)], kind="mean",
    ...                 reference=["The Louvre is in the city of", ...])          # doctest: +SKIP
    >>> r = ablation_sweep(model, prompt, answer=" Paris", wrong=" Rome", site="z",
    ...                    by="layer,head", kind="zero")                           # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from mechscope.core.errors import MechscopeError
from mechscope.core.partial_runs import layers_return_tensors
from mechscope.core.provenance import provenance
from mechscope.core.tokens import TokenBatch
from mechscope.methods.metrics import Metric
from mechscope.methods.patching.base_runs import cached_runs
from mechscope.methods.patching.engine import Cell, run_cells
from mechscope.methods.patching.inputs import (
    Answers,
    Prompts,
    describe_metric,
    prepare_pair,
    resolve_metric,
    token_batch,
)
from mechscope.methods.patching.result import PatchResult
from mechscope.methods.patching.sweep import axis_labels, parse_by, site_cells, site_name

Kind = Literal["zero", "mean", "resample"]
KINDS = ("zero", "mean", "resample")


@dataclass(frozen=True)
class Target:
    """What to ablate: hook `name`, at position `pos` (None: all) and head `head` (None: all).

    Example:
        >>> Target("blocks.0.attn.hook_z", head=1)                 # head 1 of layer 0 at every position
        Target(name='blocks.0.attn.hook_z', pos=None, head=1)
    """

    name: str
    pos: int | None = None
    head: int | None = None


def replacement_values(model: Any, tokens: TokenBatch, names: Sequence[str], kind: Kind,
                       reference: Prompts | None = None, mean_over: str = "batch",
                       seed: int = 0) -> dict[str, Tensor]:
    """Per hook name, the values `[batch, pos, ...]` that replace the inputs' activations.

    Example:
        >>> import torch
        >>> from mechscope.core.examples import tiny_model
        >>> model = tiny_model(vocab_size=50)       # 2-layer random Llama, width 16
        >>> from mechscope.core.tokens import TokenBatch
        >>> ids = torch.tensor([[1, 2, 3], [4, 5, 6]])
        >>> tokens = TokenBatch(ids, torch.ones_like(ids))
        >>> values = replacement_values(model, tokens, ["blocks.0.hook_mlp_out"], "mean", reference=ids)
        >>> v = values["blocks.0.hook_mlp_out"]
        >>> v.shape, torch.allclose(v[0], v[1])                  # the batch mean, the same for every row
        (torch.Size([2, 3, 16]), True)
    """
    if kind not in KINDS:
        raise MechscopeError(f"Ablation kind must be one of {KINDS}, not {kind!r}.")
    batch, n_pos = tokens.ids.shape
    if kind == "zero":
        _, cache = model.run_with_cache(tokens, names=list(names))
        return {n: torch.zeros_like(cache[n]) for n in names}
    if reference is None:
        raise MechscopeError(f"{kind} ablation needs reference prompts (reference=...).")
    ref = token_batch(model, reference)
    _, cache = model.run_with_cache(ref, names=list(names))
    out = {}
    if kind == "mean":
        if mean_over not in ("batch", "batch_pos"):
            raise MechscopeError("mean_over is 'batch' (per position) or 'batch_pos' (over positions too).")
        mask = ref.attention_mask.to(cache[names[0]].device).float()
        for name in names:
            act = cache[name]
            weights = mask.reshape(*mask.shape, *([1] * (act.dim() - 2)))
            if mean_over == "batch_pos":
                mean = (act * weights).sum((0, 1)) / weights.sum((0, 1))
                out[name] = mean.expand(batch, n_pos, *mean.shape).clone()
            else:
                if ref.ids.shape[1] != n_pos:
                    raise MechscopeError(f"Per-position mean ablation needs reference prompts of {n_pos} tokens "
                                         f"(got {ref.ids.shape[1]}); use mean_over='batch_pos'.")
                mean = (act * weights).sum(0) / weights.sum(0).clamp(min=1)
                out[name] = mean.expand(batch, *mean.shape).clone()
        return out
    if ref.ids.shape[1] != n_pos:
        raise MechscopeError(f"Resample ablation needs reference prompts of {n_pos} tokens (got {ref.ids.shape[1]}).")
    rows = torch.randint(0, ref.ids.shape[0], (batch,), generator=torch.Generator().manual_seed(seed))
    return {name: cache[name][rows.to(cache[name].device)].clone() for name in names}


def _index(target: Target | Cell, rows: slice = slice(None)) -> tuple[Any, ...]:
    index: tuple[Any, ...] = (rows, slice(None) if target.pos is None else target.pos)
    return index if target.head is None else (*index, target.head)


def ablation_hooks(targets: Sequence[Target], values: dict[str, Tensor]) -> list[tuple[str, Any]]:
    """Forward hooks that write `values[name]` into each target's slice.

    Example:
        >>> import torch
        >>> hooks = ablation_hooks([Target("blocks.0.hook_mlp_out", pos=1)], {"blocks.0.hook_mlp_out": torch.zeros(1, 3, 2)})
        >>> name, fn = hooks[0]
        >>> class Point:
        ...     name = "blocks.0.hook_mlp_out"
        >>> name, fn(torch.ones(1, 3, 2), Point())[0, :, 0].tolist()
        ('blocks.0.hook_mlp_out', [1.0, 0.0, 1.0])
    """
    by_name: dict[str, list[Target]] = {}
    for target in targets:
        by_name.setdefault(target.name, []).append(target)

    def hook(act: Tensor, point: Any) -> Tensor:
        out = act.clone()
        for target in by_name[point.name]:
            out[_index(target)] = values[point.name][_index(target)].to(act.dtype)
        return out

    return [(name, hook) for name in by_name]


def ablate(model: Any, inputs: Prompts, targets: Sequence[Target], kind: Kind = "zero",
           reference: Prompts | None = None, mean_over: str = "batch", seed: int = 0) -> Tensor:
    """Logits `[batch, pos, d_vocab]` of `inputs` with every target ablated.

    Example:
        >>> import torch
        >>> from mechscope.core.examples import tiny_model
        >>> model = tiny_model(vocab_size=50)       # 2-layer random Llama, width 16
        >>> ids = torch.tensor([[1, 2, 3]])
        >>> logits = ablate(model, ids, [Target("blocks.1.attn.hook_z", head=0)], kind="zero")
        >>> logits.shape, bool((logits - model(ids)).abs().max() > 0)
        (torch.Size([1, 3, 50]), True)
    """
    tokens = token_batch(model, inputs)
    for target in targets:
        model.check_name(target.name)
    values = replacement_values(model, tokens, sorted({t.name for t in targets}), kind, reference, mean_over, seed)
    with torch.no_grad():
        return model.run_with_hooks(tokens, fwd_hooks=ablation_hooks(targets, values))


def ablation_sweep(model: Any, inputs: Prompts, metric: Metric | str | None = None, *,
                   answer: Answers | None = None, wrong: Answers | None = None, site: str = "z",
                   by: str | Sequence[str] = ("layer", "head"), kind: Kind = "zero",
                   reference: Prompts | None = None, mean_over: str = "batch", seed: int = 0,
                   memory_mb: float = 512) -> PatchResult:
    """`metric(ablated) - metric(original)` for each cell of `site` by `by`, batched like a patching sweep.

    The result's `clean` is the original metric; `corrupt` is undefined (NaN).

    Example:
        >>> import torch
        >>> from mechscope.core.examples import tiny_model
        >>> model = tiny_model(vocab_size=50)       # 2-layer random Llama, width 16
        >>> result = ablation_sweep(model, torch.tensor([[1, 2, 3, 4]]), answer=6, wrong=7)   # every head, zeroed
        >>> result.shape, result.method, result.by
        ((2, 2), 'zero_ablation', ('layer', 'head'))
    """
    by = parse_by(by)
    pair = prepare_pair(model, inputs, inputs)
    metric_fn = resolve_metric(model, pair, metric, answer, wrong)
    cells, shape = site_cells(model, site, by, pair.n_pos)
    names = [site_name(site, layer) for layer in range(model.cfg.n_layers)]
    original, _, resid = cached_runs(model, pair.clean, [], metric_fn)
    values = replacement_values(model, pair.clean, names, kind, reference, mean_over, seed)
    skip = resid if layers_return_tensors(model, pair.clean) else None
    ablated = run_cells(model, pair.clean, values, cells, metric_fn, skip, memory_mb).mean(1)
    base = float(original.mean())
    scores = (ablated - base).reshape(shape)
    return PatchResult(scores, by, axis_labels(model, pair, by), site, f"{kind}_ablation", "ablate", base,
                       float("nan"), describe_metric(metric_fn), provenance(model, seed=seed),
                       {"kind": kind, "mean_over": mean_over} if kind == "mean" else {"kind": kind})
