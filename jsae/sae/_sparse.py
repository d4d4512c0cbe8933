"""Sparse training of the TopK family: a step touches only the active latents' weights.

Of a TopK SAE's d_sae latents only k per token are active, yet the dense loss decodes with the whole
``[B, d_sae] @ [d_sae, d_in]`` product and its autodiff adds two more products of that size, plus a
third for the encoder weights (``x^T dpre``, dense although ``dpre`` is zero off the active entries).
Here the active entries are a list of (row, latent) pairs, E = k * B of them:

- the pre-activations are computed densely once, without a gradient (the top-k needs all of them);
- ``active_pre`` picks the active values; its ``custom_vjp`` scatters their cotangents straight into
  the encoder's weight and bias gradients (``E * d_in`` work, not ``B * d_sae * d_in``): XLA's own
  derivative of the pick would be a dense ``[B, d_sae]`` cotangent and a dense matmul;
- ``decode_entries`` sums the active decoder rows (a gather), whose derivative XLA already computes
  as a scatter-add of ``E`` rows.

Values equal the dense path's up to float rounding (tests/test_sae_sparse.py); the dense path stays
selectable (each architecture's ``sparse`` field).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int


def topk_entries(pre: Float[Array, "B m"], k: int) -> tuple[Int[Array, " E"], Int[Array, " E"]]:
    """(rows, cols) of the k largest entries of each row (E = B * k, row-major)."""
    _, idx = jax.lax.top_k(jax.lax.stop_gradient(pre), k)
    rows = jnp.broadcast_to(jnp.arange(pre.shape[0])[:, None], idx.shape)
    return rows.reshape(-1), idx.reshape(-1)


def flat_topk_entries(pre: Float[Array, "B m"], k_total: int) -> tuple[Int[Array, " E"], Int[Array, " E"]]:
    """(rows, cols) of the ``k_total`` largest entries of the whole array."""
    _, flat = jax.lax.top_k(jax.lax.stop_gradient(pre).reshape(-1), k_total)
    return flat // pre.shape[1], flat % pre.shape[1]


def _active_pre(
    x: Float[Array, "B d"],
    b_dec: Float[Array, " d"],
    W_enc: Float[Array, "d m"],
    b_enc: Float[Array, " m"],
    pre: Float[Array, "B m"],
    rows: Int[Array, " E"],
    cols: Int[Array, " E"],
    centered: bool,
) -> Float[Array, " E"]:
    """``pre[rows, cols]`` where ``pre = (x - b_dec if centered else x) @ W_enc + b_enc`` was computed
    already (pass it through ``stop_gradient``); gradients reach x, b_dec, W_enc and b_enc, never pre."""
    return pre[rows, cols]


# custom_vjp called, not used through functools.partial as a decorator, so type checkers see the return type
active_pre = jax.custom_vjp(_active_pre, nondiff_argnums=(7,))


def _active_pre_fwd(x, b_dec, W_enc, b_enc, pre, rows, cols, centered):
    return pre[rows, cols], (x, b_dec, W_enc, b_enc, rows, cols, pre[:0, :0])  # pre's dtype, not its values


def _active_pre_bwd(centered, res, dv):
    x, b_dec, W_enc, b_enc, rows, cols, pre_dtype_of = res
    d, m = W_enc.shape
    xc = (x - b_dec) if centered else x
    acc = jnp.promote_types(dv.dtype, jnp.float32)
    dv = dv.astype(acc)
    db_enc = jnp.zeros((m,), acc).at[cols].add(dv)
    dW_enc = jnp.zeros((m, d), acc).at[cols].add(dv[:, None] * xc[rows].astype(acc)).T
    dxc = jnp.zeros(x.shape, acc).at[rows].add(dv[:, None] * W_enc.T[cols].astype(acc))  # unused in training: DCE'd
    # d/d b_dec of sum_e dv_e * ((x - b_dec) @ W_enc)[e] = -W_enc @ (dv summed per latent) = -W_enc @ db_enc
    db_dec = -(W_enc.astype(acc) @ db_enc) if centered else jnp.zeros(b_dec.shape, acc)
    return (
        dxc.astype(x.dtype),
        db_dec.astype(b_dec.dtype),
        dW_enc.astype(W_enc.dtype),
        db_enc.astype(b_enc.dtype),
        jnp.zeros((x.shape[0], m), pre_dtype_of.dtype),
        None,
        None,
    )


active_pre.defvjp(_active_pre_fwd, _active_pre_bwd)


def decode_entries(
    vals: Float[Array, " E"],
    rows: Int[Array, " E"],
    cols: Int[Array, " E"],
    W_dec: Float[Array, "m d"],
    n_rows: int,
    per_row: int | None = None,
) -> Float[Array, "B d"]:
    """``sum_e vals[e] * W_dec[cols[e]]`` into row ``rows[e]`` (no bias), in at least float32.
    ``per_row=k`` says the entries are k per row in row-major order (TopK): a reshape and sum instead
    of a scatter."""
    rows_of_dec = gather_rows(W_dec, cols)
    if per_row is not None:
        w = vals.reshape(n_rows, per_row).astype(rows_of_dec.dtype)
        return jnp.einsum("bk,bkd->bd", w, rows_of_dec.reshape(n_rows, per_row, -1))
    return jax.ops.segment_sum(vals[:, None] * rows_of_dec, rows, n_rows)


def gather_rows(W: Float[Array, "m d"], cols: Int[Array, " E"]) -> Float[Array, "E d"]:
    """``W[cols]`` in at least float32. For a low-precision ``W`` (the compute dtype of mixed precision,
    ``jsae.train._precision``) the gather reads the low-precision rows and its derivative, a scatter-add
    of E rows into ``[m, d]``, sums in float32 and rounds once: XLA's own derivative would add the rows
    of a latent active in many tokens one after another in the low precision."""
    if jnp.finfo(W.dtype).bits >= 32:
        return W[cols]
    return _gather_rows_f32(W, cols)


@jax.custom_vjp
def _gather_rows_f32(W, cols):
    return W[cols].astype(jnp.float32)


def _gather_rows_f32_fwd(W, cols):
    return _gather_rows_f32(W, cols), (W, cols)


def _gather_rows_f32_bwd(res, g):
    W, cols = res
    return jnp.zeros(W.shape, jnp.float32).at[cols].add(g).astype(W.dtype), None


_gather_rows_f32.defvjp(_gather_rows_f32_fwd, _gather_rows_f32_bwd)


def dense_from_entries(vals: Float[Array, " E"], rows, cols, shape: tuple[int, int]) -> Float[Array, "B m"]:
    """The dense ``[B, m]`` array holding ``vals`` at (rows, cols) and 0 elsewhere (no gradient)."""
    return jnp.zeros(shape, vals.dtype).at[rows, cols].set(jax.lax.stop_gradient(vals))


def auxk_entries(pre: Float[Array, "B m"], dead: Bool[Array, " m"], k_aux: int):
    """(rows, cols) of AuxK's candidates: the top ``k_aux`` of each row among dead latents (others count as
    0, as in the dense ``auxk_loss``)."""
    return topk_entries(jnp.where(dead, pre, 0.0), min(k_aux, pre.shape[-1]))
