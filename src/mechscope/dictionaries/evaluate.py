"""Evaluate a dictionary on held-out tokens: reconstruction, sparsity, and the model's loss with it spliced in.

Over held-out positions `b` (BOS left out) with activations `x_b`, reconstructions `x_hat_b`
and features `f_b`:

- `mse = mean_b ||x_b - x_hat_b||^2` (summed over the `d` dimensions; `mse_per_dim = mse / d`);
- `explained_variance = 1 - sum_b ||x_b - x_hat_b||^2 / sum_b ||x_b - mean(x)||^2`, and the
  fraction of variance unexplained `fvu = 1 - explained_variance`;
- `l0 = mean_b #{i : f_bi > 0}`;
- feature density `p_i = #{b : f_bi > 0} / N`; `dead_fraction = mean_i [p_i = 0]`,
  `dense_fraction = mean_i [p_i > 0.1]`;
- next-token cross-entropy `CE = mean over predicted positions of -log softmax(logits)[next]`
  for the clean model (`ce_clean`), with the reconstruction spliced in at the site
  (`ce_sae`), and with the site zero-ablated (`ce_zero`); splicing and ablation touch the
  same positions (all but BOS, as in training); the blocks before the site are not run
  again for them (their clean output is replayed, which is exact);
- `ce_loss_recovered = (ce_zero - ce_sae) / (ce_zero - ce_clean)` (1: as good as clean, 0: as
  bad as deleting the site): the normalized recovery of `mechscope.core.scores` with the
  zero-ablated run as the corrupt one (NaN, with a warning, when `ce_zero == ce_clean`);
- `kl = mean over positions of KL(p_clean || p_sae) = sum_v p_clean(v) (log p_clean(v) - log p_sae(v))`
  (`mechscope.core.scores.kl_divergence`).

Example:
    >>> result = evaluate_dictionary(sae, model, n_tokens=20_000)   # doctest: +SKIP
    >>> round(result.explained_variance, 3), round(result.ce_loss_recovered, 3)   # doctest: +SKIP
    (0.85, 0.93)
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from mechscope.core import names as hook_names
from mechscope.core.corpus import Source, corpus_fingerprint, iter_token_contexts
from mechscope.core.errors import MechscopeError
from mechscope.core.partial_runs import layers_return_tensors, replay_prefix
from mechscope.core.scores import kl_divergence, normalized_recovery
from mechscope.dictionaries.base import Dictionary
from mechscope.dictionaries.metrics import explained_variance_from_sums
from mechscope.dictionaries.splice import hook_name_of, site_rows
from mechscope.dictionaries.streaming import keep_mask

logger = logging.getLogger(__name__)

DENSE_THRESHOLD = 0.1


@dataclass
class EvalResult:
    """Evaluation numbers (see the module docstring for each formula). Downstream-loss fields are
    None when no model was given. `feature_density [d_sae]` is kept out of `to_dict()`
    (its histogram is the `density_histogram` entry).

    Example:
        >>> from mechscope.dictionaries import make_dictionary
        >>> sae = make_dictionary("topk", d_in=8, d_sae=16, k=2, seed=0)
        >>> result = evaluate_activations(sae, [torch.randn(32, 8) for _ in range(2)])
        >>> result.n_tokens, result.l0, result.ce_sae is None, round(result.fvu + result.explained_variance, 6)
        (64, 2.0, True, 1.0)
        >>> sorted(result.to_dict()["density_histogram"])
        ['counts', 'dead', 'edges']
    """

    n_tokens: int
    mse: float
    mse_per_dim: float
    explained_variance: float
    fvu: float
    l0: float
    dead_fraction: float
    dense_fraction: float
    ce_clean: float | None = None
    ce_sae: float | None = None
    ce_zero: float | None = None
    ce_loss_recovered: float | None = None
    kl: float | None = None
    feature_density: Tensor | None = field(default=None, repr=False)
    extra: dict[str, Any] = field(default_factory=dict)

    def density_histogram(self, bins: int = 40) -> dict[str, list[float]]:
        """Histogram of `log10(p_i)` over the latents that fired (dead ones counted apart)."""
        density = self.feature_density
        assert density is not None
        alive = density[density > 0].double().log10()
        if alive.numel() == 0:
            return {"edges": [], "counts": [], "dead": int(density.numel())}
        lo, hi = float(alive.min()), float(alive.max())
        hi = hi if hi > lo else lo + 1.0
        counts = torch.histc(alive, bins=bins, min=lo, max=hi)
        edges = torch.linspace(lo, hi, bins + 1)
        return {"edges": edges.tolist(), "counts": counts.tolist(), "dead": int((density == 0).sum())}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready numbers (no tensors), with the density histogram."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
               if f.name not in ("feature_density", "extra")}
        if self.feature_density is not None:
            out["density_histogram"] = self.density_histogram()
        out.update(self.extra)
        return out


class _Accumulator:
    """Running sums for the reconstruction and sparsity metrics (float64)."""

    def __init__(self, d: int, d_sae: int) -> None:
        self.n = 0
        self.sum_x = torch.zeros(d, dtype=torch.float64)
        self.sum_x2 = 0.0
        self.sum_err2 = 0.0
        self.active = 0
        self.fired = torch.zeros(d_sae, dtype=torch.int64)

    def add(self, x: Tensor, x_hat: Tensor, f: Tensor) -> None:
        x, x_hat = x.double().cpu(), x_hat.double().cpu()
        self.n += x.shape[0]
        self.sum_x += x.sum(0)
        self.sum_x2 += float(x.pow(2).sum())
        self.sum_err2 += float((x - x_hat).pow(2).sum())
        on = (f > 0).cpu()
        self.active += int(on.sum())
        self.fired += on.sum(0)

    def result(self) -> EvalResult:
        n, d = self.n, self.sum_x.numel()
        if n == 0:
            raise ValueError("no held-out tokens to evaluate on")
        ev = explained_variance_from_sums(self.sum_err2, self.sum_x2, self.sum_x, n)
        density = self.fired.double() / n
        return EvalResult(
            n_tokens=n, mse=self.sum_err2 / n, mse_per_dim=self.sum_err2 / (n * d), explained_variance=ev,
            fvu=1.0 - ev, l0=self.active / n, dead_fraction=float((density == 0).double().mean()),
            dense_fraction=float((density > DENSE_THRESHOLD).double().mean()), feature_density=density,
        )


def _encode_decode(sae: Dictionary, x: Tensor) -> tuple[Tensor, Tensor]:
    f = sae.encode(x)
    return f, sae.decode(f, x)


@torch.no_grad()
def evaluate_activations(sae: Dictionary, batches: Iterable[Tensor],
                         targets: Iterable[Tensor] | None = None) -> EvalResult:
    """Reconstruction and sparsity metrics over batches `[n, d_in]` of stored activations
    (for a transcoder, `targets` gives the matching `[n, d_out]` batches).

    Example:
        >>> evaluate_activations(sae, open_store("held_out/").batches(4096, shuffle=False)).l0  # doctest: +SKIP
        32.0
    """
    acc = _Accumulator(sae.cfg.d_out, sae.cfg.d_sae)  # type: ignore[arg-type]
    target_iter = iter(targets) if targets is not None else None
    for x in batches:
        f, x_hat = _encode_decode(sae, x)
        acc.add(x if target_iter is None else next(target_iter), x_hat, f)
    return acc.result()


def _replace(act: Tensor, hook: Any, *, keep: Tensor, values: Tensor | None) -> Tensor:
    """`act` with the rows at `keep [batch, pos]` set to `values [n_keep, d]` (zeros when None)."""
    flat = act.reshape(*keep.shape, -1).clone()
    flat[keep] = 0 if values is None else values.to(flat.dtype)
    return flat.reshape(act.shape)


def _replay_start(model: Any, ids: Tensor, name_in: str, name_out: str) -> int:
    """First block the spliced runs must compute: the site's block, when earlier blocks can be
    replayed from the clean run's `resid_pre` (else 0: run everything)."""
    layers = [hook_names.parse_layer(n) for n in (name_in, name_out)]
    if any(layer is None for layer in layers) or not layers_return_tensors(model, ids):
        return 0
    return min(layers)  # type: ignore[type-var]


def _run_from(model: Any, ids: Tensor, start: int, resid: Tensor | None, hooks: list[Any]) -> Tensor:
    """Logits of a hooked run; with `start > 0`, blocks `0..start-1` are replaced by their cached output
    `resid = resid_pre[start]` of the clean run (identical, since nothing before `start` is edited)."""
    if not start:
        return model.run_with_hooks(ids, fwd_hooks=hooks)
    with model.hooks(hooks), replay_prefix(model, start, resid):
        return model.hf_model(input_ids=ids, use_cache=False).logits


def _next_token_stats(logits: Tensor, ids: Tensor, clean_logits: Tensor | None) -> tuple[float, float, int]:
    """Summed CE over predicted positions, summed `KL(p_clean || p)` to `clean_logits`, and the position count."""
    logp = F.log_softmax(logits[:, :-1].float(), dim=-1)
    target = ids[:, 1:].to(logp.device)
    ce = -logp.gather(-1, target.unsqueeze(-1)).double().sum()
    kl = 0.0
    if clean_logits is not None:
        kl = float(kl_divergence(clean_logits[:, :-1], logp).double().sum())
    return float(ce), kl, target.numel()


def _ce_recovered(ce_sae: float, ce_clean: float, ce_zero: float) -> float:
    """Normalized recovery of the loss, with zero ablation as the corrupt run; NaN (with a warning)
    where it is undefined, so the other numbers of a long evaluation are kept."""
    try:
        return float(normalized_recovery(ce_sae, clean=ce_clean, corrupt=ce_zero))
    except MechscopeError as err:
        logger.warning("CE loss recovered is undefined: %s", err)
        return math.nan


@torch.no_grad()
def evaluate_dictionary(
    sae: Dictionary, model: Any, *, source: Source = "default", split: str | None = "held_out",
    packages: Sequence[str] = (), n_tokens: int = 16_384, context_length: int = 128, batch_size: int = 8,
    hook_name: str | None = None, keep_bos: bool = False, **document_kwargs: Any,
) -> EvalResult:
    """Evaluate `sae` at its site of `model` on (about) `n_tokens` held-out tokens of a corpus.

    Contexts are packed as for the activation store (same `source`, `packages`,
    `context_length`), from the `split` the store did not use. Each batch of contexts is run
    three times beyond the clean run: spliced, zero-ablated (see the module docstring).
    Transcoders are evaluated on their output site.

    Example:
        >>> r = evaluate_dictionary(sae, model, n_tokens=8192)   # doctest: +SKIP
        >>> r.to_dict()["ce_loss_recovered"]                      # doctest: +SKIP
        0.93
    """
    name_in = hook_name_of(sae, hook_name)
    name_out = sae.cfg.hook_name_out or name_in
    rows_per_context = context_length if keep_bos else context_length - 1
    max_contexts = max(1, math.ceil(n_tokens / rows_per_context))
    doc_kwargs = {"packages": tuple(packages), "split": split, **document_kwargs}
    acc = _Accumulator(sae.cfg.d_out, sae.cfg.d_sae)  # type: ignore[arg-type]
    ce = {"clean": 0.0, "sae": 0.0, "zero": 0.0}
    kl_sum, n_pred = 0.0, 0
    start: int | None = None
    for ids in iter_token_contexts(model.tokenizer, source, context_length, batch_size=batch_size,
                                   max_contexts=max_contexts, **doc_kwargs):
        ids = ids.to(model.device)
        if start is None:
            start = _replay_start(model, ids, name_in, name_out)
        names = list(dict.fromkeys([name_in, name_out, *([hook_names.resid_pre(start)] if start else [])]))
        clean_logits, cache = model.run_with_cache(ids, names=names)
        keep = keep_mask(ids, model.tokenizer, keep_bos=keep_bos)
        x_in = site_rows(cache[name_in], sae.cfg.d_in, sae, name_in, "input").reshape(*ids.shape, -1)[keep]
        target_act = cache[name_out]
        target = site_rows(target_act, sae.cfg.d_out, sae, name_out, "output").reshape(*ids.shape, -1)
        f, x_hat = _encode_decode(sae, x_in)
        acc.add(target[keep], x_hat, f)

        resid = cache[hook_names.resid_pre(start)] if start else None
        sae_logits = _run_from(model, ids, start, resid, [(name_out, partial(_replace, keep=keep, values=x_hat))])
        zero_logits = _run_from(model, ids, start, resid, [(name_out, partial(_replace, keep=keep, values=None))])
        c, _, n = _next_token_stats(clean_logits, ids, None)
        s, kl, _ = _next_token_stats(sae_logits, ids, clean_logits)
        z, _, _ = _next_token_stats(zero_logits, ids, None)
        ce["clean"] += c
        ce["sae"] += s
        ce["zero"] += z
        kl_sum += kl
        n_pred += n
    result = acc.result()
    if n_pred:
        result.ce_clean, result.ce_sae, result.ce_zero = (ce[k] / n_pred for k in ("clean", "sae", "zero"))
        result.ce_loss_recovered = _ce_recovered(result.ce_sae, result.ce_clean, result.ce_zero)
        result.kl = kl_sum / n_pred
    result.extra = {"hook_name": name_out, "context_length": context_length, "split": split,
                    "corpus_fingerprint": corpus_fingerprint(source, **doc_kwargs),
                    "dense_threshold": DENSE_THRESHOLD, "d_sae": sae.cfg.d_sae,
                    "architecture": sae.cfg.architecture}
    logger.info("evaluated on %d tokens: EV %.4f, L0 %.1f, CE recovered %s", result.n_tokens,
                result.explained_variance, result.l0, result.ce_loss_recovered)
    return result


def density_figure(result: EvalResult) -> Any:
    """A matplotlib figure (Agg) of the feature-density histogram, `log10` density on the x axis.

    Example:
        >>> from mechscope.dictionaries import make_dictionary
        >>> sae = make_dictionary("relu", d_in=8, d_sae=16, seed=0)
        >>> fig = density_figure(evaluate_activations(sae, [torch.randn(32, 8)]))
        >>> fig.axes[0].get_xlabel()
        'log10 feature density (fraction of tokens a latent fires on)'
        >>> fig.savefig("density.png")
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hist = result.density_histogram()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    if hist["counts"]:
        edges = hist["edges"]
        widths = [b - a for a, b in zip(edges[:-1], edges[1:], strict=True)]
        ax.bar(edges[:-1], hist["counts"], width=widths, align="edge", color="#4c72b0", edgecolor="white")
    ax.axvline(math.log10(DENSE_THRESHOLD), color="#c44e52", linestyle="--", linewidth=1, label="dense (10%)")
    ax.set_xlabel("log10 feature density (fraction of tokens a latent fires on)")
    ax.set_ylabel("latents")
    ax.set_title(f"feature density over {result.n_tokens:,} held-out tokens; dead: {hist['dead']}")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    return fig
