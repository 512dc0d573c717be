"""Attribution patching: a first-order estimate of every patch from one forward and one backward pass.

For a site with activation `a` on the base run and `a'` on the source run (denoising:
base = corrupt, source = clean), the metric after patching one cell is estimated as

    M(patched) ~= M(base) + sum_cell (a' - a) . dM/da |_(base run)

and reported as the normalized recovery `(M(patched) - M(corrupt)) / (M(clean) - M(corrupt))`,
like activation patching. Where `M` is linear in `a` from the site on (e.g.
`ln_final.hook_normalized` with a logit difference) the estimate is exact.

Integrated gradients (`method="ig"`) replaces the single gradient by its mean over `steps`
points on the straight line from `a` to `a'` (midpoint rule), interpolating the whole
activation of one layer at a time:

    IG_cell = (a' - a)_cell . mean_k dM/da |_(a + (k + 1/2)/steps (a' - a))

so a layer's cell scores sum, as `steps` grows, to the effect of patching the whole layer
(completeness). Each step is one batch row; layers and steps run batched.

Example:
    >>> r = attribution_sweep(model, clean, corrupt, answer=" Paris", wrong=" Rome",
    ...                       site="resid_pre", by="layer,pos")                     # doctest: +SKIP
    >>> every = attribution_every_site(model, clean, corrupt, answer=" Paris", wrong=" Rome")  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from mechscope.core import names as hook_names
from mechscope.core.errors import MechscopeError
from mechscope.core.provenance import provenance
from mechscope.core.scores import check_recoverable, normalized_recovery
from mechscope.methods.metrics import Metric
from mechscope.methods.patching.base_runs import cached_runs
from mechscope.methods.patching.engine import forward_metric, row_bytes
from mechscope.methods.patching.inputs import Answers, Prompts, describe_metric, prepare_pair, resolve_metric
from mechscope.methods.patching.result import PatchResult
from mechscope.methods.patching.sweep import (
    BLOCK_SITES,
    axis_labels,
    check_by,
    parse_by,
    patch_sweep,
    site_name,
)

FINAL = "ln_final"
ATTRIBUTION_SITES = (*BLOCK_SITES, "z", FINAL)


def _names(model: Any, site: str) -> list[str]:
    if site == FINAL:
        return [hook_names.LN_FINAL]
    return [site_name(site, layer) for layer in range(model.cfg.n_layers)]


def _check(model: Any, site: str, by: tuple[str, ...]) -> None:
    if site not in ATTRIBUTION_SITES:
        raise MechscopeError(f"Unknown attribution site {site!r}; choose one of {', '.join(ATTRIBUTION_SITES)}.")
    if site == FINAL:
        if by not in (("pos",), ()):
            raise MechscopeError("ln_final has no layers; use by='pos'.")
    else:
        check_by(site, by)


def _reduce(contrib: Tensor, site: str, by: tuple[str, ...]) -> Tensor:
    """Sum `delta * grad` [n_pairs, pos, (head,) dim] over pairs and the dimensions `by` leaves out."""
    per_pos = contrib.sum(0).sum(-1)  # [pos] or [pos, head]
    if site == "z":
        per_pos = per_pos.transpose(0, 1)  # [head, pos]
        if "head" not in by:
            per_pos = per_pos.sum(0)
    return per_pos if "pos" in by else per_pos.sum(-1)


def gradients(model: Any, tokens: Any, metric: Metric, names: Sequence[str]) -> tuple[
        Tensor, dict[str, Tensor], dict[str, Tensor]]:
    """One forward and one backward pass: (per-pair metric, activations, d mean(metric) / d activation).

    Embeddings are made leaves so no parameter gradient is computed; sites the metric does
    not depend on get zero gradients.

    Example:
        >>> import torch
        >>> from mechscope.core.examples import tiny_model
        >>> model = tiny_model(vocab_size=50)       # 2-layer random Llama, width 16
        >>> clean, corrupt = torch.tensor([[1, 2, 3, 4, 5]]), torch.tensor([[1, 2, 9, 4, 5]])
        >>> from mechscope.methods.metrics import LogitDiff
        >>> from mechscope.core.tokens import TokenBatch
        >>> tokens = TokenBatch(clean, torch.ones_like(clean))
        >>> value, acts, grads = gradients(model, tokens, LogitDiff(answer=6, wrong=7), ["blocks.1.hook_resid_pre"])
        >>> acts["blocks.1.hook_resid_pre"].shape == grads["blocks.1.hook_resid_pre"].shape
        True
    """
    acts: dict[str, Tensor] = {}
    grads: dict[str, Tensor] = {}
    leaves: list[Tensor] = []

    def leaf(act: Tensor, point: Any) -> Tensor:
        new = act.detach().requires_grad_(True)
        leaves.append(new)
        return new

    def keep(act: Tensor, point: Any) -> None:
        acts[point.name] = act.detach()

    def keep_grad(grad: Tensor, point: Any) -> None:
        grads[point.name] = grad.detach()

    embeds = [n for n in (hook_names.EMBED, hook_names.POS_EMBED) if n in model.sites]
    fwd = [*((n, leaf) for n in embeds), *((n, keep) for n in names)]
    with torch.enable_grad():
        values = forward_metric(model, tokens, metric, fwd, bwd_hooks=[(n, keep_grad) for n in names])
        torch.autograd.grad(values.mean(), leaves, allow_unused=True)
    zero = {n: torch.zeros_like(acts[n]) for n in names if n not in grads}
    return values.detach().float().cpu(), acts, {**grads, **zero}


def _ig_layer_grads(model: Any, tokens: Any, metric: Metric, names: Sequence[str], base: dict[str, Tensor],
                    source: dict[str, Tensor], steps: int, memory_mb: float) -> dict[str, Tensor]:
    """Mean gradient over `steps` interpolation points, one layer's activation interpolated per row block."""
    n_pairs, n_pos = tokens.ids.shape
    per_row = row_bytes(model, n_pos, 1) * 3 * max(model.cfg.n_layers, 1)
    rows_per_chunk = max(steps * n_pairs, int(memory_mb * 2**20 // per_row) // (steps * n_pairs) * steps * n_pairs)
    names_per_chunk = max(1, rows_per_chunk // (steps * n_pairs))
    alphas = (torch.arange(steps, dtype=torch.float32) + 0.5) / steps
    out: dict[str, Tensor] = {}
    block = steps * n_pairs
    for begin in range(0, len(names), names_per_chunk):
        chunk = list(names[begin:begin + names_per_chunk])
        leaves: dict[str, Tensor] = {}
        for name in chunk:
            a, b = base[name], source[name]
            shape = (steps, *a.shape)
            alpha = alphas.to(a.device, a.dtype).reshape(steps, *([1] * a.dim()))
            leaves[name] = (a.expand(shape) + alpha * (b - a).expand(shape)).reshape(block, *a.shape[1:])
            leaves[name] = leaves[name].detach().requires_grad_(True)

        def interpolate(act: Tensor, point: Any, chunk: list[str] = chunk,
                        leaves: dict[str, Tensor] = leaves) -> Tensor:
            slot = chunk.index(point.name)
            new = act.clone()
            new[slot * block:(slot + 1) * block] = leaves[point.name].to(act.dtype)
            return new

        batch = type(tokens)(tokens.ids.repeat(len(chunk) * steps, 1), tokens.attention_mask.repeat(len(chunk) * steps, 1))
        with torch.enable_grad():
            values = forward_metric(model, batch, metric, [(n, interpolate) for n in chunk])
            grads = torch.autograd.grad(values.sum() / n_pairs, [leaves[n] for n in chunk], allow_unused=True)
        for name, grad in zip(chunk, grads, strict=True):
            grad = torch.zeros_like(leaves[name]) if grad is None else grad
            out[name] = grad.reshape(steps, *base[name].shape).mean(0).detach()
    return out


class _Runs:
    """What attribution needs of a prompt pair: the source run's activations and the base run's, with gradients.

    Attribution patching reads the base run's activations from its own forward-and-backward
    pass, so only the source prompt gets a separate (no-grad) run.
    """

    def __init__(self, model: Any, clean: Prompts, corrupt: Prompts, metric: Metric | str | None,
                 answer: Answers | None, wrong: Answers | None, names: Sequence[str], mode: str,
                 with_grads: bool) -> None:
        self.model, self.mode, self.names = model, mode, list(names)
        self.pair = prepare_pair(model, clean, corrupt)
        self.metric = resolve_metric(model, self.pair, metric, answer, wrong)
        self.base_tokens, source_tokens = self.pair.base_and_source(mode)
        source_value, self.source, _ = cached_runs(model, source_tokens, self.names, self.metric, keep_kv=False)
        if with_grads:
            base_value, self.base, self.grads = gradients(model, self.base_tokens, self.metric, self.names)
        else:
            base_value, self.base, _ = cached_runs(model, self.base_tokens, self.names, self.metric, keep_kv=False)
        values = (source_value.mean().item(), base_value.mean().item())
        self.clean_value, self.corrupt_value = values if mode == "denoise" else values[::-1]
        self.base_value = values[1]  # the metric of the run whose activations are patched
        check_recoverable(self.clean_value, self.corrupt_value)

    def result(self, scores: Tensor, site: str, by: tuple[str, ...], method: str, **extra: Any) -> PatchResult:
        return PatchResult(scores, by, axis_labels(self.model, self.pair, by), site, method, self.mode,
                           self.clean_value, self.corrupt_value, describe_metric(self.metric),
                           provenance(self.model), extra)


def _estimate(runs: _Runs, site: str, by: tuple[str, ...], grads: dict[str, Tensor]) -> Tensor:
    names = _names(runs.model, site)
    rows = [_reduce(((runs.source[n] - runs.base[n]) * grads[n]).float().cpu(), site, by) for n in names]
    delta = torch.stack(rows) if site != FINAL else rows[0]
    # M(patched) ~= M(base) + delta, in float64 so a small delta is not lost next to a large M(base)
    return normalized_recovery(runs.base_value + delta.double(), runs.clean_value, runs.corrupt_value).float()


def attribution_sweep(model: Any, clean: Prompts, corrupt: Prompts, metric: Metric | str | None = None, *,
                      answer: Answers | None = None, wrong: Answers | None = None, site: str = "resid_pre",
                      by: str | Sequence[str] = ("layer", "pos"), mode: str = "denoise",
                      method: str = "attribution", steps: int = 16, compare: bool = False,
                      memory_mb: float = 1024) -> PatchResult:
    """Estimated normalized recovery of patching each cell of `site` (see the module docstring).

    `compare=True` also runs activation patching and stores its scores and the Pearson
    correlation in `result.extra` (`activation_scores`, `activation_correlation`).

    Example:
        >>> import torch
        >>> from mechscope.core.examples import tiny_model
        >>> model = tiny_model(vocab_size=50)       # 2-layer random Llama, width 16
        >>> clean, corrupt = torch.tensor([[1, 2, 3, 4, 5]]), torch.tensor([[1, 2, 9, 4, 5]])
        >>> est = attribution_sweep(model, clean, corrupt, answer=6, wrong=7, site="resid_pre", compare=True)
        >>> est.shape, est.method
        ((2, 5), 'attribution')
        >>> -1.0 <= est.extra["activation_correlation"] <= 1.0                  # against exact activation patching
        True
    """
    by = parse_by(by)
    _check(model, site, by)
    if method not in ("attribution", "ig"):
        raise MechscopeError(f"method must be 'attribution' or 'ig', not {method!r}.")
    runs = _Runs(model, clean, corrupt, metric, answer, wrong, _names(model, site), mode, method == "attribution")
    if method == "ig":
        grads = _ig_layer_grads(model, runs.base_tokens, runs.metric, runs.names, runs.base, runs.source, steps,
                                memory_mb)
    else:
        grads = runs.grads
    scores = _estimate(runs, site, by, grads)
    extra: dict[str, Any] = {"steps": steps} if method == "ig" else {}
    if compare and site != FINAL:
        reference = patch_sweep(model, clean, corrupt, metric, answer=answer, wrong=wrong, site=site, by=by,
                                mode=mode, memory_mb=memory_mb).scores
        extra["activation_scores"] = reference.tolist()
        extra["activation_correlation"] = correlation(scores, reference)
    return runs.result(scores, site, by, method, **extra)


def attribution_every_site(model: Any, clean: Prompts, corrupt: Prompts, metric: Metric | str | None = None, *,
                           answer: Answers | None = None, wrong: Answers | None = None,
                           sites: Sequence[str] = (*BLOCK_SITES, "z"), mode: str = "denoise") -> dict[str, PatchResult]:
    """Attribution patching of every site at once (layer x position; heads as layer x head x position).

    One source forward pass, then one forward and one backward pass of the base prompt, in all.

    Example:
        >>> import torch
        >>> from mechscope.core.examples import tiny_model
        >>> model = tiny_model(vocab_size=50)       # 2-layer random Llama, width 16
        >>> clean, corrupt = torch.tensor([[1, 2, 3, 4, 5]]), torch.tensor([[1, 2, 9, 4, 5]])
        >>> results = attribution_every_site(model, clean, corrupt, answer=6, wrong=7)
        >>> sorted(results), results["z"].by
        (['attn_out', 'mlp_out', 'resid_mid', 'resid_post', 'resid_pre', 'z'], ('layer', 'head', 'pos'))
    """
    sites = [s for s in sites if not (s == "resid_mid" and model.cfg.parallel_attn_mlp)]
    names = [n for s in sites for n in _names(model, s)]
    runs = _Runs(model, clean, corrupt, metric, answer, wrong, names, mode, with_grads=True)
    out = {}
    for site in sites:
        by = ("layer", "head", "pos") if site == "z" else ("layer", "pos")
        out[site] = runs.result(_estimate(runs, site, by, runs.grads), site, by, "attribution")
    return out


def correlation(a: Tensor, b: Tensor) -> float:
    """Pearson correlation of two score arrays (flattened).

    Example:
        >>> import torch
        >>> correlation(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([2.0, 4.0, 6.5]))    # doctest: +ELLIPSIS
        0.99...
    """
    x, y = a.reshape(-1).double(), b.reshape(-1).double()
    x, y = x - x.mean(), y - y.mean()
    denominator = (x.norm() * y.norm()).item()
    return float((x @ y).item() / denominator) if denominator > 0 else float("nan")
