"""Harvest activations of text at a hook point (per head, or the residual stream), batched and memory-bounded:
the one host-side way from text to activations (SAE training data, circuit discovery, absorption probes)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, overload

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array

from ._batched import map_batches
from ._errors import HookError
from ._tokenizer import TokenBatch, Tokenizer, pad_sequences
from ._transformer import Transformer, check_tokens, forward, layer_range
from .hooks import HEAD_AXIS, POINTS, HookSpec


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
def _capture(
    model: Transformer, tokens: Array, lengths: Array, spec: HookSpec, point: str, layers: tuple[int, ...], logits: bool
):
    """``[b, (T,) len(layers)*H, d]``: ``point`` at ``layers``, layer-major on one head axis (a unit one off
    heads); with ``logits``, also the ``[b, V]`` logits at each row's last real position."""
    out, cache = forward(model, tokens, hooks=spec, lengths=lengths, logits="last" if logits else False)
    act = cache[point][jnp.asarray(layers)]  # [l, b, (T,) (H,) d]
    if point not in HEAD_AXIS:
        act = act[..., None, :]
    act = jnp.moveaxis(act, 0, -3)  # [b, (T,) l, H, d]
    act = act.reshape(*act.shape[:-3], -1, act.shape[-1])
    return (act, out) if logits else act


@overload
def harvest(
    model: Transformer,
    inputs: TokenBatch | Sequence[str] | Sequence[Sequence[int]] | np.ndarray | tuple[np.ndarray, np.ndarray],
    *,
    tokenizer: Tokenizer | None = None,
    point: str = "result",
    positions: Literal["all", "last", "mean"] = "mean",
    layers: int | Sequence[int] | None = None,
    last_logits: Literal[False] = False,
    batch_size: int = 32,
    max_batch_bytes: int = 256 << 20,
    pad_multiple: int = 8,
    dtype=np.float32,
    progress: bool = True,
    desc: str | None = None,
) -> np.ndarray: ...


@overload
def harvest(
    model: Transformer,
    inputs: TokenBatch | Sequence[str] | Sequence[Sequence[int]] | np.ndarray | tuple[np.ndarray, np.ndarray],
    *,
    tokenizer: Tokenizer | None = None,
    point: str = "result",
    positions: Literal["all", "last", "mean"] = "mean",
    layers: int | Sequence[int] | None = None,
    last_logits: Literal[True],
    batch_size: int = 32,
    max_batch_bytes: int = 256 << 20,
    pad_multiple: int = 8,
    dtype=np.float32,
    progress: bool = True,
    desc: str | None = None,
) -> tuple[np.ndarray, np.ndarray]: ...


def harvest(
    model: Transformer,
    inputs: TokenBatch | Sequence[str] | Sequence[Sequence[int]] | np.ndarray | tuple[np.ndarray, np.ndarray],
    *,
    tokenizer: Tokenizer | None = None,
    point: str = "result",
    positions: Literal["all", "last", "mean"] = "mean",
    layers: int | Sequence[int] | None = None,
    last_logits: bool = False,
    batch_size: int = 32,
    max_batch_bytes: int = 256 << 20,
    pad_multiple: int = 8,
    dtype=np.float32,
    progress: bool = True,
    desc: str | None = None,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Activations of text at one hook point, batched and memory-bounded: the one way from text (or token
    ids) to activations on the host, in the trainer's shape.

    inputs: a :class:`~jsae.models.TokenBatch`, texts (with ``tokenizer``), token-id lists, a
      ``[N, T]`` id array (-1 padding is found), or ``(tokens, lengths)`` (a shorter length stops a row early:
      ``positions="last"`` then reads the position ``length - 1``).
    point: a hook point; head points (``z``, ``result``) give one row per (layer, head).
    positions: ``"all"`` (every real token), ``"last"`` (the last real token), ``"mean"`` (average over
      real tokens).
    layers: the layers to return (default all); the model runs only up to the deepest of them.
    last_logits: also return the logits at each sequence's last real position, ``[n, V]`` (from the same
      forward; all layers run).
    Returns ``[len(layers)*H, n, d]`` for head points (row ``i*H + h`` for ``layers[i]``) or
    ``[len(layers), n, D]`` for residual points (and the logits, with ``last_logits``); ``n`` = number of
    sequences (last/mean) or of real tokens (all; sequence-major, then position).

    Batching is :func:`~jsae.models.map_batches`: sequences sorted by length, right-padded to a multiple
    of ``pad_multiple``, at most ``batch_size`` rows and ``max_batch_bytes`` of captured activations.
    """
    if point not in POINTS or point == "pattern":
        raise HookError(f"harvest point must be one of {[p for p in POINTS if p != 'pattern']}, got {point!r}")
    if positions not in ("all", "last", "mean"):
        raise HookError(f"positions must be 'all', 'last' or 'mean', got {positions!r}")
    if last_logits and positions == "all":
        raise HookError("last_logits=True needs positions='last' or 'mean' (one row per sequence)")
    cfg = model.cfg
    chosen = tuple(range(cfg.n_layers)) if layers is None else (layers,) if isinstance(layers, int) else tuple(layers)
    if not chosen or any(not 0 <= int(layer) < cfg.n_layers for layer in chosen):
        raise HookError(f"layers must be in 0..{cfg.n_layers - 1}, got {layers!r}")
    chosen = tuple(int(layer) for layer in chosen)
    run = model if last_logits or max(chosen) == cfg.n_layers - 1 else layer_range(model, 0, max(chosen) + 1)
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
    bytes_per_token = run.cfg.n_layers * H * d * 4 if positions == "all" else H * d * 4 * 8
    out = map_batches(
        lambda m, t, n: _capture(m, t, n, spec, point, chosen, last_logits),
        run,
        tokens,
        lengths,
        batch_size=batch_size,
        bytes_per_token=bytes_per_token,
        max_batch_bytes=max_batch_bytes,
        pad_multiple=pad_multiple,
        per_token=positions == "all",
        progress=progress,
        desc=desc or f"harvest {point}",
    )  # [n, l*H, d] (and [n, V])
    acts, logits = out if last_logits else (out, None)
    acts = np.ascontiguousarray(np.asarray(acts, dtype).swapaxes(0, 1))
    return acts if logits is None else (acts, np.asarray(logits))


def head_means(acts: np.ndarray, n_layers: int) -> np.ndarray:
    """Per-head means ``[L, H, d]`` of harvested activations ``[L*H, n, d]`` (for :func:`mean_ablate`)."""
    m = np.asarray(acts).mean(axis=1)
    return m.reshape(n_layers, -1, m.shape[-1])
