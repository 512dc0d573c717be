"""Generation with interventions: greedy or seeded sampling (temperature, top-p), batched, with the KV cache.

Prompts are left-padded into one batch; position ids come from the attention mask, so each row
is computed as if alone. The interventions' `PositionState` is moved along at every step, so
`where="prompt"` / `"generated"` / listed positions mean the same with and without the cache,
and cached and uncached generation give the same tokens.

Example:
    >>> out = generate(model, ["I went to the"], [Clamp(sae, 1234, 8.0)], max_new_tokens=20)   # doctest: +SKIP
    >>> out.texts[0]                                                                        # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from transformers import DynamicCache

from mechscope.core.errors import MechscopeError
from mechscope.core.partial_runs import cache_kwarg
from mechscope.features.steering.interventions import Intervention, PositionState, steering


@dataclass
class Generation:
    """What `generate` returns: the new tokens and texts of each prompt.

    `tokens [batch, new]` generated ids (padding after a row's end-of-text), `lengths [batch]` tokens
    generated per row (an end-of-text token included), `texts` the decoded continuations, `prompts`
    the inputs.

    Example:
        >>> import torch
        >>> from mechscope.core.examples import tiny_model
        >>> model = tiny_model()       # 2-layer random Llama, width 16, word-level tokenizer
        >>> out = generate(model, ["the cat", "a dog ran on"], max_new_tokens=3, stop_at_eos=False)
        >>> out.prompts, out.tokens.shape, out.lengths.tolist(), len(out.texts)
        (['the cat', 'a dog ran on'], torch.Size([2, 3]), [3, 3], 2)
    """

    prompts: list[str]
    tokens: Tensor
    lengths: Tensor
    texts: list[str]


def left_pad(model: Any, prompts: Sequence[str]) -> tuple[Tensor, Tensor, Tensor]:
    """Token ids and mask `[batch, pos]`, left-padded, and each row's prompt length `[batch]`.

    Example:
        >>> import torch
        >>> from mechscope.core.examples import tiny_model
        >>> model = tiny_model()       # 2-layer random Llama, width 16, word-level tokenizer
        >>> ids, mask, lengths = left_pad(model, ["the cat sat", "a dog"])
        >>> ids.tolist(), mask.tolist(), lengths.tolist()
        ([[1, 2, 3], [0, 5, 7]], [[1, 1, 1], [0, 1, 1]], [3, 2])
    """
    batch = model.tokenize(list(prompts))
    lengths = batch.lengths
    width = int(lengths.max())
    ids = torch.full_like(batch.ids[:, :width], _pad_id(model))
    mask = torch.zeros_like(ids)
    for row, n in enumerate(lengths.tolist()):
        ids[row, width - n:] = batch.ids[row, :n]
        mask[row, width - n:] = 1
    return ids, mask, lengths


def _pad_id(model: Any) -> int:
    tokenizer = getattr(model, "tokenizer", None)
    for name in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, name, None)
        if value is not None:
            return int(value)
    return 0


def next_token(logits: Tensor, temperature: float, top_p: float, generator: torch.Generator | None) -> Tensor:
    """Greedy (`temperature == 0`) or nucleus sampling from `logits [batch, vocab]`; returns ids `[batch]`.

    Top-p keeps the smallest set of most likely tokens whose probability reaches `top_p` (at least one).

    Example:
        >>> next_token(torch.tensor([[0.0, 2.0, 1.0]]), 0.0, 1.0, None)
        tensor([1])
    """
    if temperature == 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        before = sorted_probs.cumsum(-1) - sorted_probs
        sorted_probs = sorted_probs.masked_fill(before >= top_p, 0.0)
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_probs)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def _check(temperature: float, top_p: float, max_new_tokens: int) -> None:
    if temperature < 0:
        raise MechscopeError(f"temperature must be >= 0 (0 is greedy), got {temperature}.")
    if not 0 < top_p <= 1:
        raise MechscopeError(f"top_p must be in (0, 1], got {top_p}.")
    if max_new_tokens < 1:
        raise MechscopeError(f"max_new_tokens must be at least 1, got {max_new_tokens}.")


@torch.no_grad()
def _generate_batch(model: Any, prompts: Sequence[str], interventions: Sequence[Intervention],
                    max_new_tokens: int, temperature: float, top_p: float, seed: int,
                    use_cache: bool, stop_at_eos: bool) -> tuple[Tensor, Tensor]:
    hf = model.hf_model
    device = model.device
    ids, mask, lengths = left_pad(model, prompts)
    ids, mask = ids.to(device), mask.to(device)
    width = ids.shape[1]
    generator = torch.Generator(device=device).manual_seed(seed) if temperature > 0 else None
    eos = getattr(getattr(model, "tokenizer", None), "eos_token_id", None) if stop_at_eos else None
    done = torch.zeros(len(prompts), dtype=torch.bool, device=device)
    n_new = torch.zeros(len(prompts), dtype=torch.long, device=device)
    state = PositionState(offset=0, start=(width - lengths).to(device), prompt_len=lengths.to(device))
    cache = DynamicCache() if use_cache else None
    cache_arg = cache_kwarg(hf)
    positions = (mask.cumsum(-1) - 1).clamp_min(0)
    step_ids, step_pos = ids, positions
    with steering(model, interventions, state):
        for _ in range(max_new_tokens):
            out = hf(input_ids=step_ids, attention_mask=mask, position_ids=step_pos, use_cache=use_cache,
                     logits_to_keep=1, **({cache_arg: cache} if use_cache else {}))
            token = next_token(out.logits[:, -1], temperature, top_p, generator)
            token = torch.where(done, torch.full_like(token, _pad_id(model)), token)
            n_new += (~done).long()
            if eos is not None:
                done |= token == eos
            state.offset = ids.shape[1] if use_cache else 0
            ids = torch.cat([ids, token[:, None]], dim=1)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            positions = torch.cat([positions, positions[:, -1:] + 1], dim=1)
            step_ids, step_pos = (ids[:, -1:], positions[:, -1:]) if use_cache else (ids, positions)
            if bool(done.all()):
                break
    return ids[:, width:].cpu(), n_new.cpu()


def generate(model: Any, prompts: str | Sequence[str], interventions: Sequence[Intervention] = (), *,
             max_new_tokens: int = 30, temperature: float = 0.0, top_p: float = 1.0, seed: int = 0,
             use_cache: bool = True, stop_at_eos: bool = True, batch_size: int = 8) -> Generation:
    """Continue each prompt with the interventions applied; greedy when `temperature == 0`.

    Sampling is seeded: batch `b` (of `batch_size` prompts) draws from a generator seeded `seed + b`.

    Example:
        >>> import torch
        >>> from mechscope.core.examples import tiny_model
        >>> model = tiny_model()       # 2-layer random Llama, width 16, word-level tokenizer
        >>> from mechscope.features.steering.interventions import Add
        >>> push = Add(torch.randn(16), 8.0, hook_name="blocks.0.hook_resid_post")
        >>> plain = generate(model, "the cat", max_new_tokens=4, stop_at_eos=False)
        >>> steered = generate(model, "the cat", [push], max_new_tokens=4, stop_at_eos=False)
        >>> plain.tokens.shape == steered.tokens.shape == (1, 4)
        True
        >>> torch.equal(plain.tokens, generate(model, "the cat", max_new_tokens=4, stop_at_eos=False).tokens)   # greedy
        True
    """
    _check(temperature, top_p, max_new_tokens)
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not prompts:
        raise MechscopeError("No prompts given.")
    chunks, counts = [], []
    for b, start in enumerate(range(0, len(prompts), batch_size)):
        tokens, n = _generate_batch(model, prompts[start:start + batch_size], interventions, max_new_tokens,
                                    temperature, top_p, seed + b, use_cache, stop_at_eos)
        chunks.append(tokens)
        counts.append(n)
    width = max(c.shape[1] for c in chunks)
    tokens = torch.cat([torch.nn.functional.pad(c, (0, width - c.shape[1]), value=_pad_id(model)) for c in chunks])
    lengths = torch.cat(counts)
    tokenizer = getattr(model, "tokenizer", None)
    texts = [tokenizer.decode(row[:n].tolist(), skip_special_tokens=True) if hasattr(tokenizer, "decode") else ""
             for row, n in zip(tokens, lengths.tolist(), strict=True)]
    return Generation(prompts, tokens, lengths, texts)
