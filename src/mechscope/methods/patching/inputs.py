"""Prompt pairs and answers for patching: tokenized once, checked for equal lengths and single tokens.

Example:
    >>> pair = prepare_pair(model, "The Eiffel Tower is in the city of",
    ...                     "The Colosseum is in the city of")            # doctest: +SKIP
    >>> pair.str_tokens[:3], pair.last.tolist()                             # doctest: +SKIP
    (['The', ' E', 'iffel'], [8])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from mechscope.core.errors import MechscopeError, TokenizationError
from mechscope.core.tokens import TokenBatch
from mechscope.methods.metrics import METRICS, LogitDiff, Metric, PositionMetric

Prompts = str | Sequence[str] | Tensor | TokenBatch
Answers = str | int | Sequence[str] | Sequence[int] | Tensor


@dataclass(frozen=True)
class PromptPair:
    """Clean and corrupted token batches of equal shape, `n_pairs` rows each.

    Example:
        >>> import torch
        >>> from transformers import LlamaConfig, LlamaForCausalLM
        >>> from mechscope.core.hooked import HookedModel
        >>> _ = torch.manual_seed(0)
        >>> cfg = LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
        ...                   num_attention_heads=2, num_key_value_heads=1)
        >>> model = HookedModel(LlamaForCausalLM(cfg), name="tiny")
        >>> clean, corrupt = torch.tensor([[1, 2, 3, 4, 5]]), torch.tensor([[1, 2, 9, 4, 5]])
        >>> pair = prepare_pair(model, clean, corrupt)
        >>> pair.n_pairs, pair.n_pos, pair.last.tolist(), pair.str_tokens
        (1, 5, [4], ['1', '2', '3', '4', '5'])
        >>> base, source = pair.base_and_source("denoise")           # patch clean activations into the corrupted run
        >>> base.ids.tolist()
        [[1, 2, 9, 4, 5]]
    """

    clean: TokenBatch
    corrupt: TokenBatch
    str_tokens: list[str]
    corrupt_str_tokens: list[str]

    @property
    def n_pairs(self) -> int:
        return int(self.clean.ids.shape[0])

    @property
    def n_pos(self) -> int:
        return int(self.clean.ids.shape[1])

    @property
    def last(self) -> Tensor:
        """Each pair's last real position."""
        return self.clean.last_positions

    def base_and_source(self, mode: str) -> tuple[TokenBatch, TokenBatch]:
        """(run to patch into, run to take activations from): denoise = (corrupt, clean), noise = (clean, corrupt)."""
        if mode == "denoise":
            return self.corrupt, self.clean
        if mode == "noise":
            return self.clean, self.corrupt
        raise MechscopeError(f"mode must be 'denoise' or 'noise', not {mode!r}.")


def token_batch(model: Any, prompts: Prompts) -> TokenBatch:
    """`prompts` as a `TokenBatch`: text is tokenized, ids `[pos]` or `[batch, pos]` get a full mask.

    Example:
        >>> token_batch(None, torch.tensor([5, 6, 7])).attention_mask.tolist()
        [[1, 1, 1]]
    """
    if isinstance(prompts, TokenBatch):
        return prompts
    if isinstance(prompts, Tensor):
        ids = prompts if prompts.dim() == 2 else prompts[None]
        return TokenBatch(ids, torch.ones_like(ids))
    return model.tokenize(prompts)


def _show(model: Any, batch: TokenBatch, row: int) -> list[str]:
    ids = batch.ids[row, : int(batch.lengths[row])]
    return model.to_str_tokens(ids) if model.tokenizer is not None else [str(i) for i in ids.tolist()]


def prepare_pair(model: Any, clean: Prompts, corrupt: Prompts) -> PromptPair:
    """Tokenize clean and corrupted prompts; a `TokenizationError` showing both when their lengths differ.

    Example:
        >>> import torch
        >>> from mechscope.core.examples import tiny_model
        >>> model = tiny_model(vocab_size=50)       # 2-layer random Llama, width 16
        >>> pair = prepare_pair(model, torch.tensor([[1, 2, 3]]), torch.tensor([[1, 8, 3]]))
        >>> pair.clean.ids.shape == pair.corrupt.ids.shape
        True
        >>> prepare_pair(model, torch.tensor([[1, 2, 3]]), torch.tensor([[1, 8]]))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        mechscope.core.errors.TokenizationError: Clean and corrupted prompts must have the same number of tokens ...
    """
    clean_batch, corrupt_batch = token_batch(model, clean), token_batch(model, corrupt)
    if clean_batch.ids.shape[0] != corrupt_batch.ids.shape[0]:
        raise TokenizationError(f"{clean_batch.ids.shape[0]} clean prompts but {corrupt_batch.ids.shape[0]} "
                                "corrupted ones; give one corrupted prompt per clean prompt.")
    for row in range(clean_batch.ids.shape[0]):
        a, b = int(clean_batch.lengths[row]), int(corrupt_batch.lengths[row])
        if a != b:
            raise TokenizationError(
                f"Clean and corrupted prompts must have the same number of tokens so positions line up; "
                f"pair {row} has {a} and {b}:\n  clean:   {_show(model, clean_batch, row)}\n"
                f"  corrupt: {_show(model, corrupt_batch, row)}")
    width = max(clean_batch.ids.shape[1], corrupt_batch.ids.shape[1])
    clean_batch, corrupt_batch = _pad_to(clean_batch, width), _pad_to(corrupt_batch, width)
    return PromptPair(clean_batch, corrupt_batch, _show(model, clean_batch, 0), _show(model, corrupt_batch, 0))


def _pad_to(batch: TokenBatch, width: int) -> TokenBatch:
    extra = width - batch.ids.shape[1]
    if extra <= 0:
        return batch
    pad = torch.nn.functional.pad
    return TokenBatch(pad(batch.ids, (0, extra), value=int(batch.ids[0, -1])), pad(batch.attention_mask, (0, extra)))


def answer_ids(model: Any, answers: Answers, n_pairs: int, what: str = "answer") -> Tensor:
    """One token id per pair from strings (each exactly one token) or ids; a clear error otherwise.

    Example:
        >>> answer_ids(None, 7, n_pairs=3)                           # one answer for every pair
        tensor([7, 7, 7])
        >>> answer_ids(None, [7, 8], n_pairs=3)
        Traceback (most recent call last):
        ...
        mechscope.core.errors.TokenizationError: 2 answers for 3 prompt pairs; give one, or one per pair.
        >>> answer_ids(model, " Paris", n_pairs=1)                   # doctest: +SKIP
        tensor([7042])
    """
    if isinstance(answers, Tensor):
        values = answers.reshape(-1).tolist()
    elif isinstance(answers, (str, int)):
        values = [answers]
    else:
        values = list(answers)
    ids = []
    for value in values:
        if isinstance(value, str):
            try:
                ids.append(model.to_single_token(value))
            except TokenizationError as err:
                raise TokenizationError(f"The {what} must be a single token. {err}") from None
        else:
            ids.append(int(value))
    if len(ids) == 1:
        ids = ids * n_pairs
    if len(ids) != n_pairs:
        raise TokenizationError(f"{len(ids)} {what}s for {n_pairs} prompt pairs; give one, or one per pair.")
    return torch.tensor(ids, dtype=torch.long)


def resolve_metric(model: Any, pair: PromptPair, metric: Metric | str | None,
                   answer: Answers | None, wrong: Answers | None) -> Metric:
    """The metric a patching call uses: a given one, or one built from answers at each pair's last token.

    `metric=None` with `answer` and `wrong` gives the logit difference; `"logprob"` / `"prob"`
    need `answer` only.

    Example:
        >>> import torch
        >>> from mechscope.core.examples import tiny_model
        >>> model = tiny_model(vocab_size=50)       # 2-layer random Llama, width 16
        >>> clean, corrupt = torch.tensor([[1, 2, 3, 4, 5]]), torch.tensor([[1, 2, 9, 4, 5]])
        >>> pair = prepare_pair(model, clean, corrupt)
        >>> metric = resolve_metric(model, pair, None, answer=6, wrong=7)
        >>> metric.describe()
        {'name': 'logit_diff', 'answer': 6, 'wrong': 7}
        >>> resolve_metric(model, pair, "prob", answer=6, wrong=None).name
        'prob'
    """
    if metric is not None and not isinstance(metric, str):
        return metric
    name = metric or "logit_diff"
    if name not in METRICS:
        raise MechscopeError(f"Unknown metric {name!r}; choose one of {sorted(METRICS)} or pass a function.")
    if answer is None or (name == "logit_diff" and wrong is None):
        raise MechscopeError("Give answer= and wrong= (e.g. ' Paris' and ' Rome'), or a metric function.")
    good = answer_ids(model, answer, pair.n_pairs, "answer")
    if name == "logit_diff":
        return LogitDiff(good, answer_ids(model, wrong, pair.n_pairs, "wrong answer"), pair.last)
    return METRICS[name](good, pair.last)


def describe_metric(metric: Metric) -> dict[str, Any]:
    """JSON description of a metric: its own `describe()` for built-in metrics, else its name.

    Example:
        >>> def my_metric(logits): return logits[:, -1, 0]
        >>> describe_metric(my_metric)
        {'name': 'my_metric'}
    """
    if isinstance(metric, PositionMetric):
        return metric.describe()
    return {"name": getattr(metric, "__name__", type(metric).__name__)}
