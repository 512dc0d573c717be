"""Shared builders for the circuit-discovery tests: tiny models in float64 and token-aligned pairs."""

from __future__ import annotations

import torch

from mechscope import HookedModel
from mechscope.circuits.discovery.tasks import Pairs
from tiny_models import tiny_hf_model, tiny_ids


def tiny64(kind: str) -> HookedModel:
    return HookedModel(tiny_hf_model(kind).double(), name=f"tiny-{kind}")


def tiny_pairs(n: int = 3, pos: int = 7) -> Pairs:
    """Random clean/corrupt ids; logit difference of tokens 5.. vs 8.. at the last position."""
    good = torch.arange(5, 5 + n)[:, None]
    return Pairs(tiny_ids(n, pos, 1), tiny_ids(n, pos, 2), None, torch.full((n,), pos - 1), good, good + 3)
