"""Harvest per-head activations of all layers and heads, batched and memory-bounded, for SAE training."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array

from .batched import map_batches
from .errors import HookError
from .hooks import HEAD_AXIS, POINTS, HookSpec
from .tokenizer import TokenBatch, Tokenizer, pad_sequences
from .transformer import Transformer, check_tokens, forward


def _as_tokens(inputs, tokenizer: Tokenizer | None):
    """TokenBatch / id arrays / ``(tokens, lengths)`` pass through; texts are encoded; lists stay lists."""
    if isinstance(inputs, TokenBatch | np.ndarray):
        return inputs, None
    if isinstance(inputs, tuple) and len(inputs) == 2 and isinstance(inputs[0], np.ndarray):
        return inputs[0], np.asarray(inputs[1])
    seqs = []
    for x in inputs:
        if isinstance(x, str):
            if tokenizer is None:
                raise HookError("harvest got text but no tokenizer; pass tokenizer=... or token ids")
            seqs.append(tokenizer.encode(x))
        else:
            seqs.append([int(i) for i in x])
    return seqs, None


@eqx.filter_jit
def _capture(model: Transformer, tokens: Array, lengths: Array, spec: HookSpec, point: str) -> Array:
    """``[b, (T,) L*H, d]``: ``point`` for all layers, layer-major on one head axis (a unit one off heads)."""
    _, cache = forward(model, tokens, hooks=spec, lengths=lengths, logits=False)
    act = cache[point]  # [L, b, (T,) (H,) d]
    if point not in HEAD_AXIS:
        act = act[..., None, :]
    act = jnp.moveaxis(act, 0, -3)  # [b, (T,) L, H, d]
    return act.reshape(*act.shape[:-3], -1, act.shape[-1])


def harvest(
    model: Transformer,
    inputs: TokenBatch | Sequence[str] | Sequence[Sequence[int]] | np.ndarray | tuple[np.ndarray, np.ndarray],
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

    inputs: a :class:`~jsae.models.tokenizer.TokenBatch`, texts (with ``tokenizer``), token-id lists, a
      ``[N, T]`` id array (-1 padding is found), or ``(tokens, lengths)``.
    point: a hook point; head points (``z``, ``result``) give one row per (layer, head).
    positions: ``"all"`` (every real token), ``"last"`` (the last real token), ``"mean"`` (average over
      real tokens).
    Returns ``[L*H, n, d]`` for head points (row ``l*H + h``) or ``[L, n, D]`` for residual points;
    ``n`` = number of sequences (last/mean) or of real tokens (all; sequence-major, then position).

    Batching is :func:`~jsae.models.map_batches`: sequences sorted by length, right-padded to a multiple
    of ``pad_multiple``, at most ``batch_size`` rows and ``max_batch_bytes`` of captured activations.
    """
    if point not in POINTS or point == "pattern":
        raise HookError(f"harvest point must be one of {[p for p in POINTS if p != 'pattern']}, got {point!r}")
    if positions not in ("all", "last", "mean"):
        raise HookError(f"positions must be 'all', 'last' or 'mean', got {positions!r}")
    cfg = model.cfg
    H = cfg.n_heads if point in HEAD_AXIS else 1
    d = cfg.d_head if point == "z" else cfg.d_model
    tokens, lengths = _as_tokens(inputs, tokenizer)
    check_tokens(
        cfg,
        tokens.ids
        if isinstance(tokens, TokenBatch)
        else np.asarray(tokens)
        if isinstance(tokens, np.ndarray)
        else pad_sequences(tokens).ids,
    )
    spec = HookSpec(capture=(point,), reduce=positions)
    # captured bytes per token (all positions) or the live per-token activations of one layer (reduced)
    bytes_per_token = cfg.n_layers * H * d * 4 if positions == "all" else H * d * 4 * 8
    out = map_batches(
        lambda m, t, n: _capture(m, t, n, spec, point),
        model,
        tokens,
        lengths,
        batch_size=batch_size,
        bytes_per_token=bytes_per_token,
        max_batch_bytes=max_batch_bytes,
        pad_multiple=pad_multiple,
        per_token=positions == "all",
        progress=progress,
        desc=f"harvest {point}",
    )  # [n, L*H, d]
    return np.ascontiguousarray(np.asarray(out, dtype).swapaxes(0, 1))


def head_means(acts: np.ndarray, n_layers: int) -> np.ndarray:
    """Per-head means ``[L, H, d]`` of harvested activations ``[L*H, n, d]`` (for :func:`mean_ablate`)."""
    m = np.asarray(acts).mean(axis=1)
    return m.reshape(n_layers, -1, m.shape[-1])
