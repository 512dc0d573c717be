"""Tokenizers shared by the test files: a whitespace stub and the real default tokenizer."""

from __future__ import annotations

import functools
import re
from typing import Any


class WhitespaceTokenizer:
    """Splits on whitespace; ids are assigned in order of first appearance from 10 on.

    Id 0 is BOS, 1 is EOS. Offsets are character spans of the words.
    """

    bos_token_id = 0
    eos_token_id = 1

    def __init__(self) -> None:
        self.vocab: dict[str, int] = {}

    def _id(self, word: str) -> int:
        return self.vocab.setdefault(word, 10 + len(self.vocab))

    def _encode(self, text: str, add_special_tokens: bool) -> tuple[list[int], list[tuple[int, int]]]:
        spans = [(m.start(), m.end()) for m in re.finditer(r"\S+", text)]
        ids = [self._id(text[a:b]) for a, b in spans]
        if add_special_tokens:
            ids, spans = [self.bos_token_id, *ids], [(0, 0), *spans]
        return ids, spans

    def __call__(
        self, text: str | list[str], add_special_tokens: bool = True, return_offsets_mapping: bool = False
    ) -> dict[str, Any]:
        texts = [text] if isinstance(text, str) else text
        encoded = [self._encode(t, add_special_tokens) for t in texts]
        out: dict[str, Any] = {"input_ids": [e[0] for e in encoded]}
        if return_offsets_mapping:
            out["offset_mapping"] = [e[1] for e in encoded]
        if isinstance(text, str):
            out = {k: v[0] for k, v in out.items()}
        return out


@functools.lru_cache(maxsize=1)
def real_tokenizer() -> Any:
    """The default model's tokenizer (SmolLM2-135M-Instruct), loaded once per test session (~8 s).

    The GGUF file is found where its package is installed, whatever the Python version or venv path.
    """
    from transformers import AutoTokenizer

    from mechscope.core.loading import shipped_gguf

    gguf = shipped_gguf("smollm2-135m")
    return AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
