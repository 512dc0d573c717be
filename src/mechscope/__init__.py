"""mechscope: open up any Hugging Face causal LM for mechanistic interpretability.

Example:
    >>> import mechscope
    >>> model = mechscope.load_model()              # doctest: +SKIP
    >>> logits, cache = model.run_with_cache("The Eiffel Tower is in the city of")  # doctest: +SKIP
"""

__version__ = "0.1.0"

from mechscope.core import (  # noqa: E402
    ActivationCache,
    HookedModel,
    HookNameError,
    HookPoint,
    MechscopeError,
    TokenBatch,
    load_model,
)
from mechscope.toys import attn_only as _attn_only  # noqa: E402,F401  (registers the toy model type)

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
