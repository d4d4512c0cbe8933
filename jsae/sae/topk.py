"""TopK SAE (Gao et al. 2024): keep the k largest pre-activations of each token.

    f     = ReLU(TopK((x - b_dec) W_enc + b_enc))    (exactly k entries kept per token)
    x_hat = f W_dec + b_dec
    loss  = mean_b ||x - x_hat||^2 + aux_coef * AuxK      (AuxK: see jsae.sae.auxk)

Hyperparameters (``hp``): ``aux_coef`` (default 1/32, the paper's). ``sparsity_coef`` is unused: k sets
the sparsity. Decoder rows have unit norm (init and ``constrain``). The AuxK term is normalised by the
residual's variance as in the paper while the reconstruction term is the plain squared error of
``base.squared_error``, so the balance between them depends on the data scale (train on normalised
activations, ``TrainConfig(normalise_activations=True)``, to keep the paper's balance meaningful).

Training can run sparse (``sparse=True``; ``None`` picks by ``auxk.use_sparse``): only the k active
latents' decoder rows are decoded and only their encoder columns and decoder rows get gradients
(``jsae.sae.sparse``). Same values as the dense loss up to float rounding; ``sparse=False`` keeps
the dense products.
"""

from __future__ import annotations

from typing import ClassVar

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, PRNGKeyArray

from jsae.sae import sparse as sp
from jsae.sae.auxk import (
    check_k,
    keep_top_k,
    reconstruction_with_auxk,
    resolve_k_aux,
    sparse_reconstruction_with_auxk,
    use_sparse,
)
from jsae.sae.base import SAE, BDecInit, Hyper, init_tied_weights, initial_b_dec, unit_rows


class TopKSAE(SAE):
    k: int = eqx.field(static=True)
    k_aux: int = eqx.field(static=True)
    sparse: bool | None = eqx.field(static=True, default=None)  # training path: None = by size (use_sparse)
    uses_dead_latents: ClassVar[bool] = True  # AuxK

    def activation(self, pre):
        return keep_top_k(pre, self.k)

    def loss(self, x: Float[Array, "B d_in"], hp: Hyper, dead: Bool[Array, " d_sae"] | None):
        if use_sparse(self.sparse, self.d_sae, self.k, self.d_in):
            return sparse_reconstruction_with_auxk(self, x, hp, dead, lambda pre: sp.topk_entries(pre, self.k), self.k)
        return reconstruction_with_auxk(self, x, hp, dead, self.activation)

    def constrain(self) -> TopKSAE:
        return eqx.tree_at(lambda s: s.W_dec, self, unit_rows(self.W_dec))


def resolve_b_dec_init(b_dec_init: BDecInit | None, data) -> BDecInit:
    """Default for the TopK family: the geometric median when a data sample is given, else zeros."""
    if b_dec_init is not None:
        return b_dec_init
    return "geometric_median" if data is not None else "zeros"


def init(
    key: PRNGKeyArray,
    d_in: int,
    d_sae: int,
    *,
    k: int,
    k_aux: int | None = None,
    data: Float[Array, "n d_in"] | None = None,
    b_dec_init: BDecInit | None = None,
    apply_b_dec_to_input: bool = True,
    sparse: bool | None = None,
) -> TopKSAE:
    """A TopK SAE with unit-norm decoder rows and W_enc = W_dec^T.

    Args:
      k: active latents per token (1 <= k <= d_sae).
      k_aux: latents used by AuxK (default d_in // 2, at least 1, at most d_sae).
      b_dec_init: "zeros", "mean" or "geometric_median" (default: geometric median of ``data`` when
        given, else zeros).
      sparse: train on the active latents only (True), densely (False), or by size (None, see
        ``jsae.sae.auxk.use_sparse``).
    """
    k = check_k(k, d_sae)
    W_enc, W_dec = init_tied_weights(key, d_in, d_sae, 1.0)
    return TopKSAE(
        W_enc=W_enc,
        b_enc=jnp.zeros((d_sae,)),
        W_dec=W_dec,
        b_dec=initial_b_dec(data, d_in, resolve_b_dec_init(b_dec_init, data)),
        apply_b_dec_to_input=apply_b_dec_to_input,
        k=k,
        k_aux=resolve_k_aux(k_aux, d_in, d_sae),
        sparse=sparse,
    )
