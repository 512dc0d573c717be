"""A tiny random language model with a tokenizer and a small local corpus, for store/eval/CLI tests."""

from __future__ import annotations

import random
import zlib
from pathlib import Path
from typing import Any

from mechscope import HookedModel
from tiny_models import VOCAB, tiny_model


class HashTokenizer:
    """Whitespace words hashed into ids 3..VOCAB-1 (crc32), so any text fits a tiny vocabulary.

    Id 0 is BOS, 1 is EOS, 2 is padding.
    """

    bos_token_id = 0
    eos_token_id = 1
    pad_token_id = 2

    def __call__(self, text: str | list[str], add_special_tokens: bool = True, **_: Any) -> dict[str, Any]:
        texts = [text] if isinstance(text, str) else text
        ids = [[3 + zlib.crc32(w.encode()) % (VOCAB - 3) for w in t.split()] for t in texts]
        if add_special_tokens:
            ids = [[self.bos_token_id, *row] for row in ids]
        return {"input_ids": ids[0] if isinstance(text, str) else ids}


def tiny_lm(kind: str = "llama", seed: int = 0) -> HookedModel:
    """A tiny random model of `kind` carrying a `HashTokenizer`."""
    model = tiny_model(kind, seed)
    model.tokenizer = HashTokenizer()
    return model


def write_corpus(folder: Path, n_docs: int = 40, words: int = 60, seed: int = 0) -> Path:
    """A `.jsonl` corpus of `n_docs` documents of random words; returns its path."""
    rng = random.Random(seed)
    vocab = [f"w{i}" for i in range(200)]
    path = folder / "corpus.jsonl"
    import json

    with path.open("w") as f:
        for _ in range(n_docs):
            f.write(json.dumps({"text": " ".join(rng.choice(vocab) for _ in range(words))}) + "\n")
    return path
