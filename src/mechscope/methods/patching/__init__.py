"""Causal patching: activation-patching sweeps, attribution patching, path patching, results."""

from mechscope.methods.patching.attribution import attribution_every_site, attribution_sweep
from mechscope.methods.patching.engine import Cell
from mechscope.methods.patching.inputs import PromptPair, prepare_pair
from mechscope.methods.patching.path import path_patch
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
    "attribution_every_site",
    "attribution_sweep",
    "path_patch",
    "patch_every_block",
    "patch_heads",
    "patch_loop",
    "patch_sweep",
    "prepare_pair",
]
