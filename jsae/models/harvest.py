"""Harvest per-head activations of all layers and heads, batched and memory-bounded, for SAE training."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import jax
import numpy as np
from tqdm.auto import tqdm

from .errors import HookError
from .hooks import HEAD_AXIS, POINTS, HookSpec
from .tokenizer import Tokenizer, pad_sequences
from .transformer import Transformer, check_tokens, forward


def _as_sequences(inputs, tokenizer: Tokenizer | None) -> list[list[int]]:
    if isinstance(inputs, tuple) and len(inputs) == 2 and isinstance(inputs[0], np.ndarray):
        tokens, lengths = inputs
        return [list(map(int, tokens[i, : lengths[i]])) for i in range(len(lengths))]
    if isinstance(inputs, np.ndarray):
        return [list(map(int, row)) for row in inputs]
    seqs = []
    for x in inputs:
        if isinstance(x, str):
            if tokenizer is None:
                raise ValueError("harvest got text but no tokenizer; pass tokenizer=... or token ids")
            seqs.append(tokenizer.encode(x))
        else:
            seqs.append([int(i) for i in x])
    return seqs


def harvest(
    model: Transformer,
    inputs: Sequence[str] | Sequence[Sequence[int]] | np.ndarray | tuple[np.ndarray, np.ndarray],
    *,
    tokenizer: Tokenizer | None = None,
    point: str = "result",
    positions: Literal["all", "last", "mean"] = "mean",
    batch_size: int = 32,
    max_batch_bytes: int = 256 << 20,
    pad_multiple: int = 8,
    dtype=np.float32,
    progress: bool = True,
) -> np.ndarray:
    """Per-head activations for every layer and head, in the trainer's shape.

    inputs: texts (with ``tokenizer``), token-id lists, a ``[N, T]`` id array, or ``(tokens, lengths)``.
    point: a hook point; head points (``z``, ``result``) give one row per (layer, head).
    positions: ``"all"`` (every real token), ``"last"`` (the last real token), ``"mean"`` (average over
      real tokens).
    Returns ``[L*H, n, d]`` for head points (row ``l*H + h``) or ``[L, n, D]`` for residual points;
    ``n`` = number of sequences (last/mean) or of real tokens (all; sequence-major, then position).

    Sequences are sorted by length and right-padded to a multiple of ``pad_multiple``; a batch holds at
    most ``batch_size`` rows and its captured activations at most ``max_batch_bytes`` (rows are padded
    to a fixed count so each length bucket compiles once).
    """
    if point not in POINTS or point == "pattern":
        raise HookError(f"harvest point must be one of {[p for p in POINTS if p != 'pattern']}, got {point!r}")
    if positions not in ("all", "last", "mean"):
        raise HookError(f"positions must be 'all', 'last' or 'mean', got {positions!r}")
    cfg = model.cfg
    seqs = _as_sequences(inputs, tokenizer)
    if not seqs:
        raise ValueError("harvest got no inputs")
    lengths = np.array([len(s) for s in seqs])
    if lengths.min() == 0:
        raise ValueError("harvest got an empty sequence; every input needs at least one token")
    per_head = point in HEAD_AXIS
    H = cfg.n_heads if per_head else 1
    d = cfg.d_head if point == "z" else cfg.d_model
    L = cfg.n_layers
    rows_out = L * H
    n_out = int(lengths.sum()) if positions == "all" else len(seqs)
    out = np.empty((rows_out, n_out, d), dtype)
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]) if positions == "all" else np.arange(len(seqs))

    spec = HookSpec(capture=(point,), reduce=positions)
    order = np.argsort(lengths, kind="stable")
    bytes_per_row_token = L * H * d * 4 if positions == "all" else H * d * 4 * 8  # captured vs live
    batches = []
    i = 0
    while i < len(order):
        T = int(-(-lengths[order[min(i + batch_size, len(order)) - 1]] // pad_multiple) * pad_multiple)
        rows = int(max(1, min(batch_size, max_batch_bytes // max(1, T * bytes_per_row_token))))
        idx = order[i : i + rows]
        T = int(-(-lengths[idx].max() // pad_multiple) * pad_multiple)
        batches.append((idx, T, rows))
        i += rows
    pad_id = tokenizer.pad_id if tokenizer is not None else 0
    for idx, T, rows in tqdm(batches, desc=f"harvest {point}", disable=not progress, unit="batch"):
        tok, lens = pad_sequences([seqs[j] for j in idx] + [[pad_id]] * (rows - len(idx)), pad_id, pad_to=T)
        check_tokens(cfg, tok)
        _, cache = forward(model, tok, hooks=spec, lengths=lens, logits=False)
        act = np.asarray(jax.device_get(cache[point]))[:, : len(idx)]  # [L, b, (T,) (H,) d]
        if not per_head:
            act = act[..., None, :]  # a unit head axis: [L, b, (T,) 1, D]
        if positions == "all":
            for r, j in enumerate(idx):
                a = act[:, r, : lengths[j]]  # [L, len, H, d]
                out[:, offsets[j] : offsets[j] + lengths[j]] = a.transpose(0, 2, 1, 3).reshape(rows_out, lengths[j], d)
        else:
            out[:, idx] = act.transpose(0, 2, 1, 3).reshape(rows_out, len(idx), d)
    return out


def head_means(acts: np.ndarray, n_layers: int) -> np.ndarray:
    """Per-head means ``[L, H, d]`` of harvested activations ``[L*H, n, d]`` (for :func:`mean_ablate`)."""
    m = np.asarray(acts).mean(axis=1)
    return m.reshape(n_layers, -1, m.shape[-1])
