"""Registry of architecture families, keyed by Hugging Face `model_type`.

Example:
    >>> family_for_model_type("llama").layers
    'model.layers'
"""

from __future__ import annotations

from mechscope.core.errors import ModelLoadError, nearest
from mechscope.core.families.base import Family, get_module
from mechscope.core.families.gemma import GEMMA, GEMMA2, GEMMA3
from mechscope.core.families.gpt2 import GPT2
from mechscope.core.families.llama import LLAMA
from mechscope.core.families.mistral import MISTRAL
from mechscope.core.families.neox import GPT_NEOX
from mechscope.core.families.qwen2 import QWEN2

FAMILIES: tuple[Family, ...] = (GPT2, LLAMA, MISTRAL, QWEN2, GEMMA, GEMMA2, GEMMA3, GPT_NEOX)
_BY_TYPE: dict[str, Family] = {t: f for f in FAMILIES for t in f.model_types}


def register_family(family: Family) -> None:
    """Add a family (a new architecture) to the registry.

    Example:
        >>> from dataclasses import replace
        >>> llama = family_for_model_type("llama")
        >>> register_family(replace(llama, name="my_llama", model_types=("my_llama",)))
        >>> family_for_model_type("my_llama").layers
        'model.layers'
        >>> del _BY_TYPE["my_llama"]                         # leave the registry as it was
    """
    for model_type in family.model_types:
        _BY_TYPE[model_type] = family


def family_for_model_type(model_type: str) -> Family:
    """The family table for an HF `config.model_type`, or a clear error naming the supported ones.

    Example:
        >>> family_for_model_type("qwen2").name
        'qwen2'
        >>> family_for_model_type("lama")                    # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        mechscope.core.errors.ModelLoadError: ...Did you mean 'llama'?...
    """
    if model_type in _BY_TYPE:
        return _BY_TYPE[model_type]
    close = nearest(model_type, _BY_TYPE)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ModelLoadError(
        f"Model type {model_type!r} has no mechscope family table.{hint} Supported: "
        f"{', '.join(sorted(_BY_TYPE))}. Add one with mechscope.core.families.register_family."
    )


__all__ = ["FAMILIES", "Family", "family_for_model_type", "get_module", "register_family"]
