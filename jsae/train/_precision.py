"""Mixed precision: float32 parameters and optimizer state, matmuls in a compute dtype.

The step differentiates the loss of ``compute_view(sae, dtype)``, the SAE with its weight matrices
(``W_enc``, ``W_dec``) cast to the compute dtype. Every product of the loss then takes inputs in that
dtype and accumulates in float32 (``jsae.sae._base.matmul``), while biases, errors, norms and sums stay
float32. The cast sits inside the differentiated function, so gradients come back float32 to the
float32 parameters, and the optimizer never sees another dtype.

Why bfloat16 by default on TPU only: a TPU's matrix unit takes bfloat16 inputs natively (a float32
product there costs several bfloat16 passes), and bfloat16 keeps float32's exponent range, so an SAE
loss needs no loss scaling. Elsewhere the default stays float32: CPUs emulate bfloat16 products (no
gain there), and on a GPU a float32 run gives the same numbers as a CPU run; pass ``"bfloat16"`` to use
a GPU's bfloat16 tensor cores.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from jsae.sae import SAE

COMPUTE_DTYPES = ("float32", "bfloat16")
WEIGHT_MATRICES = ("W_enc", "W_dec")


def default_compute_dtype(backend: str) -> str:
    """``"bfloat16"`` on TPU, ``"float32"`` on every other backend."""
    return "bfloat16" if backend.lower() == "tpu" else "float32"


def resolve_compute_dtype(name: str | jnp.dtype | None, backend: str | None = None) -> jnp.dtype:
    """The dtype for ``name`` (``"float32"``, ``"bfloat16"``, or None: the default of ``backend``,
    itself defaulting to ``jax.default_backend()``)."""
    if name is None:
        name = default_compute_dtype(backend or jax.default_backend())
    name = jnp.dtype(name).name if not isinstance(name, str) else name
    if name not in COMPUTE_DTYPES:
        raise ValueError(
            f"compute_dtype={name!r} is not supported; use 'float32', 'bfloat16' or None "
            "(bfloat16 on TPU, float32 elsewhere)"
        )
    return jnp.dtype(name)


def compute_view(sae: SAE, dtype) -> SAE:
    """``sae`` with ``W_enc`` and ``W_dec`` cast to ``dtype`` (the same SAE when they have it already).
    Differentiable: the cotangents are cast back to the parameters' own dtype."""
    dtype = jnp.dtype(dtype)
    if all(getattr(sae, k).dtype == dtype for k in WEIGHT_MATRICES):
        return sae
    return eqx.tree_at(
        lambda s: [getattr(s, k) for k in WEIGHT_MATRICES],
        sae,
        [getattr(sae, k).astype(dtype) for k in WEIGHT_MATRICES],
    )
