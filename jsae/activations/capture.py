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

from jsae.models.hooks import HEAD_AXIS, HookSpec
from jsae.models.transformer import Transformer, forward, layer_range

from .points import HookInput, input_width, last_layer


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
    points = tuple(dict.fromkeys(i.point for i in inputs))
    widths = {input_width(model.cfg, p) for p in points}
    if len(widths) != 1:
        raise ValueError(f"inputs read points of different widths {sorted(widths)}; one stack has one width")
    _, cache = forward(model, tokens, hooks=HookSpec(capture=points), logits=False)
    parts, order = [], []
    for p in points:
        mine = [n for n, i in enumerate(inputs) if i.point == p]
        layers = np.array([inputs[n].layer for n in mine])
        acts = cache[p][:, :, skip:]  # [L, B, T', (H,) d]
        if p in HEAD_AXIS:
            heads = np.array([inputs[n].head for n in mine])
            rows = acts[layers, :, :, heads]  # advanced indices first: [n, B, T', d]
        else:
            rows = acts[layers]  # [n, B, T', D]
        parts.append(rows.reshape(len(mine), -1, rows.shape[-1]))
        order += mine
    out = parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=0)
    if order != sorted(order):
        out = out[np.argsort(order)]
    return out


capture_rows_jit = eqx.filter_jit(capture_rows)
