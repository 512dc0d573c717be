"""Exceptions of the dictionaries layer."""

from __future__ import annotations

from mechscope.core.errors import MechscopeError


class DictionaryConfigError(MechscopeError, ValueError):
    """A dictionary or trainer configuration that cannot work (bad sizes, unknown options)."""


class DictionaryFormatError(MechscopeError, ValueError):
    """A saved dictionary that cannot be read: missing, corrupt or truncated file, bad config."""


class CheckpointError(MechscopeError, ValueError):
    """A training checkpoint that cannot be resumed from (missing files, mismatched run)."""


class TrainingDivergedError(MechscopeError, FloatingPointError):
    """Training produced a NaN or Inf loss (the message names the step and the likely cause)."""
