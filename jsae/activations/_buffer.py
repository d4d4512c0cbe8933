"""A shuffle buffer on the device that mixes activations across contexts.

Neighbouring tokens of a context are correlated, so batches straight from the model would hold a few
contexts each. The buffer holds ``K`` rows (tokens) for every SAE input, ``[N, K, d]``. Each exchange
takes ``R`` new rows, sends out the rows of ``R`` slots drawn at random without replacement, and puts
the new rows into those slots: a vectorised version of the classic streaming shuffle buffer, O(R) work
per exchange whatever K is. Every row that goes in comes out exactly once (after a random wait of
about ``K / R`` exchanges); :func:`drain` sends out what is left, in random order.

The same permutation of tokens applies to all N inputs, so row ``j`` of every SAE's batch is the same
token (the N axis is never mixed). Everything here is pure and jittable; the key decides the order.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray


def exchange(
    buffer: Float[Array, "N K d"], new: Float[Array, "N R d"], key: PRNGKeyArray
) -> tuple[Float[Array, "N K d"], Float[Array, "N R d"]]:
    """Put ``new`` into ``R`` random slots of ``buffer``; return the new buffer and the rows sent out.

    ``R <= K``. The rows sent out are those the chosen slots held, in the random order of the slots."""
    n_slots, n_new = buffer.shape[1], new.shape[1]
    if n_new > n_slots:
        raise ValueError(
            f"the buffer holds {n_slots} tokens but {n_new} arrive at once; use a buffer of at least {n_new} tokens"
        )
    slots = jax.random.permutation(key, n_slots)[:n_new]
    out = buffer[:, slots]
    return buffer.at[:, slots].set(new.astype(buffer.dtype)), out


def drain(buffer: Float[Array, "N K d"], key: PRNGKeyArray) -> Float[Array, "N K d"]:
    """Every row of the buffer, in random order (the end of a stream)."""
    return buffer[:, jax.random.permutation(key, buffer.shape[1])]


def exchange_key(key: PRNGKeyArray, exchange_index) -> PRNGKeyArray:
    """The key of exchange number ``i``: a pure function of the run's key and the position in the stream,
    so a resumed run draws the same slots."""
    return jax.random.fold_in(key, exchange_index)


def buffer_bytes(n_inputs: int, n_tokens: int, d: int, dtype=jnp.float32) -> int:
    """Device memory of a buffer ``[n_inputs, n_tokens, d]``."""
    return n_inputs * n_tokens * d * jnp.dtype(dtype).itemsize
