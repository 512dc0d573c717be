"""Probe datasets: JSONL examples and the token position each one is read at.

Format: one JSON object per line with ``text``, ``label`` and an optional ``token``, the
substring whose (last) token the probe reads; without it the probe reads the last token
of the text.

Example:
    >>> ds = load_probe_dataset("probe.jsonl")                       # doctest: +SKIP
    >>> positions = ds.read_positions(tokenizer)                    # doctest: +SKIP
    >>> types = ds.word_types(tokenizer)                            # doctest: +SKIP
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mechscope.core.errors import BadInputError
from mechscope.core.files import iter_jsonl


def _encode_with_offsets(tokenizer: Any, text: str, add_special_tokens: bool) -> list[tuple[int, int]]:
    try:
        enc = tokenizer(text, add_special_tokens=add_special_tokens, return_offsets_mapping=True)
    except NotImplementedError as exc:
        raise BadInputError("resolving read positions needs a fast tokenizer (offsets mapping)") from exc
    return [tuple(span) for span in enc["offset_mapping"]]


def _token_span(
    tokenizer: Any, text: str, token: str | None, occurrence: int, add_special_tokens: bool
) -> tuple[int, tuple[int, int]]:
    offsets = _encode_with_offsets(tokenizer, text, add_special_tokens)
    real = [i for i, (a, b) in enumerate(offsets) if b > a]
    if not real:
        raise BadInputError(f"text {text!r} has no tokens")
    if token is None:
        return real[-1], offsets[real[-1]]
    starts = [i for i in range(len(text)) if text.startswith(token, i)]
    if not starts:
        raise BadInputError(f"token {token!r} does not occur in {text!r}")
    try:
        start = starts[occurrence]
    except IndexError:
        raise BadInputError(
            f"token {token!r} occurs {len(starts)} times in {text!r}, no occurrence {occurrence}"
        ) from None
    end = start + len(token)
    overlapping = [i for i in real if offsets[i][0] < end and offsets[i][1] > start]
    if not overlapping:
        raise BadInputError(f"no token of {text!r} covers {token!r}")
    last = overlapping[-1]
    return last, offsets[last]


def resolve_read_position(
    tokenizer: Any,
    text: str,
    token: str | None = None,
    *,
    occurrence: int = -1,
    add_special_tokens: bool = True,
) -> int:
    """Index of the token a probe reads: the last token overlapping ``token`` in ``text``.

    ``occurrence`` picks which occurrence of ``token`` (Python indexing; -1 is the last).
    Without ``token`` this is the last non-special token. Indices count the special
    tokens the tokenizer adds when ``add_special_tokens`` (as a model run would see them).
    Needs a fast tokenizer (offsets mapping).

    Example:
        >>> from tokenizers import Tokenizer, models, pre_tokenizers
        >>> from transformers import PreTrainedTokenizerFast
        >>> words = Tokenizer(models.WordLevel({"<s>": 0, "the": 1, "cat": 2, "sat": 3}, unk_token="<s>"))
        >>> words.pre_tokenizer = pre_tokenizers.Whitespace()
        >>> tokenizer = PreTrainedTokenizerFast(tokenizer_object=words, bos_token="<s>", pad_token="<s>")
        >>> resolve_read_position(tokenizer, "the cat sat", "cat"), resolve_read_position(tokenizer, "the cat sat")
        (1, 2)
    """
    return _token_span(tokenizer, text, token, occurrence, add_special_tokens)[0]


def read_word_type(tokenizer: Any, text: str, token: str | None = None, *, occurrence: int = -1) -> str:
    """The word type an example is read at: ``token`` when given, else the last token's text.

    Used as the word type of the control task.

    Example:
        >>> from tokenizers import Tokenizer, models, pre_tokenizers
        >>> from transformers import PreTrainedTokenizerFast
        >>> words = Tokenizer(models.WordLevel({"<s>": 0, "the": 1, "cat": 2, "sat": 3}, unk_token="<s>"))
        >>> words.pre_tokenizer = pre_tokenizers.Whitespace()
        >>> tokenizer = PreTrainedTokenizerFast(tokenizer_object=words, bos_token="<s>", pad_token="<s>")
        >>> read_word_type(tokenizer, "the cat sat"), read_word_type(tokenizer, "the cat sat", token="cat")
        ('sat', 'cat')
    """
    if token is not None:
        return token
    _, (a, b) = _token_span(tokenizer, text, None, occurrence, False)
    return text[a:b]


@dataclass
class ProbeDataset:
    """Texts, labels and optional read substrings of a probe task.

    Example:
        >>> from tokenizers import Tokenizer, models, pre_tokenizers
        >>> from transformers import PreTrainedTokenizerFast
        >>> words = Tokenizer(models.WordLevel({"<s>": 0, "the": 1, "cat": 2, "sat": 3}, unk_token="<s>"))
        >>> words.pre_tokenizer = pre_tokenizers.Whitespace()
        >>> tokenizer = PreTrainedTokenizerFast(tokenizer_object=words, bos_token="<s>", pad_token="<s>")
        >>> data = ProbeDataset(texts=["the cat sat", "the sat cat"], labels=["verb", "noun"], tokens=[None, "sat"])
        >>> len(data), data.read_positions(tokenizer), data.word_types(tokenizer)
        (2, [2, 1], ['sat', 'sat'])
    """

    texts: list[str]
    labels: list[Any]
    tokens: list[str | None]

    def __len__(self) -> int:
        return len(self.texts)

    def read_positions(self, tokenizer: Any, *, add_special_tokens: bool = True) -> list[int]:
        """:func:`resolve_read_position` of every example."""
        return [
            resolve_read_position(tokenizer, t, tok, add_special_tokens=add_special_tokens)
            for t, tok in zip(self.texts, self.tokens, strict=True)
        ]

    def word_types(self, tokenizer: Any) -> list[str]:
        """:func:`read_word_type` of every example (for the control task)."""
        return [read_word_type(tokenizer, t, tok) for t, tok in zip(self.texts, self.tokens, strict=True)]


def load_probe_dataset(
    path: str | os.PathLike,
    *,
    text_field: str = "text",
    label_field: str = "label",
    token_field: str = "token",
) -> ProbeDataset:
    """Read a JSONL probe dataset; each line needs ``text`` and ``label``, ``token`` is optional.

    Example:
        >>> from pathlib import Path
        >>> _ = Path("probe.jsonl").write_text('{"text": "The cat sat", "label": "animal", "token": "cat"}\\n')
        >>> ds = load_probe_dataset("probe.jsonl")
        >>> ds.texts[0], ds.labels[0], ds.tokens[0]
        ('The cat sat', 'animal', 'cat')
    """
    path = Path(path)
    texts, labels, tokens = [], [], []
    for lineno, row in iter_jsonl(path):
        missing = [k for k in (text_field, label_field) if not isinstance(row, dict) or k not in row]
        if missing:
            raise BadInputError(f"{path}:{lineno}: missing field(s) {missing}")
        token = row.get(token_field)
        if token is not None and token not in row[text_field]:
            raise BadInputError(f"{path}:{lineno}: token {token!r} does not occur in the text")
        texts.append(str(row[text_field]))
        labels.append(row[label_field])
        tokens.append(token)
    if not texts:
        raise BadInputError(f"{path}: no examples")
    return ProbeDataset(texts, labels, tokens)
