"""Activation-patching sweeps: every layer (x position, x head) of a site, batched.

Denoising (`mode="denoise"`, the default) runs the corrupted prompt with one clean
activation patched in; noising (`mode="noise"`) runs the clean prompt with one corrupted
activation patched in. Either way a cell's score is the normalized recovery

    score = (metric(patched) - metric(corrupt)) / (metric(clean) - metric(corrupt)),

averaged over pairs first (`metric` means over pairs), so 1 = the clean behaviour and 0 =
the corrupted one. Denoising asks "is this activation sufficient to restore the answer?",
noising "is it necessary?".

Example:
    >>> r = patch_sweep(model, "The Eiffel Tower is in the city of", "The Colosseum is in the city of",
    ...                 answer=" Paris", wrong=" Rome", site="resid_pre", by="layer,pos")  # doctest: +SKIP
    >>> r.shape, r.top(1)[0]["pos"]                                                        # doctest: +SKIP
    ((30, 9), 'iffel')
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from mechscope.core import names as hook_names
from mechscope.core.errors import MechscopeError
from mechscope.core.partial_runs import layers_return_tensors
from mechscope.core.provenance import provenance
from mechscope.core.scores import check_recoverable, normalized_recovery
from mechscope.methods.metrics import Metric
from mechscope.methods.patching.base_runs import cached_pair_runs
from mechscope.methods.patching.engine import Cell, run_cells
from mechscope.methods.patching.inputs import (
    Answers,
    PromptPair,
    Prompts,
    describe_metric,
    prepare_pair,
    resolve_metric,
)
from mechscope.methods.patching.result import PatchResult

BLOCK_SITES = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")
HEAD_SITES = ("z",)
SITES = BLOCK_SITES + HEAD_SITES
EVERY_BLOCK = ("resid_pre", "attn_out", "mlp_out")
BY_CHOICES = {
    "block": (("layer",), ("layer", "pos")),
    "head": (("layer", "head"), ("layer", "head", "pos"), ("layer",), ("layer", "pos")),
}
By = str | Sequence[str]


def parse_by(by: By) -> tuple[str, ...]:
    """`"layer,pos"` or `("layer", "pos")` -> `("layer", "pos")`.

    Example:
        >>> parse_by("layer, pos"), parse_by(["layer", "head"])
        (('layer', 'pos'), ('layer', 'head'))
    """
    parts = by.split(",") if isinstance(by, str) else list(by)
    return tuple(p.strip() for p in parts if p.strip())


def site_name(site: str, layer: int) -> str:
    """The hook name of a short site at a layer: ('resid_pre', 3) -> 'blocks.3.hook_resid_pre'.

    Example:
        >>> site_name("resid_pre", 3), site_name("z", 0)
        ('blocks.3.hook_resid_pre', 'blocks.0.attn.hook_z')
    """
    if site not in SITES:
        raise MechscopeError(f"Unknown patching site {site!r}; choose one of {', '.join(SITES)}.")
    return hook_names.block(layer, hook_names.short_site(site))


def check_by(site: str, by: tuple[str, ...]) -> None:
    """Raise a clear error when the axes `by` do not apply to `site` (heads need `head`, blocks do not).

    Example:
        >>> check_by("resid_pre", ("layer", "pos"))
        >>> check_by("resid_pre", ("layer", "head"))
        Traceback (most recent call last):
        ...
        mechscope.core.errors.MechscopeError: by='layer,head' does not apply to site 'resid_pre'; choose one of ...
    """
    kind = "head" if site in HEAD_SITES else "block"
    if by not in BY_CHOICES[kind]:
        shown = " | ".join(",".join(b) for b in BY_CHOICES[kind])
        raise MechscopeError(f"by={','.join(by)!r} does not apply to site {site!r}; choose one of {shown}.")


def site_cells(model: Any, site: str, by: tuple[str, ...], n_pos: int) -> tuple[list[Cell], list[int]]:
    """The cells of a sweep in axis order, and the score shape.

    Example:
        >>> import torch
        >>> from mechscope.core.examples import tiny_model
        >>> model = tiny_model(vocab_size=50)       # 2-layer random Llama, width 16
        >>> cells, shape = site_cells(model, "z", ("layer", "head"), n_pos=5)
        >>> shape, cells[1]
        ([2, 2], Cell(name='blocks.0.attn.hook_z', layer=0, pos=None, head=1))
    """
    check_by(site, by)
    if site == "resid_mid" and model.cfg.parallel_attn_mlp:
        raise MechscopeError("This model adds attention and MLP in parallel; it has no resid_mid.")
    sizes = {"layer": model.cfg.n_layers, "pos": n_pos, "head": model.cfg.n_heads}
    shape = [sizes[a] for a in by]
    cells = []
    for index in torch.cartesian_prod(*[torch.arange(s) for s in shape]).reshape(-1, len(shape)).tolist():
        where = dict(zip(by, index, strict=True))
        layer = where["layer"]
        cells.append(Cell(site_name(site, layer), layer, where.get("pos"), where.get("head")))
    return cells, shape


def axis_labels(model: Any, pair: PromptPair, by: tuple[str, ...]) -> list[list[Any]]:
    """Tick labels of each axis in `by`: layer and head numbers, the clean prompt's tokens (then `<pad i>`).

    Example:
        >>> import torch
        >>> from transformers import LlamaConfig, LlamaForCausalLM
        >>> from mechscope.core.hooked import HookedModel
        >>> _ = torch.manual_seed(0)
        >>> cfg = LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
        ...                   num_attention_heads=2, num_key_value_heads=1)
        >>> model = HookedModel(LlamaForCausalLM(cfg), name="tiny")
        >>> from mechscope.methods.patching.inputs import prepare_pair
        >>> pair = prepare_pair(model, torch.tensor([[1, 2, 3]]), torch.tensor([[1, 4, 3]]))
        >>> axis_labels(model, pair, ("layer", "pos"))              # no tokenizer: ids stand in for tokens
        [[0, 1], ['1', '2', '3']]
    """
    labels = {"layer": list(range(model.cfg.n_layers)), "pos": list(pair.str_tokens),
              "head": list(range(model.cfg.n_heads))}
    labels["pos"] += [f"<pad {i}>" for i in range(len(labels["pos"]), pair.n_pos)]
    return [labels[a] for a in by]


class PairRuns:
    """The clean and corrupted runs of a prompt pair, cached once for any number of sweeps.

    Example:
        >>> import torch
        >>> from mechscope.core.examples import tiny_model
        >>> model = tiny_model(vocab_size=50)       # 2-layer random Llama, width 16
        >>> clean, corrupt = torch.tensor([[1, 2, 3, 4, 5]]), torch.tensor([[1, 2, 9, 4, 5]])
        >>> runs = PairRuns(model, clean, corrupt, answer=6, wrong=7, names=["blocks.0.hook_resid_pre"])
        >>> cells = [Cell("blocks.0.hook_resid_pre", 0, pos=p) for p in range(5)]
        >>> recovery = runs.recovery(runs.patched(cells, "denoise"))
        >>> [abs(round(float(r), 3)) for r in recovery]     # only the changed token carries the difference
        [0.0, 0.0, 1.0, 0.0, 0.0]
    """

    def __init__(self, model: Any, clean: Prompts, corrupt: Prompts, metric: Metric | str | None = None,
                 answer: Answers | None = None, wrong: Answers | None = None, names: Sequence[str] = ()) -> None:
        self.model = model
        self.pair = prepare_pair(model, clean, corrupt)
        self.metric = resolve_metric(model, self.pair, metric, answer, wrong)
        self.names = list(names)
        (clean_value, self.clean_acts, self.clean_resid), (corrupt_value, self.corrupt_acts, self.corrupt_resid) = (
            cached_pair_runs(model, self.pair.clean, self.pair.corrupt, self.names, self.metric))
        self.clean_value, self.corrupt_value = clean_value.mean().item(), corrupt_value.mean().item()
        self.skip = layers_return_tensors(model, self.pair.clean)
        check_recoverable(self.clean_value, self.corrupt_value)

    def patched(self, cells: Sequence[Cell], mode: str, memory_mb: float = 512,
                skip_layers: bool = True) -> Tensor:
        """Mean metric over pairs `[len(cells)]` with each cell patched (source -> base per `mode`)."""
        base, _ = self.pair.base_and_source(mode)
        sources = self.clean_acts if mode == "denoise" else self.corrupt_acts
        base_acts = self.corrupt_acts if mode == "denoise" else self.clean_acts
        resid = self.corrupt_resid if mode == "denoise" else self.clean_resid
        missing = {c.name for c in cells} - set(sources)
        if missing:
            raise MechscopeError(f"PairRuns did not cache {sorted(missing)[:3]}...; pass them as names=.")
        values = run_cells(self.model, base, sources, cells, self.metric,
                           resid if skip_layers and self.skip else None, memory_mb, base_acts=base_acts)
        return values.mean(dim=1)

    def recovery(self, values: Tensor) -> Tensor:
        return normalized_recovery(values, self.clean_value, self.corrupt_value)

    def result(self, scores: Tensor, by: tuple[str, ...], labels: list[list[Any]], site: str, method: str,
               mode: str, **extra: Any) -> PatchResult:
        return PatchResult(scores, by, labels, site, method, mode, self.clean_value, self.corrupt_value,
                           describe_metric(self.metric), provenance(self.model), extra)


def _names_for(model: Any, sites: Sequence[str]) -> list[str]:
    return [site_name(s, layer) for s in sites for layer in range(model.cfg.n_layers)]


def patch_sweep(model: Any, clean: Prompts, corrupt: Prompts, metric: Metric | str | None = None, *,
                answer: Answers | None = None, wrong: Answers | None = None, site: str = "resid_pre",
                by: By = ("layer", "pos"), mode: str = "denoise", memory_mb: float = 512,
                skip_layers: bool = True, runs: PairRuns | None = None) -> PatchResult:
    """Activation patching of `site` at every cell of `by`; scores are normalized recovery.

    Sites: resid_pre, resid_mid, resid_post, attn_out, mlp_out by `layer` or `layer,pos`;
    `z` (per-head attention output before W_O) by `layer,head` or `layer,head,pos` (or
    `layer` / `layer,pos` for all heads at once). `metric` is a function of logits giving
    one value per row, a name ('logit_diff', 'logprob', 'prob'), or None for the logit
    difference between `answer` and `wrong` at each pair's last token.

    Example:
        >>> import torch
        >>> from mechscope.core.examples import tiny_model
        >>> model = tiny_model(vocab_size=50)       # 2-layer random Llama, width 16
        >>> clean, corrupt = torch.tensor([[1, 2, 3, 4, 5]]), torch.tensor([[1, 2, 9, 4, 5]])
        >>> result = patch_sweep(model, clean, corrupt, answer=6, wrong=7, site="resid_pre", by="layer,pos")
        >>> result.shape, result.by
        ((2, 5), ('layer', 'pos'))
        >>> round(float(result.scores[0, 2]), 3)              # layer 0, the changed position: full recovery
        1.0
    """
    by = parse_by(by)
    runs = runs or PairRuns(model, clean, corrupt, metric, answer, wrong, _names_for(model, [site]))
    cells, shape = site_cells(model, site, by, runs.pair.n_pos)
    values = runs.patched(cells, mode, memory_mb, skip_layers)
    scores = runs.recovery(values).reshape(shape)
    return runs.result(scores, by, axis_labels(model, runs.pair, by), site, "activation", mode)


def patch_heads(model: Any, clean: Prompts, corrupt: Prompts, metric: Metric | str | None = None, *,
                answer: Answers | None = None, wrong: Answers | None = None, by: By = ("layer", "head"),
                mode: str = "denoise", memory_mb: float = 512) -> PatchResult:
    """Patch each attention head's output (`attn.hook_z`) by layer x head (or layer x head x pos).

    Example:
        >>> import torch
        >>> from mechscope.core.examples import tiny_model
        >>> model = tiny_model(vocab_size=50)       # 2-layer random Llama, width 16
        >>> clean, corrupt = torch.tensor([[1, 2, 3, 4, 5]]), torch.tensor([[1, 2, 9, 4, 5]])
        >>> result = patch_heads(model, clean, corrupt, answer=6, wrong=7)
        >>> result.shape, result.site
        ((2, 2), 'z')
    """
    return patch_sweep(model, clean, corrupt, metric, answer=answer, wrong=wrong, site="z", by=by, mode=mode,
                       memory_mb=memory_mb)


def patch_every_block(model: Any, clean: Prompts, corrupt: Prompts, metric: Metric | str | None = None, *,
                      answer: Answers | None = None, wrong: Answers | None = None, by: By = ("layer", "pos"),
                      mode: str = "denoise", sites: Sequence[str] = EVERY_BLOCK, memory_mb: float = 512,
                      skip_layers: bool = True) -> PatchResult:
    """resid_pre, attn_out and mlp_out (or `sites`) in one batched sweep; axes `("site", *by)`.

    Example:
        >>> import torch
        >>> from mechscope.core.examples import tiny_model
        >>> model = tiny_model(vocab_size=50)       # 2-layer random Llama, width 16
        >>> clean, corrupt = torch.tensor([[1, 2, 3, 4, 5]]), torch.tensor([[1, 2, 9, 4, 5]])
        >>> result = patch_every_block(model, clean, corrupt, answer=6, wrong=7)
        >>> result.by, result.shape
        (('site', 'layer', 'pos'), (3, 2, 5))
    """
    by = parse_by(by)
    runs = PairRuns(model, clean, corrupt, metric, answer, wrong, _names_for(model, sites))
    cells: list[Cell] = []
    for site in sites:
        site_part, shape = site_cells(model, site, by, runs.pair.n_pos)
        cells += site_part
    values = runs.patched(cells, mode, memory_mb, skip_layers)
    scores = runs.recovery(values).reshape(len(sites), *shape)
    labels = [list(sites), *axis_labels(model, runs.pair, by)]
    return runs.result(scores, ("site", *by), labels, "every_block", "activation", mode)


def patch_loop(model: Any, clean: Prompts, corrupt: Prompts, metric: Metric | str | None = None, *,
               answer: Answers | None = None, wrong: Answers | None = None, site: str = "resid_pre",
               by: By = ("layer", "pos"), mode: str = "denoise") -> Tensor:
    """Reference implementation: one plain `run_with_hooks` forward per cell (slow; for checking).

    Returns the normalized-recovery scores with the shape of `patch_sweep`'s.

    Example:
        >>> import torch
        >>> from mechscope.core.examples import tiny_model
        >>> model = tiny_model(vocab_size=50)       # 2-layer random Llama, width 16
        >>> clean, corrupt = torch.tensor([[1, 2, 3, 4, 5]]), torch.tensor([[1, 2, 9, 4, 5]])
        >>> slow = patch_loop(model, clean, corrupt, answer=6, wrong=7, by="layer,pos")
        >>> fast = patch_sweep(model, clean, corrupt, answer=6, wrong=7, by="layer,pos")
        >>> torch.allclose(slow, fast.scores, atol=1e-4)
        True
    """
    by = parse_by(by)
    pair = prepare_pair(model, clean, corrupt)
    metric_fn = resolve_metric(model, pair, metric, answer, wrong)
    base, source = pair.base_and_source(mode)
    cells, shape = site_cells(model, site, by, pair.n_pos)
    names = sorted({c.name for c in cells})
    with torch.no_grad():
        _, cache = model.run_with_cache(source, names=names)
        clean_value = metric_fn(model(pair.clean)).float().mean()
        corrupt_value = metric_fn(model(pair.corrupt)).float().mean()
        out = []
        for cell in cells:
            def hook(act: Tensor, point: Any, cell: Cell = cell) -> Tensor:
                index = (slice(None), slice(None) if cell.pos is None else cell.pos)
                index += () if cell.head is None else (cell.head,)
                act = act.clone()
                act[index] = cache[cell.name][index].to(act.dtype)
                return act

            logits = model.run_with_hooks(base, fwd_hooks=[(cell.name, hook)])
            out.append(metric_fn(logits).float().mean())
    values = torch.stack(out).cpu()
    return normalized_recovery(values, clean_value, corrupt_value).reshape(shape)
