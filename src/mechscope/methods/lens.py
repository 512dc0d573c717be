"""Logit lens: read the residual stream at every layer through the model's own final norm and unembedding.

For a residual vector `h` at some site, the lens distribution is

    p_lens(h) = softmax(unembed(T(h)))    with unembed(x) = softcap(W_U · norm_final(x) + b_U)

where `T` is the identity for the logit lens and a learned affine map per layer for the
tuned lens (`mechscope.methods.tuned_lens`). At the last residual (`resid_post` of the
final block) the logit lens equals the model's own logits.

Rows ("layers") are hook names. `sites="layers"` reads `resid_pre` of every block and the
final `resid_post` (n_layers + 1 rows: "after 0, 1, ..., n_layers blocks");
`sites="sublayers"` adds `resid_mid` between them (where the family has one);
a list of hook names picks any residual sites.

Example:
    >>> import mechscope
    >>> model = mechscope.load_model()                                      # doctest: +SKIP
    >>> result = logit_lens(model, "The Eiffel Tower is in the city of", targets=[" Paris"])  # doctest: +SKIP
    >>> result.target_rank[" Paris"][-1, -1]                               # doctest: +SKIP
    tensor(0)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from mechscope.core import names
from mechscope.core.errors import MechscopeError, require_finite
from mechscope.core.hooked import HookedModel, Inputs
from mechscope.core.provenance import provenance
from mechscope.core.scores import kl_divergence
from mechscope.core.tokens import TokenBatch

SiteSpec = str | Sequence[str]
# translator(hook_name, resid [batch, pos, d_model]) -> resid; None means the identity (logit lens)
Translator = Callable[[str, Tensor], Tensor]


def lens_sites(model: HookedModel, sites: SiteSpec = "layers") -> list[str]:
    """The residual hook names a lens reads, in forward order (see the module docstring).

    Example:
        >>> import torch
        >>> from transformers import LlamaConfig, LlamaForCausalLM
        >>> from mechscope.core.hooked import HookedModel
        >>> _ = torch.manual_seed(0)
        >>> cfg = LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
        ...                   num_attention_heads=2, num_key_value_heads=1)
        >>> model = HookedModel(LlamaForCausalLM(cfg), name="tiny")
        >>> lens_sites(model)
        ['blocks.0.hook_resid_pre', 'blocks.1.hook_resid_pre', 'blocks.1.hook_resid_post']
    """
    n = model.cfg.n_layers
    if isinstance(sites, str) and sites in ("layers", "sublayers"):
        rows: list[str] = []
        for layer in range(n):
            rows.append(names.resid_pre(layer))
            mid = names.resid_mid(layer)
            if sites == "sublayers" and mid in model.sites:
                rows.append(mid)
        rows.append(names.resid_post(n - 1))
        return rows
    wanted = [sites] if isinstance(sites, str) else list(sites)
    for name in wanted:
        model.check_name(name)
        if "resid" not in name:
            raise MechscopeError(f"The lens reads residual-stream sites only; {name!r} is not one.")
    order = list(model.sites)
    return sorted(wanted, key=order.index)


def iter_lens_logits(model: HookedModel, inputs: Inputs, sites: SiteSpec = "layers",
                     translator: Translator | None = None) -> Iterator[tuple[str, Tensor, Tensor]]:
    """Yield `(hook name, lens logits [batch, pos, d_vocab], final logits)` one row at a time.

    One forward pass caches the residual sites; each row is then unembedded on its own, so
    only one `[batch, pos, d_vocab]` tensor lives at a time.

    Example:
        >>> import torch
        >>> from transformers import LlamaConfig, LlamaForCausalLM
        >>> from mechscope.core.hooked import HookedModel
        >>> _ = torch.manual_seed(0)
        >>> cfg = LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
        ...                   num_attention_heads=2, num_key_value_heads=1)
        >>> model = HookedModel(LlamaForCausalLM(cfg), name="tiny")
        >>> rows = [(name, lens.shape) for name, lens, final in iter_lens_logits(model, torch.tensor([[1, 2, 3]]))]
        >>> rows[0], rows[-1][0]
        (('blocks.0.hook_resid_pre', torch.Size([1, 3, 50])), 'blocks.1.hook_resid_post')
    """
    rows = lens_sites(model, sites)
    with torch.no_grad():
        logits, cache = model.run_with_cache(inputs, names=rows)
        assert logits is not None
        for name in rows:
            resid = cache[name]
            if translator is not None:
                resid = translator(name, resid)
            yield name, model.unembed(resid), logits


@dataclass
class LensResult:
    """What the lens sees at each row (`layers`) and position.

    `top_ids`/`top_probs`: [rows, pos, k]; per target string, `target_rank` (0 = the top
    token; rank = how many tokens have a strictly larger logit), `target_prob`,
    `target_logit`: [rows, pos]. `kl_to_final`: KL(p_final || p_lens) in nats, [rows, pos].

    Example:
        >>> import torch
        >>> from transformers import LlamaConfig, LlamaForCausalLM
        >>> from mechscope.core.hooked import HookedModel
        >>> _ = torch.manual_seed(0)
        >>> cfg = LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
        ...                   num_attention_heads=2, num_key_value_heads=1)
        >>> model = HookedModel(LlamaForCausalLM(cfg), name="tiny")
        >>> result = logit_lens(model, torch.tensor([[1, 2, 3]]), k=2, targets=[7])
        >>> result.layers[-1], result.top_ids.shape, result.target_rank["7"].shape
        ('blocks.1.hook_resid_post', torch.Size([3, 3, 2]), torch.Size([3, 3]))
        >>> float(result.kl_to_final[-1].abs().max()) < 1e-5               # the last row is the model's own output
        True
    """

    layers: list[str]
    tokens: list[str]
    token_ids: list[int]
    top_ids: Tensor
    top_probs: Tensor
    top_tokens: list[list[list[str]]]
    kl_to_final: Tensor
    target_rank: dict[str, Tensor] = field(default_factory=dict)
    target_prob: dict[str, Tensor] = field(default_factory=dict)
    target_logit: dict[str, Tensor] = field(default_factory=dict)
    lens: str = "logit"
    provenance: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The JSON record of `mechscope lens`: layers, tokens, top [[token, prob], ...] and per-target rank/prob."""
        top = [[[[tok, round(float(p), 6)] for tok, p in zip(toks, probs, strict=True)]
                 for toks, probs in zip(row_toks, row_probs, strict=True)]
                for row_toks, row_probs in zip(self.top_tokens, self.top_probs.tolist(), strict=True)]
        targets = {
            t: {"rank": self.target_rank[t].tolist(),
                "prob": [[round(p, 6) for p in row] for row in self.target_prob[t].tolist()],
                "logit": [[round(v, 4) for v in row] for row in self.target_logit[t].tolist()]}
            for t in self.target_rank
        }
        return {
            "lens": self.lens,
            "layers": self.layers,
            "tokens": self.tokens,
            "token_ids": self.token_ids,
            "top": top,
            "kl_to_final": [[round(v, 6) for v in row] for row in self.kl_to_final.tolist()],
            "targets": targets,
            "provenance": self.provenance,
        }


def _target_ids(model: HookedModel, targets: Sequence[str | int]) -> dict[str, int]:
    out: dict[str, int] = {}
    for target in targets:
        if isinstance(target, int):
            label = model.to_str_tokens(torch.tensor([target]))[0] if model.tokenizer is not None else str(target)
            out[label] = target
        else:
            out[target] = model.to_single_token(target)
    return out


def logit_lens(model: HookedModel, inputs: Inputs, sites: SiteSpec = "layers", k: int = 5,
               targets: Sequence[str | int] = (), translator: Translator | None = None,
               lens: str = "logit") -> LensResult:
    """Logit lens (or, with a `translator`, tuned lens) of one prompt at every row and position.

    `inputs`: one prompt (text or ids [1, pos]). `targets`: single-token strings (or ids)
    whose rank, probability and logit are tracked. Returns a `LensResult`.

    Example:
        >>> r = logit_lens(model, "The Eiffel Tower is in the city of", targets=[" Paris"], k=3)  # doctest: +SKIP
        >>> r.top_tokens[-1][-1][0]                                                               # doctest: +SKIP
        ' Paris'
    """
    if isinstance(inputs, TokenBatch):
        ids = inputs.ids
    elif isinstance(inputs, Tensor):
        ids = inputs if inputs.dim() == 2 else inputs[None]
    else:
        ids = model.to_tokens(inputs)
    if ids.shape[0] != 1:
        raise MechscopeError(f"logit_lens reads one prompt; got a batch of {ids.shape[0]}.")
    wanted = _target_ids(model, targets)
    rows, tops, top_p, kls = [], [], [], []
    rank: dict[str, list[Tensor]] = {t: [] for t in wanted}
    prob: dict[str, list[Tensor]] = {t: [] for t in wanted}
    logit: dict[str, list[Tensor]] = {t: [] for t in wanted}
    for name, lens_logits, final in iter_lens_logits(model, ids, sites, translator):
        row = lens_logits[0].float()
        require_finite(row, f"The {lens} lens logits at {name}")
        probs = torch.softmax(row, dim=-1)
        values, indices = probs.topk(min(k, probs.shape[-1]), dim=-1)
        rows.append(name)
        tops.append(indices)
        top_p.append(values)
        kls.append(kl_divergence(final[0], row))
        for label, tid in wanted.items():
            chosen = row[:, tid]
            rank[label].append((row > chosen[:, None]).sum(dim=-1))
            prob[label].append(probs[:, tid])
            logit[label].append(chosen)
    top_ids = torch.stack(tops)
    token_ids = ids[0].tolist()
    to_str = (lambda xs: model.to_str_tokens(torch.tensor(xs))) if model.tokenizer is not None else (
        lambda xs: [str(x) for x in xs])
    top_tokens = [[to_str(pos) for pos in row] for row in top_ids.tolist()]
    return LensResult(
        layers=rows, tokens=to_str(token_ids), token_ids=token_ids, top_ids=top_ids,
        top_probs=torch.stack(top_p), top_tokens=top_tokens, kl_to_final=torch.stack(kls),
        target_rank={t: torch.stack(v) for t, v in rank.items()},
        target_prob={t: torch.stack(v) for t, v in prob.items()},
        target_logit={t: torch.stack(v) for t, v in logit.items()},
        lens=lens, provenance=provenance(model, lens=lens),
    )
