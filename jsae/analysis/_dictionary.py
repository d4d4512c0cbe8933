"""Compare learned decoder directions with known features."""

from __future__ import annotations

import jax.numpy as jnp
from jaxtyping import Array, Float


def mean_max_cosine(
    true_features: Float[Array, "... n_features d"], W_dec: Float[Array, "... d_sae d"]
) -> Float[Array, ...]:
    """For each true feature the best cosine similarity with any decoder row, averaged over features.

    1.0 means every true feature has a latent pointing exactly along it. Leading axes broadcast (a
    stack of SAEs against a stack of dictionaries).
    """
    t = true_features / jnp.linalg.norm(true_features, axis=-1, keepdims=True)
    w = W_dec / jnp.maximum(jnp.linalg.norm(W_dec, axis=-1, keepdims=True), 1e-12)
    return jnp.mean(jnp.max(jnp.einsum("...fd,...md->...fm", t, w), axis=-1), axis=-1)
