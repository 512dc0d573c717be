"""Turning text into token batches and back. Right padding, so positions match the unpadded prompt."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor

from mechscope.core.errors import MechscopeError, TokenizationError


class TokenBatch(NamedTuple):
    """Token ids [batch, pos], attention mask [batch, pos] (1 = real token) and lengths [batch].

    Example:
        >>> import torch
        >>> batch = TokenBatch(torch.tensor([[5, 6, 7], [5, 6, 0]]), torch.tensor([[1, 1, 1], [1, 1, 0]]))
        >>> batch.lengths, batch.last_positions
        (tensor([3, 2]), tensor([2, 1]))
    """

    ids: Tensor
    attention_mask: Tensor

    @property
    def lengths(self) -> Tensor:
        return self.attention_mask.sum(dim=-1)

    @property
    def last_positions(self) -> Tensor:
        """Index of each row's last real token."""
        return self.lengths - 1


def require_tokenizer(tokenizer: Any) -> Any:
    """Return `tokenizer`, or raise a clear error when the model was wrapped without one.

    Example:
        >>> require_tokenizer(None)
        Traceback (most recent call last):
        ...
        mechscope.core.errors.MechscopeError: This model was wrapped without a tokenizer; pass token ids instead of text.
    """
    if tokenizer is None:
        raise MechscopeError("This model was wrapped without a tokenizer; pass token ids instead of text.")
    return tokenizer


def tokenize(tokenizer: Any, texts: str | list[str], prepend_bos: bool | None = None) -> TokenBatch:
    """Tokenize one prompt or several, padded on the right.

    `prepend_bos=None` keeps the tokenizer's own choice (what HF's model sees); True/False forces it.

    Example:
        >>> from tokenizers import Tokenizer, models, pre_tokenizers
        >>> from transformers import PreTrainedTokenizerFast
        >>> words = Tokenizer(models.WordLevel({"<s>": 0, "the": 1, "cat": 2, "sat": 3}, unk_token="<s>"))
        >>> words.pre_tokenizer = pre_tokenizers.Whitespace()
        >>> tokenizer = PreTrainedTokenizerFast(tokenizer_object=words, bos_token="<s>", pad_token="<s>")
        >>> batch = tokenize(tokenizer, ["the cat sat", "the cat"])
        >>> batch.ids, batch.attention_mask
        (tensor([[1, 2, 3],
                [1, 2, 0]]), tensor([[1, 1, 1],
                [1, 1, 0]]))
        >>> tokenize(tokenizer, "the cat", prepend_bos=True).ids
        tensor([[0, 1, 2]])
    """
    tokenizer = require_tokenizer(tokenizer)
    batch = [texts] if isinstance(texts, str) else list(texts)
    if not batch:
        raise TokenizationError("No prompts given.")
    rows: list[list[int]] = []
    for index, text in enumerate(batch):
        if not isinstance(text, str) or not text:
            where = "" if isinstance(texts, str) else f" (prompt {index})"
            raise TokenizationError(f"Empty prompt{where}: give at least one character of text.")
        ids = list(tokenizer(text, add_special_tokens=True)["input_ids"])
        bos = tokenizer.bos_token_id
        if prepend_bos is True and bos is not None and (not ids or ids[0] != bos):
            ids = [bos, *ids]
        elif prepend_bos is False and bos is not None and ids and ids[0] == bos:
            ids = ids[1:]
        rows.append(ids)
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = 1
    return TokenBatch(ids, mask)


def check_ids(ids: Tensor, d_vocab: int, n_ctx: int | None) -> None:
    """Refuse token ids [batch, pos] the model cannot embed: outside `[0, d_vocab)` or longer than `n_ctx`.

    Example:
        >>> check_ids(torch.tensor([[1, 2, 99]]), d_vocab=50, n_ctx=8)
        Traceback (most recent call last):
        ...
        mechscope.core.errors.TokenizationError: Token id 99 (row 0, position 2) is outside this model's vocabulary of 50 ids (0..49); use ids the tokenizer produces.
    """
    if ids.dtype.is_floating_point or ids.dtype == torch.bool:
        raise TokenizationError(f"Token ids must be integers, got a {ids.dtype} tensor; pass ids from the tokenizer.")
    if n_ctx is not None and ids.shape[-1] > n_ctx:
        raise TokenizationError(
            f"The input is {ids.shape[-1]} tokens long; this model's context is {n_ctx} tokens. "
            "Shorten the prompt (or the sequence length asked for) to at most that.")
    bad = (ids < 0) | (ids >= d_vocab)
    if bool(bad.any()):
        row, pos = (int(i) for i in bad.nonzero()[0])
        raise TokenizationError(
            f"Token id {int(ids[row, pos])} (row {row}, position {pos}) is outside this model's vocabulary of "
            f"{d_vocab} ids (0..{d_vocab - 1}); use ids the tokenizer produces.")


def str_tokens(tokenizer: Any, ids: Tensor | list[int]) -> list[str]:
    """Each token id decoded on its own, e.g. [' The', ' Eiff', 'el'].

    Example:
        >>> from tokenizers import Tokenizer, models, pre_tokenizers
        >>> from transformers import PreTrainedTokenizerFast
        >>> words = Tokenizer(models.WordLevel({"<s>": 0, "the": 1, "cat": 2, "sat": 3}, unk_token="<s>"))
        >>> words.pre_tokenizer = pre_tokenizers.Whitespace()
        >>> tokenizer = PreTrainedTokenizerFast(tokenizer_object=words, bos_token="<s>", pad_token="<s>")
        >>> str_tokens(tokenizer, [1, 2, 3])
        ['the', 'cat', 'sat']
    """
    tokenizer = require_tokenizer(tokenizer)
    flat = ids.tolist() if isinstance(ids, Tensor) else list(ids)
    return [tokenizer.decode([i]) for i in flat]


def single_token(tokenizer: Any, text: str) -> int:
    """The id of `text` when it is exactly one token; a clear error showing its tokens otherwise.

    Example:
        >>> from tokenizers import Tokenizer, models, pre_tokenizers
        >>> from transformers import PreTrainedTokenizerFast
        >>> words = Tokenizer(models.WordLevel({"<s>": 0, "the": 1, "cat": 2, "sat": 3}, unk_token="<s>"))
        >>> words.pre_tokenizer = pre_tokenizers.Whitespace()
        >>> tokenizer = PreTrainedTokenizerFast(tokenizer_object=words, bos_token="<s>", pad_token="<s>")
        >>> single_token(tokenizer, "cat")
        2
        >>> single_token(tokenizer, "the cat")
        Traceback (most recent call last):
        ...
        mechscope.core.errors.TokenizationError: 'the cat' is 2 tokens, not one: ['the', 'cat']. Use a string that is a single token, such as 'the'.
    """
    tokenizer = require_tokenizer(tokenizer)
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    if len(ids) != 1:
        pieces = str_tokens(tokenizer, ids)
        raise TokenizationError(
            f"{text!r} is {len(ids)} tokens, not one: {pieces}. Use a string that is a single token"
            + (f", such as {pieces[0]!r}." if pieces else ".")
        )
    return ids[0]
