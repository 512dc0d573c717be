"""Exceptions raised by mechscope. Each names the problem in one sentence a user can act on."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any


class MechscopeError(Exception):
    """Base class of every error mechscope raises on purpose.

    Example:
        >>> try:
        ...     raise BadInputError("labels must be 0 or 1")
        ... except MechscopeError as err:                      # catches every error mechscope raises on purpose
        ...     print(type(err).__name__, err)
        BadInputError labels must be 0 or 1
    """


class HookNameError(MechscopeError, KeyError):
    """An unknown hook name. The message lists the nearest valid names.

    Example:
        >>> err = HookNameError(unknown_name_message("hook name", "hook_embd", ["hook_embed"]))
        >>> str(err), isinstance(err, KeyError)
        ("Unknown hook name 'hook_embd'. Did you mean: 'hook_embed'?", True)
    """

    def __str__(self) -> str:  # KeyError would otherwise wrap the message in quotes
        return str(self.args[0]) if self.args else ""


class ModelLoadError(MechscopeError):
    """A model could not be found, reached or read.

    Example:
        >>> raise ModelLoadError("The model 'smol' is not installed.")
        Traceback (most recent call last):
        ...
        mechscope.core.errors.ModelLoadError: The model 'smol' is not installed.
    """


class TokenizationError(MechscopeError, ValueError):
    """Bad text input: empty prompt, multi-token answer, prompts of different lengths.

    Example:
        >>> isinstance(TokenizationError("Empty prompt"), ValueError)     # callers catching ValueError still work
        True
    """


class HookShapeError(MechscopeError, ValueError):
    """A hook function returned a tensor of the wrong shape.

    Example:
        >>> isinstance(HookShapeError("returned a (1, 2) tensor"), (MechscopeError, ValueError))
        True
    """


class OutputExistsError(MechscopeError, FileExistsError):
    """An output path holds a file mechscope did not write; `--force` is the only way past it.

    Example:
        >>> isinstance(OutputExistsError("out.json exists"), FileExistsError)
        True
    """


class BadInputError(MechscopeError, ValueError):
    """Data a user handed in that a method cannot use (labels, read positions, a split, settings).

    Example:
        >>> raise BadInputError("labels must be 0 or 1, got 2")
        Traceback (most recent call last):
        ...
        mechscope.core.errors.BadInputError: labels must be 0 or 1, got 2
    """


class NonFiniteError(MechscopeError, ValueError):
    """NaN or Inf where a number is needed: activations, logits, a metric or a training loss.

    Example:
        >>> try:
        ...     require_finite(float("inf"), "the loss")
        ... except NonFiniteError as err:
        ...     print(isinstance(err, ValueError))
        True
    """


NONFINITE_HINT = "check the model's weights, or run in float32 (--dtype float32) if float16 overflowed"


def require_finite(values: Any, what: str, fix: str = NONFINITE_HINT) -> None:
    """Raise `NonFiniteError` naming `what` and `fix` when `values` (a tensor or number) holds NaN or Inf.

    Example:
        >>> require_finite(float("nan"), "the clean metric")
        Traceback (most recent call last):
        ...
        mechscope.core.errors.NonFiniteError: the clean metric is NaN or Inf (1 of 1 values); check the model's weights, or run in float32 (--dtype float32) if float16 overflowed.
    """
    import torch

    tensor = torch.as_tensor(values).detach()
    if not tensor.is_floating_point():
        return
    bad = ~torch.isfinite(tensor)
    if bool(bad.any()):
        raise NonFiniteError(f"{what} is NaN or Inf ({int(bad.sum())} of {bad.numel()} values); {fix}.")


def nearest(name: str, candidates: Iterable[str], n: int = 3) -> list[str]:
    """The `n` candidates closest to `name` (difflib ratio), best first.

    Example:
        >>> nearest("blocks.0.hook_resid_pr", ["blocks.0.hook_resid_pre", "hook_embed"])
        ['blocks.0.hook_resid_pre']
    """
    return difflib.get_close_matches(name, list(candidates), n=n, cutoff=0.5)


def unknown_name_message(kind: str, name: str, candidates: Iterable[str]) -> str:
    """'Unknown hook name 'x'. Did you mean: a, b?' with a fallback hint when nothing is close.

    Example:
        >>> unknown_name_message("hook name", "blocks.0.hook_resid_pr", ["blocks.0.hook_resid_pre", "hook_embed"])
        "Unknown hook name 'blocks.0.hook_resid_pr'. Did you mean: 'blocks.0.hook_resid_pre'?"
        >>> unknown_name_message("site", "xyz", ["hook_embed"])
        "Unknown site 'xyz'. Valid names start with: 'hook_embed' ..."
    """
    candidates = list(candidates)
    close = nearest(name, candidates)
    if close:
        hint = "Did you mean: " + ", ".join(repr(c) for c in close) + "?"
    else:
        hint = f"Valid names start with: {', '.join(repr(c) for c in candidates[:4])} ..."
    return f"Unknown {kind} {name!r}. {hint}"
