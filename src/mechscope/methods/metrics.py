"""Metrics of a run's logits for causal experiments, and normalized recovery.

Each metric maps logits `[batch, pos, d_vocab]` to one number per row (`reduce="none"`)
or their mean (`reduce="mean"`). Rows read their position and answer tokens from
per-pair tensors: when a batch holds several copies of `n_pairs` prompt pairs (as a
patching sweep does), row `r` uses pair `r % n_pairs`.

Formulas (at position `p`, logits `z`, log-softmax `log q = z - logsumexp(z)`):

- logit difference: `z[answer] - z[wrong]`
- log-probability: `log q[answer]`; probability: `q[answer]`
- KL divergence to the clean run: `sum_v p_clean[v] * (log p_clean[v] - log q[v])`
- normalized recovery: `(patched - corrupt) / (clean - corrupt)`; 1 means the patch
  restores the clean metric, 0 means it changes nothing.

The KL divergence and normalized recovery formulas are defined once, in `mechscope.core.scores`,
and re-exported here.

Example:
    >>> import torch
    >>> logits = torch.tensor([[[0.0, 2.0, 5.0]]])
    >>> logit_diff(logits, answer=2, wrong=1)
    tensor(3.)
    >>> normalized_recovery(torch.tensor(2.0), clean=4.0, corrupt=0.0)
    tensor(0.5000)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Protocol

import torch
from torch import Tensor

# Written once in core.scores (dictionaries and features report them too); re-exported here.
from mechscope.core.scores import check_recoverable, kl_divergence, normalized_recovery  # noqa: F401

Reduce = Literal["mean", "none"]
Tokens = int | Sequence[int] | Tensor
Positions = int | Sequence[int] | Tensor


class Metric(Protocol):
    """A function of logits `[batch, pos, d_vocab]` giving one value per row `[batch]`.

    Example:
        >>> import torch
        >>> def last_token_logit(logits: torch.Tensor) -> torch.Tensor:   # any such function is a Metric
        ...     return logits[:, -1, 0]
        >>> last_token_logit(torch.tensor([[[0.0, 1.0], [2.0, 3.0]]]))
        tensor([2.])
    """

    def __call__(self, logits: Tensor) -> Tensor: ...


def _per_pair(values: Tokens | Positions, device: torch.device) -> Tensor:
    return torch.as_tensor(values, dtype=torch.long, device=device).reshape(-1)


def _rows(values: Tensor, batch: int) -> Tensor:
    """Per-pair values repeated over a batch of `batch // n_pairs` copies (row r -> pair r % n)."""
    if batch % values.numel():
        raise ValueError(f"A batch of {batch} rows is not a whole number of copies of {values.numel()} pairs.")
    return values.repeat(batch // values.numel())


def logits_at(logits: Tensor, pos: Positions = -1) -> Tensor:
    """Logits `[batch, d_vocab]` at position `pos` (an int, or one position per pair).

    Example:
        >>> logits = torch.arange(12.0).reshape(1, 3, 4)      # [batch, pos, d_vocab]
        >>> logits_at(logits).tolist()
        [[8.0, 9.0, 10.0, 11.0]]
    """
    if logits.dim() == 2:
        return logits
    positions = _per_pair(pos, logits.device)
    if positions.numel() == 1:
        return logits[:, int(positions)]
    rows = _rows(positions, logits.shape[0])
    return logits[torch.arange(logits.shape[0], device=logits.device), rows]


def _reduce(values: Tensor, reduce: Reduce) -> Tensor:
    return values.mean() if reduce == "mean" else values


def _gather(last: Tensor, tokens: Tokens) -> Tensor:
    ids = _rows(_per_pair(tokens, last.device), last.shape[0])
    return last.gather(-1, ids[:, None]).squeeze(-1)


def logit_diff(logits: Tensor, answer: Tokens, wrong: Tokens, pos: Positions = -1,
               reduce: Reduce = "mean") -> Tensor:
    """`logits[answer] - logits[wrong]` at `pos`: per row, or their mean (`LogitDiff` as a function).

    Example:
        >>> logits = torch.tensor([[[0.0, 1.0, 3.0]]])         # [batch, pos, d_vocab]
        >>> logit_diff(logits, answer=2, wrong=1).item()
        2.0
    """
    return _reduce(LogitDiff(answer, wrong, pos)(logits), reduce)


def answer_logprob(logits: Tensor, answer: Tokens, pos: Positions = -1, reduce: Reduce = "mean") -> Tensor:
    """`log softmax(logits)[answer]` at `pos` (`AnswerLogProb` as a function).

    Example:
        >>> round(answer_logprob(torch.zeros(1, 1, 4), answer=0).item(), 4)   # uniform over 4: log(1/4)
        -1.3863
    """
    return _reduce(AnswerLogProb(answer, pos)(logits), reduce)


def answer_prob(logits: Tensor, answer: Tokens, pos: Positions = -1, reduce: Reduce = "mean") -> Tensor:
    """`softmax(logits)[answer]` at `pos` (`AnswerProb` as a function).

    Example:
        >>> answer_prob(torch.zeros(1, 1, 4), answer=3).item()
        0.25
    """
    return _reduce(AnswerProb(answer, pos)(logits), reduce)


def kl_to_clean(logits: Tensor, clean_logits: Tensor, pos: Positions = -1, reduce: Reduce = "mean") -> Tensor:
    """`KL(p_clean || q)` at `pos`, where `clean_logits` holds one row per pair (or `[n_pairs, d_vocab]`).

    Example:
        >>> logits = torch.tensor([[[1.0, 2.0, 3.0]]])
        >>> kl_to_clean(logits, logits).item()
        0.0
    """
    return _reduce(KLToClean(clean_logits, pos)(logits), reduce)


class PositionMetric:
    """A metric read at one position per pair; sweeps ask the model for logits there only.

    Subclasses implement `at(last)` on logits `[batch, d_vocab]` at `positions`.

    Example:
        >>> import torch
        >>> class TopLogit(PositionMetric):
        ...     name = "top_logit"
        ...     def at(self, last):
        ...         return last.max(-1).values
        >>> TopLogit(pos=0)(torch.tensor([[[0.0, 4.0], [1.0, 2.0]]])), TopLogit().describe()
        (tensor([4.]), {'name': 'top_logit'})
    """

    name = "metric"

    def __init__(self, pos: Positions = -1) -> None:
        self.positions = pos

    def at(self, last: Tensor) -> Tensor:
        raise NotImplementedError

    def __call__(self, logits: Tensor) -> Tensor:
        return self.at(logits_at(logits, self.positions).float())

    def describe(self) -> dict[str, object]:
        return {"name": self.name}


class LogitDiff(PositionMetric):
    """Per-row `logits[answer] - logits[wrong]` at `pos` (see `logit_diff`).

    Example:
        >>> LogitDiff(answer=2, wrong=1)(torch.tensor([[[0.0, 2.0, 5.0]]]))
        tensor([3.])
    """

    name = "logit_diff"

    def __init__(self, answer: Tokens, wrong: Tokens, pos: Positions = -1) -> None:
        super().__init__(pos)
        self.answer, self.wrong = answer, wrong

    def at(self, last: Tensor) -> Tensor:
        return _gather(last, self.answer) - _gather(last, self.wrong)

    def describe(self) -> dict[str, object]:
        return {"name": self.name, "answer": _plain(self.answer), "wrong": _plain(self.wrong)}


class AnswerLogProb(PositionMetric):
    """Per-row `log p(answer)` at `pos`.

    Example:
        >>> round(AnswerLogProb(answer=0)(torch.zeros(1, 1, 4)).item(), 4)           # log(1/4)
        -1.3863
        >>> AnswerLogProb(answer=[0, 1], pos=[0, 1]).describe()                     # one answer and position per pair
        {'name': 'logprob', 'answer': [0, 1]}
    """

    name = "logprob"

    def __init__(self, answer: Tokens, pos: Positions = -1) -> None:
        super().__init__(pos)
        self.answer = answer

    def at(self, last: Tensor) -> Tensor:
        return _gather(last.log_softmax(-1), self.answer)

    def describe(self) -> dict[str, object]:
        return {"name": self.name, "answer": _plain(self.answer)}


class AnswerProb(AnswerLogProb):
    """Per-row `p(answer)` at `pos`.

    Example:
        >>> AnswerProb(answer=2)(torch.tensor([[[0.0, 0.0, 0.0, 0.0]]]))
        tensor([0.2500])
    """

    name = "prob"

    def at(self, last: Tensor) -> Tensor:
        return super().at(last).exp()


class KLToClean(PositionMetric):
    """Per-row `KL(p_clean || q)` at `pos`; `clean_logits` is `[n_pairs, pos, d_vocab]` or `[n_pairs, d_vocab]`.

    Example:
        >>> clean = torch.tensor([[[1.0, 2.0, 3.0]]])
        >>> KLToClean(clean)(clean), KLToClean(clean)(torch.zeros(1, 1, 3)) > 0
        (tensor([0.]), tensor([True]))
    """

    name = "kl"

    def __init__(self, clean_logits: Tensor, pos: Positions = -1) -> None:
        super().__init__(pos)
        self.clean = logits_at(clean_logits, pos).float()

    def at(self, last: Tensor) -> Tensor:
        return kl_divergence(self.clean.to(last.device).repeat(last.shape[0] // self.clean.shape[0], 1), last)


def _plain(tokens: Tokens) -> int | list[int]:
    values = torch.as_tensor(tokens).reshape(-1).tolist()
    return values[0] if len(values) == 1 else values


METRICS = {"logit_diff": LogitDiff, "logprob": AnswerLogProb, "prob": AnswerProb}
