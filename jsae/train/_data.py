"""Where a stack's batches come from: an in-memory array (shuffled epochs, a pure function of the
step, so a resumed run sees exactly the batches an uninterrupted one would) or an iterator of batches.

Shapes: per-SAE data ``[N, T, d]`` (e.g. each head's activations), shared data ``[T, d]``; an
iterator yields ``[N, B, d]`` or ``[B, d]`` batches.
"""

from __future__ import annotations

import inspect
import itertools
from collections.abc import Callable, Iterable, Iterator

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from jaxtyping import Array, Float, Int, PRNGKeyArray

Batches = Iterable[np.ndarray] | Callable[[], Iterable[np.ndarray]]


def chunk_indices(
    key: PRNGKeyArray, start: Int[Array, ""], n_steps: int, batch: int, n_tokens: int
) -> Int[Array, "n_steps batch"]:
    """Row indices for steps ``start .. start + n_steps - 1``.

    Each epoch is a fresh permutation of the ``n_tokens`` rows (key folded with the epoch number); an
    epoch holds ``n_tokens // batch`` steps and the remainder rows of a permutation are skipped.
    """
    per_epoch = n_tokens // batch
    n_epochs = n_steps // per_epoch + 2
    first = start // per_epoch
    perms = jax.vmap(lambda e: jax.random.permutation(jax.random.fold_in(key, e), n_tokens)[: per_epoch * batch])(
        first + jnp.arange(n_epochs)
    )
    offset = (start - first * per_epoch) * batch
    return jax.lax.dynamic_slice(perms.reshape(-1), (offset,), (n_steps * batch,)).reshape(n_steps, batch)


def gather_batch(
    data: Float[Array, "N T d"] | Float[Array, "T d"], rows: Int[Array, " B"], n: int
) -> Float[Array, "N B d"]:
    if data.ndim == 3:
        return data[:, rows]
    return jnp.broadcast_to(data[rows], (n, rows.shape[0], data.shape[-1]))


def check_array(data, n: int, d_in: int, batch: int) -> None:
    """One clear error for data of the wrong shape, too few rows, or NaN/inf values."""
    shape = tuple(data.shape)
    if data.ndim not in (2, 3):
        raise ValueError(f"data must be [T, d_in] (shared) or [N, T, d_in] (per SAE); got shape {shape}")
    if shape[-1] != d_in:
        raise ValueError(
            f"data has d={shape[-1]} features but the SAEs take d_in={d_in}; "
            "check the hook point / layer the activations came from"
        )
    if data.ndim == 3 and shape[0] != n:
        raise ValueError(f"per-SAE data has {shape[0]} entries on its leading axis but the stack holds {n} SAEs")
    if shape[-2] < batch:
        raise ValueError(
            f"data holds {shape[-2]} tokens per SAE, fewer than batch_size={batch}; lower batch_size or give more data"
        )
    finite = np.asarray(jnp.all(jnp.isfinite(jnp.asarray(data)), axis=-1))
    if not finite.all():
        where = np.argwhere(~finite)[0]
        at = f"SAE {where[0]}, token {where[1]}" if data.ndim == 3 else f"token {where[0]}"
        raise ValueError(f"data contains NaN or inf (first at {at}); clean or drop those rows before training")


def iterator_from(source: Batches, skip: int) -> Iterator[np.ndarray]:
    """An iterator over batches, with the first ``skip`` (already trained on) dropped.

    Pass a callable returning a fresh iterable to make a resumed run see the same batches. A callable
    that takes a ``start_step`` keyword (e.g. ``functools.partial(cache.batches, 1024, seed=0)``) is asked
    to start there itself, so a resumed run does not read the skipped batches again."""
    if callable(source) and "start_step" in inspect.signature(source).parameters:
        return iter(source(start_step=skip))  # pyright: ignore[reportCallIssue]  # checked just above
    it = iter(source() if callable(source) else source)
    return itertools.islice(it, skip, None)


_KEPT_DTYPES = (np.dtype(np.float32), np.dtype(ml_dtypes.bfloat16))


def next_chunk(it: Iterator[np.ndarray], n_steps: int, n: int, d_in: int, step: int) -> np.ndarray:
    """Stack ``n_steps`` batches into [N, n_steps, B, d] (shared batches are broadcast), checking each.

    float32 and bfloat16 batches keep their dtype (bfloat16 halves the host work and the copy to the
    device, where the step widens it); any other dtype becomes float32."""
    out = []
    for i in range(n_steps):
        try:
            b = np.asarray(next(it))
            if b.dtype not in _KEPT_DTYPES:
                b = b.astype(np.float32)
        except StopIteration:
            raise ValueError(f"the batch iterator ran out at step {step + i}; give at least `steps` batches") from None
        if b.ndim == 2:
            b = np.broadcast_to(b, (n, *b.shape))
        if b.ndim != 3 or b.shape[0] != n or b.shape[-1] != d_in:
            raise ValueError(f"batch at step {step + i} has shape {b.shape}; expected [B, {d_in}] or [{n}, B, {d_in}]")
        if out and b.shape != out[0].shape:
            raise ValueError(f"batch at step {step + i} has shape {b.shape}, unlike {out[0].shape} before it")
        bad = non_finite(b)
        if bad.any():
            sae = int(np.argwhere(bad)[0][0])
            raise ValueError(f"batch at step {step + i} contains NaN or inf (SAE {sae}); clean the data source")
        out.append(b)
    return np.stack(out, axis=1)


def non_finite(b: np.ndarray) -> np.ndarray:
    """Where ``b`` (float32 or bfloat16) holds NaN or inf. bfloat16 is read as its bits (exponent all
    ones), an integer test: NumPy's ``isfinite`` on ml_dtypes' bfloat16 converts element by element."""
    if b.dtype == ml_dtypes.bfloat16:
        return (b.view(np.uint16) & 0x7F80) == 0x7F80
    return ~np.isfinite(b)


def sample_rows(data, n_max: int = 8192) -> np.ndarray:
    """Up to ``n_max`` leading rows per SAE, for statistics such as the normalisation scale."""
    return np.asarray(data[..., :n_max, :])
