"""One forward pass, every hook point a stack reads: ``[B, T]`` tokens -> ``[N, B * (T - skip), d]`` rows.

This is the activation layer's only contact with the model. It is a pure function of (model, tokens),
jittable and shardable, so the streaming trainer fuses it with the SAE update in one program.
"""

from __future__ import annotations

from collections.abc import Sequence

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from jsae.models import Transformer, forward, layer_range
from jsae.models.hooks import HEAD_AXIS, HookSpec

from ._points import HookInput, input_width, last_layer


def model_for(model: Transformer, inputs: Sequence[HookInput]) -> Transformer:
    """The model truncated after the deepest layer the inputs read (layers after it are never run).

    Call once, outside the training loop: it slices the stacked layer weights."""
    stop = last_layer(inputs) + 1
    return model if stop == model.cfg.n_layers else layer_range(model, 0, stop)


def capture_rows(
    model: Transformer, tokens: Int[Array, "B T"], inputs: tuple[HookInput, ...], skip: int = 0
) -> Float[Array, "N R d"]:
    """Activations of every input on every position from ``skip`` on, ``R = B * (T - skip)``.

    Row ``i`` holds ``inputs[i]``; tokens go sequence-major (context ``b``, then position ``t``), as in
    ``tokens[:, skip:].reshape(-1)``. ``skip`` leading positions (a prepended BOS) are not text and are
    left out. One forward with ``logits=False`` captures every point at once.
    """
    return capture_rows_and(model, tokens, inputs, skip)[0]


def capture_rows_and(
    model: Transformer,
    tokens: Int[Array, "B T"],
    inputs: tuple[HookInput, ...],
    skip: int = 0,
    also: tuple[str, ...] = (),
) -> tuple[Float[Array, "N R d"], dict[str, Array]]:
    """:func:`capture_rows` and, from the same forward, the whole cache of the hook points ``also``
    (``{point: [L, B, T, ...]}``, all positions: e.g. ``("pattern", "resid_pre")`` for what a head reads).

    An input at a head point (``z``/``result``) with ``head=None`` reads every head of its layer, flattened
    (``d = H * d_head``: all-heads ``z`` SAEs, as SAELens ``hook_z`` SAEs without a head index)."""
    points = tuple(dict.fromkeys(i.point for i in inputs))
    widths = {input_width(model.cfg, p) for p in points}
    if len(widths) != 1:
        raise ValueError(f"inputs read points of different widths {sorted(widths)}; one stack has one width")
    _, cache = forward(model, tokens, hooks=HookSpec(capture=tuple(dict.fromkeys(points + tuple(also)))), logits=False)
    parts, order = [], []
    for p in points:
        mine = [n for n, i in enumerate(inputs) if i.point == p]
        layers = np.array([inputs[n].layer for n in mine])
        acts = cache[p][:, :, skip:]  # [L, B, T', (H,) d]
        if p in HEAD_AXIS and all(inputs[n].head is None for n in mine):
            rows = acts[layers].reshape(*acts[layers].shape[:3], -1)  # [n, B, T', H * d]
        elif p in HEAD_AXIS:
            pairs = [(i.layer, i.head) for i in (inputs[n] for n in mine) if i.head is not None]
            if len(pairs) != len(mine):
                raise ValueError(f"every input at {p!r} needs a head, got {[inputs[n] for n in mine]}")
            rows = _head_rows(acts, pairs)
        else:
            rows = acts[layers]  # [n, B, T', D]
        parts.append(rows.reshape(len(mine), -1, rows.shape[-1]))
        order += mine
    out = parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=0)
    if order != sorted(order):
        out = out[np.argsort(order)]
    return out, {p: cache[p] for p in also}


def _head_rows(acts: Float[Array, "L B T H d"], pairs: list[tuple[int, int]]) -> Float[Array, "n B T d"]:
    """The rows of the ``(layer, head)`` pairs. Every head of some layers, layer-major or head-major, is a
    slice and a transpose, which keeps a head-sharded ``acts`` (a model from ``shard_model``) in place:
    head-major, each device's heads are a contiguous block of the SAE axis and no row moves between
    devices. Any other set of heads is a gather."""
    n_heads = acts.shape[3]
    layers = list(dict.fromkeys(layer for layer, _ in pairs))
    if len(pairs) == len(layers) * n_heads:
        picked = acts[np.array(layers)] if layers != list(range(acts.shape[0])) else acts  # [l, B, T, H, d]
        if pairs == [(layer, h) for layer in layers for h in range(n_heads)]:
            return jnp.moveaxis(picked, 3, 1).reshape(len(pairs), *acts.shape[1:3], acts.shape[-1])
        if pairs == [(layer, h) for h in range(n_heads) for layer in layers]:
            return jnp.transpose(picked, (3, 0, 1, 2, 4)).reshape(len(pairs), *acts.shape[1:3], acts.shape[-1])
    return acts[np.array([lay for lay, _ in pairs]), :, :, np.array([h for _, h in pairs])]  # [n, B, T', d]


capture_rows_jit = eqx.filter_jit(capture_rows)
