"""mechscope: open up any Hugging Face causal LM for mechanistic interpretability.

Example:
    >>> import mechscope
    >>> model = mechscope.load_model()              # doctest: +SKIP
    >>> logits, cache = model.run_with_cache("The Eiffel Tower is in the city of")  # doctest: +SKIP
"""

from mechscope.core import (
    ActivationCache,
    HookedModel,
    HookNameError,
    HookPoint,
    MechscopeError,
    TokenBatch,
    load_model,
)
from mechscope.core.provenance import __version__

__all__ = [
    "ActivationCache",
    "HookNameError",
    "HookPoint",
    "HookedModel",
    "MechscopeError",
    "TokenBatch",
    "__version__",
    "load_model",
]
