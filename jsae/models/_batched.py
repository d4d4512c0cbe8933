"""One batched loop over many sequences: length buckets, one compilation per shape, padding stripped.

Every analysis that runs the model over more prompts than fit in one call does the same thing: sort the
sequences by length, cut them into batches, right-pad each batch to a bucketed length and a bucketed row
count (so each bucket compiles once), run a jitted function, drop the padding rows (and, per token, the
padding positions) and put the results back in the caller's order. :func:`map_batches` is that loop.

>>> @eqx.filter_jit
... def last_resid(model, tokens, lengths):            # [b, T], [b] -> [b, D]
...     _, cache = forward(model, tokens, hooks=capture("resid_post", reduce="last"), lengths=lengths)
...     return cache["resid_post"][-1]
>>> out = map_batches(last_resid, model, batch)          # [S, D], rows in the order of ``batch``
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np
from jaxtyping import Int
from tqdm.auto import tqdm

from ._errors import ModelError
from ._tokenizer import TokenBatch

ROW_MULTIPLE = 8  # a partial batch's row count is rounded up to this


@dataclass(frozen=True)
class Bucket:
    """One call of the loop: ``rows`` (indices into the caller's sequences), padded to ``n_rows`` rows of
    ``T`` positions."""

    rows: np.ndarray
    T: int
    n_rows: int


def plan_buckets(
    lengths: Int[np.ndarray, " S"],
    *,
    batch_size: int,
    bytes_per_token: int | None = None,
    max_batch_bytes: int = 256 << 20,
    pad_multiple: int = 8,
) -> list[Bucket]:
    """Batches of sequences sorted by length: each padded to a multiple of ``pad_multiple`` positions,
    with at most ``batch_size`` rows and, when ``bytes_per_token`` is given, at most ``max_batch_bytes`` of
    live data (``rows * T * bytes_per_token``). Full batches share one row count; the last, partial
    batch is padded only to the next multiple of ``ROW_MULTIPLE`` rows (20 prompts run as 24 rows, not
    ``batch_size`` 32), so at most ``batch_size / ROW_MULTIPLE`` row counts exist and each distinct
    ``(n_rows, T)`` compiles once."""
    lengths = np.asarray(lengths)
    if lengths.ndim != 1 or lengths.size == 0:
        raise ModelError(f"lengths must be a non-empty [S] array, got shape {tuple(lengths.shape)}")
    if lengths.min() < 1:
        raise ModelError("every sequence needs at least one real token; got a length of 0")
    if batch_size < 1 or pad_multiple < 1:
        raise ModelError(f"batch_size and pad_multiple must be >= 1, got {batch_size} and {pad_multiple}")
    order = np.argsort(lengths, kind="stable")
    buckets, i = [], 0
    while i < len(order):
        # the padded length of the longest row this batch could take, then the rows that memory allows
        T = _round_up(int(lengths[order[min(i + batch_size, len(order)) - 1]]), pad_multiple)
        n_rows = batch_size
        if bytes_per_token is not None:
            n_rows = int(max(1, min(batch_size, max_batch_bytes // max(1, T * bytes_per_token))))
        rows = order[i : i + n_rows]
        T = _round_up(int(lengths[rows].max()), pad_multiple)
        if len(rows) < n_rows:  # the last batch: no more padding rows than the next multiple of 8 needs
            n_rows = min(n_rows, _round_up(len(rows), ROW_MULTIPLE))
        buckets.append(Bucket(rows, T, n_rows))
        i += n_rows
    return buckets


def map_batches(
    fn: Callable[..., Any],
    model: Any,
    tokens: TokenBatch | Sequence[Sequence[int]] | Int[np.ndarray, "S T"],
    lengths: Int[np.ndarray, " S"] | None = None,
    *row_args: np.ndarray,
    batch_size: int = 32,
    bytes_per_token: int | None = None,
    max_batch_bytes: int = 256 << 20,
    pad_multiple: int = 8,
    per_token: bool = False,
    progress: bool = False,
    desc: str = "forward",
) -> Any:
    """Run ``fn(model, tokens [b, T], lengths [b], *row_args[b]) -> pytree of [b, ...]`` over all sequences.

    tokens: a :class:`~jsae.models.TokenBatch`, token-id lists, or a right-padded ``[S, T]``
      array with ``lengths [S]`` (default: the count of ids ``>= 0`` per row, so -1 padding is found).
    row_args: per-sequence arrays ``[S, ...]`` (target positions, labels), batched with the tokens.
    fn: a jitted function (``eqx.filter_jit`` at module level, so its compilations are kept between
      calls); each leaf of its output has the batch axis first.
    per_token: the leaves are ``[b, T, ...]`` (one value per position): the result keeps only the real
      positions, ``[sum(lengths), ...]`` in sequence-major order (see :func:`split_tokens`).
    Returns numpy arrays ``[S, ...]`` in the order of ``tokens``; padding rows never reach the result.
    Padding positions hold a copy of the row's first token (a real id), and padding rows copy a real row,
    so no pad id reaches the model.
    """
    seqs = _as_sequences(tokens, lengths)
    lens = np.array([len(s) for s in seqs], np.int64)
    row_args = tuple(np.asarray(a) for a in row_args)
    for a in row_args:
        if a.shape[:1] != (len(seqs),):
            raise ModelError(f"a per-sequence argument has shape {a.shape}; expected [{len(seqs)}, ...]")
    buckets = plan_buckets(
        lens,
        batch_size=batch_size,
        bytes_per_token=bytes_per_token,
        max_batch_bytes=max_batch_bytes,
        pad_multiple=pad_multiple,
    )
    parts, treedef = [], None
    for b in tqdm(buckets, desc=desc, unit="batch", disable=not progress, leave=False):
        rows = np.concatenate([b.rows, np.repeat(b.rows[:1], b.n_rows - len(b.rows))])
        tok = np.empty((b.n_rows, b.T), np.int32)
        for r, j in enumerate(rows):
            tok[r, : lens[j]] = seqs[j]
            tok[r, lens[j] :] = seqs[j][0]
        out = fn(model, tok, lens[rows].astype(np.int32), *(a[rows] for a in row_args))
        leaves, treedef = jax.tree_util.tree_flatten(jax.device_get(out))
        leaves = [np.asarray(x)[: len(b.rows)] for x in leaves]
        if per_token:
            leaves = [[x[r, : lens[j]] for r, j in enumerate(b.rows)] for x in leaves]
        parts.append((b.rows, leaves))
    order = np.concatenate([rows for rows, _ in parts])
    inverse = np.empty_like(order)
    inverse[order] = np.arange(len(order))
    n_leaves = len(parts[0][1])
    result = []
    for k in range(n_leaves):
        if per_token:
            per_row = [x for _, leaves in parts for x in leaves[k]]
            result.append(np.concatenate([per_row[i] for i in inverse]))
        else:
            shapes = {leaves[k].shape[1:] for _, leaves in parts}
            if len(shapes) > 1:
                raise ModelError(
                    f"fn's output has shapes {sorted(shapes)} after the batch axis in different "
                    "buckets; an output per position needs per_token=True"
                )
            result.append(np.concatenate([leaves[k] for _, leaves in parts])[inverse])
    assert treedef is not None
    return jax.tree_util.tree_unflatten(treedef, result)


def split_tokens(flat: np.ndarray, lengths: Int[np.ndarray, " S"], *, pad_to: int | None = None) -> np.ndarray:
    """Per-token values ``[sum(lengths), ...]`` back to ``[S, T, ...]`` (zeros past each length)."""
    lengths = np.asarray(lengths)
    T = int(lengths.max()) if pad_to is None else pad_to
    out = np.zeros((len(lengths), T, *flat.shape[1:]), flat.dtype)
    valid = np.arange(T)[None, :] < lengths[:, None]
    out[valid] = flat
    return out


def _as_sequences(tokens, lengths) -> list[np.ndarray]:
    if isinstance(tokens, TokenBatch):
        tokens, lengths = tokens.ids, tokens.lengths if lengths is None else lengths
    if isinstance(tokens, np.ndarray | jax.Array) and np.ndim(tokens) == 2:
        ids = np.asarray(tokens)
        lens = (ids >= 0).sum(1) if lengths is None else np.asarray(lengths)
        if lens.shape != (ids.shape[0],) or lens.max(initial=0) > ids.shape[1]:
            raise ModelError(f"lengths of shape {lens.shape} (max {lens.max(initial=0)}) do not fit tokens {ids.shape}")
        seqs = [ids[i, : lens[i]].astype(np.int32) for i in range(ids.shape[0])]
    else:
        if lengths is not None:
            raise ModelError("lengths only go with a padded [S, T] token array; lists carry their own lengths")
        seqs = [np.asarray(s, np.int32).reshape(-1) for s in tokens]
    if not seqs:
        raise ModelError("no sequences to run")
    if min(len(s) for s in seqs) == 0:
        raise ModelError("every sequence needs at least one real token; got an empty one")
    return seqs


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple
