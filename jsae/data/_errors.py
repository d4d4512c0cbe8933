"""The one exception :mod:`jsae.data` raises on bad input; each message says what was wrong and what to do."""

from __future__ import annotations


class DataError(ValueError):
    """A text source is missing, empty, unreadable or too short, or an iterator state does not match."""
