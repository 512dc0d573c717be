"""Exceptions of the dictionaries layer."""

from __future__ import annotations

from mechscope.core.errors import MechscopeError


class DictionaryConfigError(MechscopeError, ValueError):
    """A dictionary or trainer configuration that cannot work (bad sizes, unknown options).

    Example:
        >>> from mechscope.dictionaries import make_dictionary
        >>> try:
        ...     make_dictionary("topk", d_in=4, d_sae=8, k=9)
        ... except DictionaryConfigError as err:
        ...     print(err)
        k must be in 1..d_sae=8, got 9
    """


class DictionaryFormatError(MechscopeError, ValueError):
    """A saved dictionary that cannot be read: missing, corrupt or truncated file, bad config.

    Example:
        >>> from mechscope.dictionaries.formats import load_dictionary
        >>> try:
        ...     load_dictionary("no-such-folder")
        ... except DictionaryFormatError:
        ...     print("cannot read it")
        cannot read it
    """


class CheckpointError(MechscopeError, ValueError):
    """A training checkpoint that cannot be resumed from (missing files, mismatched run).

    Example:
        >>> issubclass(CheckpointError, ValueError)
        True
    """


class TrainingDivergedError(MechscopeError, FloatingPointError):
    """Training produced a NaN or Inf loss (the message names the step and the likely cause).

    Example:
        >>> issubclass(TrainingDivergedError, FloatingPointError)
        True
    """
