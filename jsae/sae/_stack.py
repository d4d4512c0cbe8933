"""Many SAEs as one: every array gets a leading axis [N, ...]."""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from jsae.sae._base import SAE


def stack(
    init: Callable[..., SAE],
    keys: PRNGKeyArray,
    d_in: int,
    d_sae: int,
    *,
    data: Float[Array, "N n d_in"] | Float[Array, "n d_in"] | None = None,
    **cfg,
) -> SAE:
    """Build N SAEs with a leading axis, one per key.

    Args:
      init: an architecture's ``init(key, d_in, d_sae, *, data=..., **cfg)``, e.g. ``jsae.sae.topk.init``.
      keys: ``[N]`` PRNG keys (``jax.random.split(key, N)``); N = 1 gives a stack of one.
      data: optional activation sample for the ``b_dec`` initialisation, ``[N, n, d_in]`` (one sample per
        SAE, e.g. per head) or ``[n, d_in]`` (shared).
      cfg: static configuration shared by the whole stack (k, unit_norm_decoder, b_dec_init, ...).

    Returns:
      One SAE module whose arrays all have a leading axis of size N.
    """
    keys = jnp.asarray(keys)
    if keys.ndim == 0 or (keys.dtype == jnp.uint32 and keys.ndim == 1):
        raise ValueError("stack() needs a batch of keys: pass jax.random.split(key, n_saes)")
    n = keys.shape[0]
    if data is not None:
        data = jnp.asarray(data)
        if data.ndim == 3:
            if data.shape[0] != n:
                raise ValueError(f"data has {data.shape[0]} per-SAE samples but {n} keys were given")
            return eqx.filter_vmap(lambda k, x: init(k, d_in, d_sae, data=x, **cfg))(keys, data)
    return eqx.filter_vmap(lambda k: init(k, d_in, d_sae, data=data, **cfg))(keys)


def n_saes(sae: SAE) -> int:
    """Size of the leading (SAE) axis of a stack."""
    if sae.W_enc.ndim != 3:
        raise ValueError(
            f"expected a stack with W_enc [N, d_in, d_sae], got shape {sae.W_enc.shape}; "
            "build one with jsae.sae.stack (N=1 for a single SAE)"
        )
    return sae.W_enc.shape[0]


def index(sae: SAE, i: int) -> SAE:
    """SAE number i of a stack (without the leading axis)."""
    return jax.tree.map(lambda a: a[i], sae)


def unstack(sae: SAE) -> list[SAE]:
    return [index(sae, i) for i in range(n_saes(sae))]


def concat(saes: list[SAE]) -> SAE:
    """Stack single SAEs (same architecture and config) into one with a leading axis."""
    return jax.tree.map(lambda *a: jnp.stack(a), *saes)
