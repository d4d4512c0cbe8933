"""What the streaming trainer reads: batches of token contexts, with a position that a checkpoint keeps.

Any object with this protocol works (``jsae.data.ContextStream`` reads text; :class:`ArrayContexts`
serves contexts that are already tokenized):

- ``bos_positions``: leading positions of each context that are not text (a prepended BOS), never
  trained on;
- ``batch_contexts``, ``context_size``: a batch is ``int32 [batch_contexts, bos_positions + context_size]``;
- ``iterator(state=None)``: an iterator of such batches; ``state`` is what its ``get_state()`` returned,
  and the iterator continues exactly from there;
- ``describe()``: a JSON-able description for run configs.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

import numpy as np


class ContextBatches(Protocol):
    bos_positions: int
    batch_contexts: int
    context_size: int

    def iterator(self, state: dict | None = None) -> Iterator[np.ndarray]: ...

    def describe(self) -> dict: ...


class _ArrayIterator:
    def __init__(self, owner: ArrayContexts, start: int):
        self.owner, self.position = owner, start

    def __iter__(self):
        return self

    def __next__(self) -> np.ndarray:
        b = self.owner.batch_contexts
        if (self.position + 1) * b > len(self.owner.tokens):
            raise StopIteration
        out = self.owner.tokens[self.position * b : (self.position + 1) * b]
        self.position += 1
        return out

    def get_state(self) -> dict:
        return {"batch": self.position}


class ArrayContexts:
    """Batches of already tokenized contexts ``tokens [n_contexts, bos_positions + context_size]``, in order."""

    def __init__(self, tokens: np.ndarray, batch_contexts: int, bos_positions: int = 0):
        tokens = np.asarray(tokens, np.int32)
        if tokens.ndim != 2 or tokens.shape[1] <= bos_positions:
            raise ValueError(
                f"contexts must be [n_contexts, positions] with more than {bos_positions} positions, "
                f"got shape {tokens.shape}"
            )
        if len(tokens) < batch_contexts:
            raise ValueError(f"{len(tokens)} contexts are fewer than one batch of {batch_contexts}")
        self.tokens, self.batch_contexts, self.bos_positions = tokens, int(batch_contexts), int(bos_positions)
        self.context_size = tokens.shape[1] - self.bos_positions

    def iterator(self, state: dict | None = None) -> _ArrayIterator:
        return _ArrayIterator(self, int((state or {}).get("batch", 0)))

    def describe(self) -> dict:
        return {
            "kind": "array",
            "n_contexts": len(self.tokens),
            "context_size": self.context_size,
            "bos_positions": self.bos_positions,
            "batch_contexts": self.batch_contexts,
        }
