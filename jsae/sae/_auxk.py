"""Top-k selection and the AuxK loss shared by the TopK-family architectures (Gao et al. 2024).

AuxK revives dead latents: the top ``k_aux`` pre-activations among dead latents try to reconstruct
the residual the live latents left behind,

    e     = x - x_hat                      (constant: no gradient flows into the main path)
    e_hat = TopK_aux(ReLU(pre[dead])) W_dec  (no b_dec: the residual has none)
    aux   = ||e - e_hat||^2 / ||e - mean_batch(e)||^2   (sums over batch and features)

The normalisation by the residual's variance follows the paper (a scale-free loss); it is zero when
no latent is dead or when the residual has no variance.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from jsae.sae import _sparse as sp
from jsae.sae._base import SAE, Hyper, matmul, reconstruction_metrics, squared_error


def check_k(k: int, d_sae: int, name: str = "k") -> int:
    """``k`` as a Python int; a clear ValueError unless it is an integer with 1 <= k <= d_sae."""
    if isinstance(k, bool) or not isinstance(k, numbers.Integral):
        raise ValueError(f"{name} must be an int, got {k!r}")
    k = int(k)
    if k < 1 or k > d_sae:
        raise ValueError(f"{name}={k} must satisfy 1 <= {name} <= d_sae={d_sae}")
    return k


def resolve_k_aux(k_aux: int | None, d_in: int, d_sae: int) -> int:
    """AuxK's k: default d_in // 2 (Gao et al.), at least 1, capped at d_sae."""
    if k_aux is None:
        return min(max(1, d_in // 2), d_sae)
    if isinstance(k_aux, bool) or not isinstance(k_aux, numbers.Integral) or k_aux < 1:
        raise ValueError(f"k_aux must be a positive int, got {k_aux!r}")
    return min(int(k_aux), d_sae)


def keep_top_k(pre: Float[Array, "... m"], k: int) -> Float[Array, "... m"]:
    """ReLU of the k largest entries of each row (others 0): k entries kept per row (more only on exact
    ties with the k-th value). A mask against the k-th value, not a scatter: on CPU this costs one
    ``top_k`` plus elementwise work, and the gradient is elementwise too."""
    # min over the k values, not values[..., -1]: XLA:CPU turns top_k followed by a slice into a full
    # sort, while top_k followed by a reduction keeps its fast partial top-k.
    kth = jax.lax.stop_gradient(jnp.min(jax.lax.top_k(pre, k)[0], axis=-1, keepdims=True))
    return jnp.where(pre >= kth, jax.nn.relu(pre), 0.0)


def keep_top_k_flat(pre: Float[Array, "B m"], k: int) -> Float[Array, "B m"]:
    """ReLU of the k largest entries of the whole array (others 0): k entries kept in total (more only
    on exact ties with the k-th value)."""
    kth = jax.lax.stop_gradient(jnp.min(jax.lax.top_k(pre.reshape(-1), k)[0]))
    return jnp.where(pre >= kth, jax.nn.relu(pre), 0.0)


def auxk_loss(
    pre: Float[Array, "B d_sae"],
    dead: Bool[Array, " d_sae"] | None,
    W_dec: Float[Array, "d_sae d_in"],
    residual: Float[Array, "B d_in"],
    k_aux: int,
) -> Float[Array, ""]:
    """Normalised AuxK loss (see the module docstring); ``residual = x - x_hat`` is stop-gradiented.

    ``dead=None`` means no latent is dead (the trainer passes None while that holds for the whole
    stack, so the extra top-k is skipped): the loss is then 0."""
    if dead is None:
        return jnp.zeros((), pre.dtype)
    z = keep_top_k(jnp.where(dead, pre, 0.0), min(k_aux, pre.shape[-1]))
    return normalised_aux(residual, matmul(z, W_dec), dead)


def normalised_aux(residual: Float[Array, "B d_in"], e_hat: Float[Array, "B d_in"], dead: Bool[Array, " d_sae"]):
    """``||e - e_hat||^2 / ||e - mean_batch(e)||^2`` with ``e`` the stop-gradiented residual; 0 when no
    latent is dead or the residual has no variance."""
    e = jax.lax.stop_gradient(residual)
    err = jnp.sum((e - e_hat) ** 2)
    var = jnp.sum((e - jnp.mean(e, axis=0)) ** 2)
    ok = jnp.any(dead) & (var > jnp.finfo(e.dtype).tiny)
    return jnp.where(ok, err / jnp.where(ok, var, 1.0), 0.0)


def reconstruction_with_auxk(
    sae: SAE,
    x: Float[Array, "B d_in"],
    hp: Hyper,
    dead: Bool[Array, " d_sae"] | None,
    activate: Callable[[Float[Array, "B d_sae"]], Float[Array, "B d_sae"]],
    k_aux: int,
):
    """The TopK-family loss: squared error of ``decode(activate(pre))`` + ``hp["aux_coef"]``
    times AuxK over ``k_aux`` dead latents. Returns ``(total, (metrics, f))`` as ``SAE.loss`` does."""
    pre = sae.pre_acts(x)
    f = activate(pre)
    x_hat = sae.decode(f)
    recon = squared_error(x, x_hat)
    aux = auxk_loss(pre, dead, sae.W_dec, x - x_hat, k_aux)
    total = recon + hp["aux_coef"] * aux
    return total, ({"loss": total, "recon": recon, "aux": aux, **reconstruction_metrics(x, x_hat, f)}, f)


Entries = Callable[[Float[Array, "B d_sae"]], tuple[Array, Array]]


class Active(NamedTuple):
    """The active entries of a batch (``jsae.sae._sparse``): latent ``cols[e]`` of token ``rows[e]`` with
    ReLU'd value ``f_vals[e]`` (gradients flow to the encoder through them), and AuxK's candidates
    (``aux_rows``, ``aux_cols``, values ``aux_z``, ``k_aux`` per row; None when no latent is dead)."""

    rows: Int[Array, " E"]
    cols: Int[Array, " E"]
    f_vals: Float[Array, " E"]
    aux_rows: Int[Array, " A"] | None
    aux_cols: Int[Array, " A"] | None
    aux_z: Float[Array, " A"] | None
    shape: tuple[int, int]
    k_aux: int


def active_latents(
    sae: SAE, x: Float[Array, "B d_in"], dead: Bool[Array, " d_sae"] | None, entries: Entries, k_aux: int
) -> Active:
    """Pre-activations once without a gradient, the entries chosen by ``entries(pre) -> (rows, cols)``
    (and AuxK's ``k_aux`` per row), and their values through ``sparse.active_pre`` (one call for both)."""
    pre = jax.lax.stop_gradient(sae.pre_acts(x))
    rows, cols = entries(pre)
    n_main = rows.shape[0]
    shape = (pre.shape[0], pre.shape[1])
    if dead is None:
        vals = sp.active_pre(x, sae.b_dec, sae.W_enc, sae.b_enc, pre, rows, cols, sae.apply_b_dec_to_input)
        return Active(rows, cols, jax.nn.relu(vals), None, None, None, shape, k_aux)
    aux_rows, aux_cols = sp.auxk_entries(pre, dead, k_aux)
    vals = sp.active_pre(
        x,
        sae.b_dec,
        sae.W_enc,
        sae.b_enc,
        pre,
        jnp.concatenate([rows, aux_rows]),
        jnp.concatenate([cols, aux_cols]),
        sae.apply_b_dec_to_input,
    )
    aux_z = jnp.where(dead[aux_cols], jax.nn.relu(vals[n_main:]), 0.0)
    return Active(rows, cols, jax.nn.relu(vals[:n_main]), aux_rows, aux_cols, aux_z, shape, k_aux)


def sparse_auxk(sae: SAE, active: Active, residual: Float[Array, "B d_in"], dead) -> Float[Array, ""]:
    """``auxk_loss`` from the active entries (0 when ``dead`` is None)."""
    if dead is None or active.aux_z is None or active.aux_rows is None or active.aux_cols is None:
        return jnp.zeros((), residual.dtype)
    B, m = active.shape
    e_hat = sp.decode_entries(active.aux_z, active.aux_rows, active.aux_cols, sae.W_dec, B, min(active.k_aux, m))
    return normalised_aux(residual, e_hat, dead)


def sparse_reconstruction_with_auxk(
    sae: SAE,
    x: Float[Array, "B d_in"],
    hp: Hyper,
    dead: Bool[Array, " d_sae"] | None,
    entries: Entries,
    per_row: int | None,
    k_aux: int,
):
    """``reconstruction_with_auxk`` computed on the active entries only (``jsae.sae._sparse``): the same
    loss, metrics and ``f`` up to float rounding. ``entries(pre) -> (rows, cols)`` picks the active
    latents (TopK: k per row, ``per_row=k``; BatchTopK: k*B in the batch, ``per_row=None``); AuxK uses
    ``k_aux`` dead latents per row."""
    a = active_latents(sae, x, dead, entries, k_aux)
    x_hat = sp.decode_entries(a.f_vals, a.rows, a.cols, sae.W_dec, a.shape[0], per_row) + sae.b_dec
    recon = squared_error(x, x_hat)
    aux = sparse_auxk(sae, a, x - x_hat, dead)
    total = recon + hp["aux_coef"] * aux
    f = sp.dense_from_entries(a.f_vals, a.rows, a.cols, a.shape)
    return total, ({"loss": total, "recon": recon, "aux": aux, **reconstruction_metrics(x, x_hat, f)}, f)


def use_sparse(sparse: bool | None, d_sae: int, k: int, d_in: int | None = None) -> bool:
    """Whether a TopK-family loss takes the sparse path: ``sparse`` when given, else by size: sparse when
    ``d_sae >= SPARSE_MIN_RATIO * k``, or ``d_sae >= SMALL_D_MIN_RATIO * k`` for ``d_in <= SMALL_D``."""
    if sparse is not None:
        return bool(sparse)
    if d_in is not None and d_in <= SMALL_D:
        return d_sae >= SMALL_D_MIN_RATIO * k
    return d_sae >= SPARSE_MIN_RATIO * k


SPARSE_MIN_RATIO = 128
"""Default: sparse when d_sae >= 128 k. The sparse path trades three dense [B, d_sae] x [d_sae, d_in]
products for gathers and scatter-adds of k * B rows, which run at a fraction of a matmul's speed per
element; with few latents per active one (small d_sae / k) the dense products are cheaper."""

SMALL_D, SMALL_D_MIN_RATIO = 128, 32
"""Narrow inputs (per-head ``z``, d_in <= 128) switch earlier, at d_sae >= 32 k: their dense products are
small matrices that run far below a matmul's peak, while the gathers cost the same per element
(``experiments/bench_train.py`` measures both paths at d_in 64 and 576)."""
