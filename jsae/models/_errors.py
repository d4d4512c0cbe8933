"""Exceptions raised by :mod:`jsae.models`. Each message says what was wrong and what to do."""

from __future__ import annotations


class ModelError(ValueError):
    """Base class of every error :mod:`jsae.models` raises on bad input."""


class UnknownModelError(ModelError):
    """The name is neither a known model nor a usable local path."""


class ModelFileError(ModelError):
    """A model file is missing, truncated or unreadable."""


class UnsupportedArchitectureError(ModelError):
    """The checkpoint describes an architecture jsae has no implementation for."""


class SequenceTooLongError(ModelError):
    """The token sequence is longer than the model's context window."""


class TokenOutOfRangeError(ModelError):
    """A token id is negative or not smaller than the vocabulary size."""


class HookError(ModelError):
    """A hook point name or an edit/capture specification is invalid."""
