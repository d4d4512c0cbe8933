"""Text -> fixed-length token contexts, in batches, deterministic, resumable and sharded by process.

The token stream of a source is every document's tokens followed by EOS, documents in the source's
order (empty documents are skipped). Contexts are consecutive windows of ``context_size`` tokens of
that stream, so a document runs on from one context into the next and a context may hold the end of
one document, an EOS, and the start of the next; no padding, no tokens dropped except the stream's
tail that does not fill a batch. If the tokenizer prepends BOS (``add_bos``, Llama style) every
context starts with one extra BOS position: ``bos_positions == 1`` and a context is
``[BOS] + context_size`` tokens. Otherwise (GPT-2, SmolLM2) ``bos_positions == 0`` and a context is
just the window. Positions ``< bos_positions`` are not text and should not be trained on.

A batch is ``int32 [batch_contexts, bos_positions + context_size]``; batch ``i`` depends only on the
source, the tokenizer, the config and ``i``. Process ``p`` of ``P`` reads a contiguous block of the
source's records (``[p*N//P, (p+1)*N//P)``): the shards are disjoint and their streams, one after
another, are the whole stream. Memory is a few records in flight plus one batch, whatever the corpus
size. The pipeline is a ``grain`` dataset (records -> shard -> repeat -> tokenize -> pack), and the
iterator's ``get_state()`` is a small JSON dict (where the next batch starts: a record and an offset
into its tokens), so a checkpoint restores it without replaying the stream.
"""

from __future__ import annotations

from typing import Any, cast

import numpy as np

from ._errors import DataError
from ._source import Record, TextSource, digest

_STATE_VERSION = 1


def _text_encoder(tokenizer):
    """``text -> list[int]`` without special tokens, special-token strings in the text read as text."""
    backend = getattr(tokenizer, "backend", None)
    if backend is not None and hasattr(backend, "to_str"):
        from tokenizers import Tokenizer as HFTok

        backend = HFTok.from_str(backend.to_str())  # a copy: the caller's tokenizer is not changed
        if hasattr(backend, "encode_special_tokens"):
            backend.encode_special_tokens = True  # "<|endoftext|>" in a document is text, not a boundary
        return lambda text: backend.encode(text, add_special_tokens=False).ids
    bos = tokenizer.bos_id if getattr(tokenizer, "add_bos", False) else None

    def encode(text):
        ids = list(tokenizer.encode(text))
        return ids[1:] if bos is not None and ids[:1] == [bos] else ids

    return encode


def tokenizer_fingerprint(tokenizer) -> str:
    backend = getattr(tokenizer, "backend", None)
    body = backend.to_str() if backend is not None and hasattr(backend, "to_str") else type(tokenizer).__qualname__
    return digest(body, tokenizer.bos_id, tokenizer.eos_id, bool(getattr(tokenizer, "add_bos", False)))


def _passes(repeat) -> int | None:
    """repeat=False -> 1 pass, True -> None (forever), an int n >= 1 -> n passes."""
    if isinstance(repeat, bool):
        return None if repeat else 1
    if isinstance(repeat, int) and repeat >= 1:
        return repeat
    raise DataError(f"repeat must be False (one pass), True (forever) or a number of passes >= 1, not {repeat!r}")


def _process(process_index, process_count) -> tuple[int, int]:
    if process_index is None or process_count is None:
        import jax

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    if not (isinstance(process_count, int) and process_count >= 1 and 0 <= process_index < process_count):
        raise DataError(f"process_index={process_index} must be in [0, process_count={process_count})")
    return int(process_index), int(process_count)


class ContextStream:
    """Batches of packed token contexts from a text source (see the module docstring for the layout).

    Args:
      source: a :class:`TextSource` (``jsae.data.open_text(...)``).
      tokenizer: a ``jsae.models.Tokenizer`` (or anything with ``bos_id``, ``eos_id``, ``add_bos`` and a
        ``tokenizers`` ``backend`` or an ``encode``).
      context_size: text positions per context (the BOS position, if any, comes on top).
      batch_contexts: contexts per batch (per process).
      repeat: False for one pass over the text, True to cycle forever, or a number of passes.
      process_index, process_count: this process's shard; default ``jax.process_index()/process_count()``.
      eos_id: the document separator; default ``tokenizer.eos_id``.
      read_threads: grain threads that read and tokenize records ahead of the packer (0: inline).
    """

    def __init__(
        self,
        source: TextSource,
        tokenizer,
        *,
        context_size: int = 128,
        batch_contexts: int = 32,
        repeat: bool | int = False,
        process_index: int | None = None,
        process_count: int | None = None,
        eos_id: int | None = None,
        read_threads: int = 2,
    ):
        for name, v in (("context_size", context_size), ("batch_contexts", batch_contexts)):
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
                raise DataError(f"{name} must be a positive integer, got {v!r}")
        self.source, self.tokenizer = source, tokenizer
        self.context_size, self.batch_contexts = int(context_size), int(batch_contexts)
        self.passes = _passes(repeat)
        self.process_index, self.process_count = _process(process_index, process_count)
        self.eos_id = tokenizer.eos_id if eos_id is None else int(eos_id)
        if self.eos_id is None:
            raise DataError("the tokenizer has no EOS token to separate documents; pass eos_id=")
        add_bos = bool(getattr(tokenizer, "add_bos", False))
        if add_bos and tokenizer.bos_id is None:
            raise DataError("the tokenizer says add_bos but has no bos_id")
        self.bos_id = tokenizer.bos_id if add_bos else None
        self.bos_positions = 1 if add_bos else 0
        n = len(source)
        p, P = self.process_index, self.process_count
        self.shard = (p * n // P, (p + 1) * n // P)
        if self.shard[0] == self.shard[1]:
            raise DataError(
                f"the source has {n} records, too few for process {p} of {P} to get one; "
                "give more documents (e.g. a folder of files or a .jsonl) or use fewer processes"
            )
        self.read_threads = int(read_threads)
        self._encode = _text_encoder(tokenizer)
        self._describe = self._make_describe()

    # -- sizes and description -------------------------------------------------------------------------
    @property
    def tokens_per_batch(self) -> int:
        """Text tokens per batch: ``batch_contexts * context_size`` (BOS positions not counted)."""
        return self.batch_contexts * self.context_size

    @property
    def batch_shape(self) -> tuple[int, int]:
        return (self.batch_contexts, self.bos_positions + self.context_size)

    def _make_describe(self) -> dict:
        t = self.tokenizer
        tok = {
            "fingerprint": tokenizer_fingerprint(t),
            "bos_id": t.bos_id,
            "eos_id": self.eos_id,
            "add_bos": bool(getattr(t, "add_bos", False)),
        }
        cfg = {
            "context_size": self.context_size,
            "batch_contexts": self.batch_contexts,
            "bos_positions": self.bos_positions,
            "passes": self.passes,
            "process_index": self.process_index,
            "process_count": self.process_count,
            "shard_records": list(self.shard),
        }
        key = digest(self.source.fingerprint, tok, cfg, _STATE_VERSION)
        return {
            "kind": "text",
            "source": self.source.describe(),
            "tokenizer": tok,
            **cfg,
            "tokens_per_batch": self.tokens_per_batch,
            "fingerprint": key,
        }

    def describe(self) -> dict:
        """JSON-able config: the source (with its content fingerprint), tokenizer, sizes, shard, fingerprint."""
        return dict(self._describe)

    # -- the grain pipeline ------------------------------------------------------------------------------
    def _tokens(self, index: int, record) -> tuple[int, np.ndarray]:
        text, ends = record
        if not text:
            return index, np.zeros(0, np.int32)  # an empty document (or piece) adds nothing, not even EOS
        ids = self._encode(text)
        if ends:
            ids.append(self.eos_id)
        return index, np.asarray(ids, np.int32)

    def dataset(self):
        """The ``grain.IterDataset`` of batches (compose it further with grain if you like)."""
        import grain

        from ._pack import PackedBatches

        start, stop = self.shard
        # grain's RandomAccessDataSource protocol names __getitem__'s parameter ``index`` (not positional-only),
        # TextSource's is ``i``; grain only ever subscripts, so the source fits the protocol as used.
        source = cast("grain.sources.RandomAccessDataSource[Record]", self.source)
        ds = grain.MapDataset.source(source)[start:stop]
        if self.passes != 1:
            ds = ds.repeat(self.passes)
        ds = ds.map_with_index(self._tokens)
        threads = max(self.read_threads, 0)
        ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=threads, prefetch_buffer_size=4 * threads))
        return PackedBatches(ds, self)

    def iterator(self, state: dict[str, Any] | None = None):
        """An iterator of batches; with ``state`` (from ``get_state()``) it continues exactly from there."""
        it = iter(self.dataset())
        if state is not None:
            it.set_state(state)
        return it

    def __iter__(self):
        return self.iterator()

    def count_tokens(self) -> int:
        """Tokens (EOS included) in one pass over this process's records: tokenizes all of them once."""
        return sum(len(self._tokens(i, self.source[i])[1]) for i in range(*self.shard))
