"""Attention-head detectors, a head-classification table, and the in-context-learning score.

All scores are read from attention patterns `A[b, h, q, k]` on sequences of repeated random
tokens `[first, r_1 .. r_L, r_1 .. r_L]` (position 0 is the BOS token, or a fixed first
token when the tokenizer has none). With `S = {L+1 .. 2L}` the positions of the second copy:

    prev_token      = mean_{b, q in 2..2L}  A[b, h, q, q-1]
    duplicate_token = mean_{b, q in S}      A[b, h, q, q-L]      (the first copy of the same token)
    induction       = mean_{b, q in S}      A[b, h, q, q-L+1]    (the token after the first copy)
    bos             = mean_{b, q in 1..2L}  A[b, h, q, 0]
    entropy         = mean_{b, q in 1..2L}  -sum_k A[b, h, q, k] log A[b, h, q, k]   (nats)

Each score lies in [0, 1] except entropy. A head's `label` is the detector with the highest
score among those at or above its threshold (`THRESHOLDS`), else "other".
Patterns are per query head, so grouped-query attention needs nothing special.

The in-context-learning score (Olsson et al. 2022) is the mean next-token loss on the second
copy minus that on the first copy: `icl = loss(S) - loss(first half)`, negative when the
model copies from context. On random tokens, chance is ln(number of tokens sampled from).

Example:
    >>> model = mechscope.load_model()                          # doctest: +SKIP
    >>> table = detect_heads(model, seq_len=50, batch=8)       # doctest: +SKIP
    >>> [(r.layer, r.head) for r in table if r.label == "induction"][:3]  # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

from mechscope.core import names
from mechscope.core.errors import MechscopeError, require_finite
from mechscope.core.hooked import HookedModel, HookSpec
from mechscope.core.runner import HookPoint

THRESHOLDS: dict[str, float] = {"induction": 0.4, "prev_token": 0.4, "duplicate_token": 0.4, "bos": 0.6}
"""A head is labelled with a detector when its score is at least this (mean attention weight)."""

DETECTORS = ("prev_token", "duplicate_token", "induction", "bos")


@dataclass(frozen=True)
class HeadScores:
    """Detector scores of one head (see the module docstring for the formulas).

    Example:
        >>> s = HeadScores(layer=1, head=4, prev_token=0.1, duplicate_token=0.0, induction=0.8, bos=0.05,
        ...                entropy=1.2, label="induction")
        >>> s.label, s.induction
        ('induction', 0.8)
    """

    layer: int
    head: int
    prev_token: float
    duplicate_token: float
    induction: float
    bos: float
    entropy: float
    label: str

    def to_json(self) -> dict[str, Any]:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class ICLScore:
    """Mean next-token loss (nats) on each copy of a repeated random sequence, and their difference.

    Example:
        >>> score = ICLScore(loss_first_half=7.1, loss_second_half=1.2, icl_score=-5.9, chance=7.0)
        >>> score.loss_second_half < score.loss_first_half                # the second copy is predicted from the first
        True
    """

    loss_first_half: float
    loss_second_half: float
    icl_score: float
    chance: float


def candidate_token_ids(model: HookedModel) -> Tensor:
    """Token ids to sample random sequences from: the vocabulary without special tokens.

    Example:
        >>> import torch
        >>> from transformers import LlamaConfig, LlamaForCausalLM
        >>> from mechscope.core.hooked import HookedModel
        >>> _ = torch.manual_seed(0)
        >>> cfg = LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
        ...                   num_attention_heads=2, num_key_value_heads=1)
        >>> model = HookedModel(LlamaForCausalLM(cfg), name="tiny")
        >>> candidate_token_ids(model)[:5].tolist(), len(candidate_token_ids(model))   # no tokenizer: every id
        ([0, 1, 2, 3, 4], 50)
    """
    n = model.cfg.d_vocab
    tokenizer = model.tokenizer
    if tokenizer is not None:
        n = min(n, len(tokenizer))
        special = set(getattr(tokenizer, "all_special_ids", []) or [])
        keep = torch.tensor([i for i in range(n) if i not in special], dtype=torch.long)
        return keep
    return torch.arange(n)


def first_token_id(model: HookedModel) -> int:
    """The id put at position 0: the tokenizer's BOS, else its EOS, else 0.

    Example:
        >>> import torch
        >>> from transformers import LlamaConfig, LlamaForCausalLM
        >>> from mechscope.core.hooked import HookedModel
        >>> _ = torch.manual_seed(0)
        >>> cfg = LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
        ...                   num_attention_heads=2, num_key_value_heads=1)
        >>> model = HookedModel(LlamaForCausalLM(cfg), name="tiny")
        >>> first_token_id(model)                          # no tokenizer; the config's BOS (1) is in the vocabulary
        1
    """
    tokenizer = model.tokenizer
    for attr in ("bos_token_id", "eos_token_id"):
        value = getattr(tokenizer, attr, None) if tokenizer is not None else None
        if value is not None:
            return int(value)
    bos = getattr(model.hf_model.config, "bos_token_id", None)
    return int(bos) if isinstance(bos, int) and 0 <= bos < model.cfg.d_vocab else 0


def max_seq_len(model: HookedModel) -> int:
    """The longest `seq_len` whose repeated sequence (1 + 2 * seq_len tokens) fits the model's context.

    Example:
        >>> import torch
        >>> from mechscope.core.examples import tiny_model
        >>> model = tiny_model(vocab_size=50)       # 2-layer random Llama, width 16
        >>> model.cfg.n_ctx, max_seq_len(model)
        (2048, 1023)
    """
    return (model.cfg.n_ctx - 1) // 2 if model.cfg.n_ctx else 1 << 30


def repeated_random_tokens(model: HookedModel, seq_len: int = 50, batch: int = 8, seed: int = 0,
                           candidates: Tensor | None = None) -> Tensor:
    """Ids [batch, 1 + 2 * seq_len]: a first token, then `seq_len` random tokens twice.

    Tokens inside one half are distinct when the candidate set allows, so `duplicate_token`
    and `induction` each point at a single key position.

    Example:
        >>> import torch
        >>> from mechscope.core.examples import tiny_model
        >>> model = tiny_model(vocab_size=50)       # 2-layer random Llama, width 16
        >>> ids = repeated_random_tokens(model, seq_len=4, batch=1)
        >>> ids.shape, bool((ids[0, 1:5] == ids[0, 5:9]).all())
        (torch.Size([1, 9]), True)
    """
    if seq_len < 2:
        raise MechscopeError(f"seq_len must be at least 2, got {seq_len}.")
    longest = max_seq_len(model)
    if seq_len > longest:
        raise MechscopeError(f"seq_len {seq_len} makes sequences of {1 + 2 * seq_len} tokens; this model's context "
                             f"is {model.cfg.n_ctx} tokens: use seq_len (--seq-len) {longest} or less.")
    pool = candidate_token_ids(model) if candidates is None else candidates
    generator = torch.Generator().manual_seed(seed)
    if len(pool) >= seq_len:
        picks = torch.stack([torch.randperm(len(pool), generator=generator)[:seq_len] for _ in range(batch)])
    else:
        picks = torch.randint(0, len(pool), (batch, seq_len), generator=generator)
    half = pool[picks]
    first = torch.full((batch, 1), first_token_id(model), dtype=torch.long)
    return torch.cat([first, half, half], dim=1)


def scores_from_patterns(patterns: Tensor, seq_len: int) -> dict[str, Tensor]:
    """Detector scores [n_heads] from patterns [batch, n_heads, pos, pos] of repeated sequences.

    Example:
        >>> L = 3; A = torch.zeros(1, 1, 7, 7); A[0, 0, 0, 0] = 1
        >>> for q in range(1, 7): A[0, 0, q, q - 1] = 1
        >>> scores_from_patterns(A, L)["prev_token"].item()
        1.0
    """
    length = seq_len
    a = patterns.float()
    pos = a.shape[-1]
    if pos != 2 * length + 1:
        raise MechscopeError(f"patterns have {pos} positions; repeated sequences of seq_len={length} have {2 * length + 1}.")
    q_all = torch.arange(1, pos)
    q_prev = torch.arange(2, pos)
    q_second = torch.arange(length + 1, pos)
    entropy = -(a * a.clamp_min(1e-12).log()).sum(dim=-1)
    return {
        "prev_token": a[:, :, q_prev, q_prev - 1].mean(dim=(0, 2)),
        "duplicate_token": a[:, :, q_second, q_second - length].mean(dim=(0, 2)),
        "induction": a[:, :, q_second, q_second - length + 1].mean(dim=(0, 2)),
        "bos": a[:, :, q_all, 0].mean(dim=(0, 2)),
        "entropy": entropy[:, :, q_all].mean(dim=(0, 2)),
    }


def label_head(scores: dict[str, float], thresholds: dict[str, float] | None = None) -> str:
    """The detector with the highest score at or above its threshold, else 'other'.

    Example:
        >>> label_head({"prev_token": 0.9, "duplicate_token": 0.0, "induction": 0.1, "bos": 0.05})
        'prev_token'
    """
    limits = thresholds or THRESHOLDS
    passing = [(scores[d], d) for d in DETECTORS if scores[d] >= limits[d]]
    return max(passing)[1] if passing else "other"


def detect_heads(model: HookedModel, seq_len: int = 50, batch: int = 8, seed: int = 0,
                 ids: Tensor | None = None, thresholds: dict[str, float] | None = None) -> list[HeadScores]:
    """Score every head of `model` (one `HeadScores` per layer and head, in order).

    `ids` (optional): repeated sequences [batch, 1 + 2 * seq_len]; by default
    `repeated_random_tokens(model, seq_len, batch, seed)`.

    Example:
        >>> import torch
        >>> from mechscope.core.examples import tiny_model
        >>> model = tiny_model(vocab_size=50)       # 2-layer random Llama, width 16
        >>> table = detect_heads(model, seq_len=6, batch=2)
        >>> len(table), (table[0].layer, table[0].head), table[-1].label in (*DETECTORS, "other")
        (4, (0, 0), True)
    """
    tokens = repeated_random_tokens(model, seq_len, batch, seed) if ids is None else ids
    seq_len = (tokens.shape[1] - 1) // 2
    pattern_names = [names.pattern(layer) for layer in range(model.cfg.n_layers)]
    _, cache = model.run_with_cache(tokens, names=pattern_names)
    table: list[HeadScores] = []
    for layer, name in enumerate(pattern_names):
        require_finite(cache[name], f"The attention pattern {name}")
        scores = scores_from_patterns(cache[name], seq_len)
        for head in range(scores["induction"].shape[0]):
            values = {k: float(v[head]) for k, v in scores.items()}
            table.append(HeadScores(layer=layer, head=head, label=label_head(values, thresholds), **values))
    return table


def scores_tensor(table: Sequence[HeadScores], detector: str) -> Tensor:
    """One detector's scores as a [n_layers, n_heads] tensor (for plots).

    Example:
        >>> row = dict(prev_token=0.75, duplicate_token=0.0, induction=0.1, bos=0.0, entropy=1.0, label="prev_token")
        >>> table = [HeadScores(layer=0, head=h, **row) for h in range(2)]
        >>> scores_tensor(table, "prev_token").tolist()
        [[0.75, 0.75]]
    """
    n_layers = max(r.layer for r in table) + 1
    n_heads = max(r.head for r in table) + 1
    grid = torch.zeros(n_layers, n_heads)
    for r in table:
        grid[r.layer, r.head] = getattr(r, detector)
    return grid


def head_ablation_hooks(heads: Sequence[tuple[int, int]], mode: str = "zero") -> HookSpec:
    """Forward hooks that ablate heads `(layer, head)` at `attn.hook_z`.

    `mode="zero"` sets the head's output to 0; `mode="mean"` replaces it, at every position,
    by its mean over batch and positions of the same run.

    Example:
        >>> [name for name, _ in head_ablation_hooks([(3, 1), (0, 2), (3, 4)])]
        ['blocks.0.attn.hook_z', 'blocks.3.attn.hook_z']
    """
    if mode not in ("zero", "mean"):
        raise MechscopeError(f"mode must be 'zero' or 'mean', got {mode!r}.")
    by_layer: dict[int, list[int]] = {}
    for layer, head in heads:
        by_layer.setdefault(layer, []).append(head)

    def make(chosen: list[int]):
        def ablate(z: Tensor, hook: HookPoint) -> Tensor:
            z = z.clone()
            for h in chosen:
                z[:, :, h] = 0.0 if mode == "zero" else z[:, :, h].mean(dim=(0, 1), keepdim=True)
            return z

        return ablate

    return [(names.z(layer), make(chosen)) for layer, chosen in sorted(by_layer.items())]


def icl_score(model: HookedModel, ids: Tensor | None = None, seq_len: int = 50, batch: int = 8, seed: int = 0,
              fwd_hooks: HookSpec | None = None, n_candidates: int | None = None) -> ICLScore:
    """Next-token loss on the first and second copy of repeated random tokens (optionally with hooks).

    loss(first half)  = mean CE predicting r_2 .. r_L from the first copy;
    loss(second half) = mean CE predicting r_2 .. r_L again from the second copy.
    `n_candidates` (how many token ids the sequences were drawn from) sets `chance = ln n`.

    Example:
        >>> import torch
        >>> from mechscope.core.examples import tiny_model
        >>> model = tiny_model(vocab_size=50)       # 2-layer random Llama, width 16
        >>> score = icl_score(model, seq_len=6, batch=2)
        >>> round(score.icl_score, 4) == round(score.loss_second_half - score.loss_first_half, 4)
        True
    """
    tokens = repeated_random_tokens(model, seq_len, batch, seed) if ids is None else ids
    length = (tokens.shape[1] - 1) // 2
    with torch.no_grad():
        logits = model.run_with_hooks(tokens, fwd_hooks=fwd_hooks or [])
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    targets = tokens.to(log_probs.device)
    nll = -log_probs[:, :-1].gather(-1, targets[:, 1:, None])[..., 0]  # nll[:, p] predicts token p + 1
    first = nll[:, 1:length].mean()  # positions 1..L-1 predict r_2..r_L
    second = nll[:, length + 1:2 * length].mean()  # positions L+1..2L-1 predict r_2..r_L again
    n = n_candidates if n_candidates is not None else len(candidate_token_ids(model))
    return ICLScore(float(first), float(second), float(second - first), math.log(n))
