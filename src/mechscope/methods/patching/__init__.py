"""Causal patching: activation-patching sweeps, attribution patching, path patching, results."""

from mechscope.methods.patching.engine import Cell
from mechscope.methods.patching.inputs import PromptPair, prepare_pair
from mechscope.methods.patching.result import PatchResult
from mechscope.methods.patching.sweep import (
    PairRuns,
    patch_every_block,
    patch_heads,
    patch_loop,
    patch_sweep,
)

__all__ = [
    "Cell",
    "PairRuns",
    "PatchResult",
    "PromptPair",
    "patch_every_block",
    "patch_heads",
    "patch_loop",
    "patch_sweep",
    "prepare_pair",
]
