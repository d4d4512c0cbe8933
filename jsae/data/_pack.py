"""Packing tokenized records into batches of contexts, as a grain dataset with a checkpointable iterator.

The iterator's state says where the next batch starts: the state of the record iterator *before* the
record that holds the next token, and how many of that record's tokens are already used. Restoring
re-reads and re-tokenizes that one record, nothing else. No tokens are stored in the state.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import grain
import numpy as np

from ._errors import DataError

if TYPE_CHECKING:
    from ._stream import ContextStream

_VERSION = 1


class PackedBatches(grain.IterDataset):
    """``int32 [batch_contexts, bos_positions + context_size]`` batches from an IterDataset of
    ``(record_index, tokens)`` (record indices count on across passes)."""

    def __init__(self, parent: grain.IterDataset, stream: ContextStream):
        super().__init__(parent)
        self._stream = stream

    def __iter__(self) -> PackedIterator:
        return PackedIterator(self._parent.__iter__(), self._stream)

    def __str__(self) -> str:
        s = self._stream
        return (
            f"PackedBatches(batch_contexts={s.batch_contexts}, context_size={s.context_size}, "
            f"bos_positions={s.bos_positions})"
        )


class PackedIterator(grain.DatasetIterator):
    def __init__(self, parent: grain.DatasetIterator, stream: ContextStream):
        super().__init__(parent)
        self._s = stream
        self._shard_len = stream.shard[1] - stream.shard[0]
        self._fingerprint = stream.describe()["fingerprint"]
        self._piece_state = parent.get_state()  # record iterator state before the current record
        self._piece: np.ndarray | None = None
        self._pos = 0
        self._batches = 0
        self._pass_tokens = 0  # tokens of the first pass seen so far (for the too-short errors)

    # -- reading -------------------------------------------------------------------------------------------
    def _next_record(self) -> None:
        state = self._parent.get_state()
        try:
            index, tokens = next(self._parent)
        except StopIteration:
            if self._batches == 0:
                raise self._too_short(self._pass_tokens, self._s.tokens_per_batch, "one batch") from None
            raise
        if index >= self._shard_len and self._pass_tokens < self._s.context_size:  # a pass ended: too little
            raise self._too_short(self._pass_tokens, self._s.context_size, "one context") from None
        if index < self._shard_len:
            self._pass_tokens += len(tokens)
        self._piece_state, self._piece, self._pos = state, tokens, 0

    def _too_short(self, found: int, need: int, what: str) -> DataError:
        s = self._s
        shard = f" in shard {s.process_index} of {s.process_count}" if s.process_count > 1 else ""
        return DataError(
            f"the text holds {found} tokens{shard} (EOS included), fewer than the {need} needed for {what} "
            f"({s.batch_contexts} contexts x {s.context_size} tokens per batch); give more text, lower "
            "context_size or batch_contexts" + ("" if s.passes is None else ", or pass repeat=True to cycle it")
        )

    def __next__(self) -> np.ndarray:
        s = self._s
        need = s.tokens_per_batch
        flat = np.empty(need, np.int32)
        filled = 0
        while filled < need:
            if self._piece is None or self._pos >= len(self._piece):
                self._next_record()
                continue
            take = min(need - filled, len(self._piece) - self._pos)
            flat[filled : filled + take] = self._piece[self._pos : self._pos + take]
            filled += take
            self._pos += take
        self._batches += 1
        contexts = flat.reshape(s.batch_contexts, s.context_size)
        if s.bos_positions:
            return np.concatenate([np.full((s.batch_contexts, 1), s.bos_id, np.int32), contexts], axis=1)
        return contexts

    # -- checkpointing ---------------------------------------------------------------------------------------
    def get_state(self) -> dict[str, Any]:
        """JSON-able: where the next batch starts, and the fingerprint of the stream it belongs to."""
        return {
            "version": _VERSION,
            "fingerprint": self._fingerprint,
            "batch": self._batches,
            "record_state": self._piece_state,
            "in_record": self._piece is not None,
            "offset": self._pos,
            "pass_tokens": self._pass_tokens,
        }

    def set_state(self, state: dict[str, Any]) -> None:
        if not isinstance(state, dict) or state.get("version") != _VERSION:
            raise DataError(f"not a jsae.data text-stream state (version {_VERSION}): {str(state)[:200]}")
        if state["fingerprint"] != self._fingerprint:
            raise DataError(
                "this reader state was saved for another text stream (different text, tokenizer, context_size, "
                f"batch_contexts, repeat or shard: state {state['fingerprint']}, stream {self._fingerprint}); "
                "resume with the same source and settings, or start a new run"
            )
        self._parent.set_state(state["record_state"])
        self._piece_state, self._piece, self._pos = state["record_state"], None, 0
        if state["in_record"]:
            _, self._piece = next(self._parent)
            self._pos = int(state["offset"])
        self._batches, self._pass_tokens = int(state["batch"]), int(state["pass_tokens"])

    def __str__(self) -> str:
        return f"PackedIterator(batch={self._batches})"
