"""Core layer: model loading, hook points, activation cache, tokenization helpers."""

from mechscope.core.cache import ActivationCache
from mechscope.core.config import ModelConfig
from mechscope.core.errors import (
    HookNameError,
    HookShapeError,
    MechscopeError,
    ModelLoadError,
    OutputExistsError,
    TokenizationError,
)
from mechscope.core.hooked import HookedModel
from mechscope.core.loading import load_model
from mechscope.core.runner import HookPoint
from mechscope.core.tokens import TokenBatch

__all__ = [
    "ActivationCache",
    "HookNameError",
    "HookPoint",
    "HookShapeError",
    "HookedModel",
    "MechscopeError",
    "ModelConfig",
    "ModelLoadError",
    "OutputExistsError",
    "TokenBatch",
    "TokenizationError",
    "load_model",
]
