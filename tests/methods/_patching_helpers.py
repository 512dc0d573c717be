"""Helpers shared by the patching tests: a character tokenizer for tiny models and prompt pairs."""

from __future__ import annotations

from typing import Any

import torch

from mechscope import HookedModel
from tiny_models import tiny_model


class CharTokenizer:
    """One token per character (id = ord - 28, within 4..95); no BOS. Enough for error messages and answers."""

    bos_token_id = None
    eos_token_id = 1
    pad_token_id = 0

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, Any]:
        return {"input_ids": [min(max(ord(ch) - 28, 4), 95) for ch in text]}

    def decode(self, ids: list[int]) -> str:
        return "".join(chr(i + 28) if i >= 4 else "?" for i in ids)


def char_model(kind: str = "llama") -> HookedModel:
    model = tiny_model(kind)
    model.tokenizer = CharTokenizer()
    return model


def pair_ids(n_pairs: int = 2, n_pos: int = 7, shared: tuple[int, ...] = (0, 4, 5)) -> tuple[torch.Tensor, torch.Tensor]:
    """Clean and corrupted ids that differ except at positions `shared`."""
    g = torch.Generator().manual_seed(11)
    clean = torch.randint(4, 90, (n_pairs, n_pos), generator=g)
    corrupt = torch.randint(4, 90, (n_pairs, n_pos), generator=g)
    for p in shared:
        corrupt[:, p] = clean[:, p]
    return clean, corrupt


ANSWER, WRONG = [7, 9], [11, 13]
