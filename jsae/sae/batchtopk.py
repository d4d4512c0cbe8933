"""BatchTopK SAE (Bussmann et al. 2024): keep the k*B largest activations of the whole batch.

Training (``loss``), on a batch pre [B, d_sae]:

    f     = ReLU(TopK_{k*B}(flatten(pre)))        (exactly k*B entries kept per batch)
    x_hat = f W_dec + b_dec
    loss  = mean_b ||x - x_hat||^2 + aux_coef * AuxK      (AuxK: see jsae.sae.auxk)

Inference (``encode``) uses one global threshold, a JumpReLU: ``f = pre * (pre > threshold)``. The
threshold is a buffer, not a trained parameter: ``update_buffers(f)`` sets it to an EMA (decay
``threshold_decay``) of the smallest positive activation of each training batch; the first update
initialises it (the stored value is -1 until then, and ``encode`` behaves as a ReLU). It is never used
in ``loss`` and is read through ``stop_gradient`` elsewhere, so its gradient is exactly zero and Adam
leaves it unchanged. ``to_jumprelu`` exports the inference SAE as a ``JumpReLUSAE``.

Hyperparameters (``hp``): ``aux_coef`` (default 1/32). ``sparsity_coef`` is unused.
Decoder rows have unit norm (init and ``constrain``).
"""

from __future__ import annotations

from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, PRNGKeyArray

from jsae.sae import sparse as sp
from jsae.sae.auxk import (
    check_k,
    keep_top_k_flat,
    reconstruction_with_auxk,
    resolve_k_aux,
    sparse_reconstruction_with_auxk,
    use_sparse,
)
from jsae.sae.base import SAE, BDecInit, Hyper, init_tied_weights, initial_b_dec, unit_rows
from jsae.sae.jumprelu import JumpReLUSAE
from jsae.sae.topk import resolve_b_dec_init


class BatchTopKSAE(SAE):
    threshold: Float[Array, ""]
    k: int = eqx.field(static=True)
    k_aux: int = eqx.field(static=True)
    threshold_decay: float = eqx.field(static=True)
    sparse: bool | None = eqx.field(static=True, default=None)  # training path: None = by size (use_sparse)
    uses_dead_latents: ClassVar[bool] = True  # AuxK (Matryoshka inherits it)
    buffers: ClassVar[tuple[str, ...]] = ("threshold",)  # set by update_buffers, never by the optimizer

    def activation(self, pre):
        """Inference rule: a JumpReLU with the learnt global threshold (a ReLU before calibration)."""
        theta = jnp.maximum(jax.lax.stop_gradient(self.threshold), 0.0)
        return pre * (pre > theta).astype(pre.dtype)

    def batch_activation(self, pre: Float[Array, "B d_sae"]) -> Float[Array, "B d_sae"]:
        """Training rule: the k*B largest pre-activations of the batch, ReLU'd."""
        return keep_top_k_flat(pre, self.k * pre.shape[0])

    def loss(self, x: Float[Array, "B d_in"], hp: Hyper, dead: Bool[Array, " d_sae"] | None):
        if use_sparse(self.sparse, self.d_sae, self.k, self.d_in):
            return sparse_reconstruction_with_auxk(
                self, x, hp, dead, lambda pre: sp.flat_topk_entries(pre, self.k * pre.shape[0]), None
            )
        return reconstruction_with_auxk(self, x, hp, dead, self.batch_activation)

    def update_buffers(self, f: Float[Array, "B d_sae"]) -> BatchTopKSAE:
        f = jax.lax.stop_gradient(f)
        batch_min = jnp.min(jnp.where(f > 0, f, jnp.inf))
        old = self.threshold
        ema = jnp.where(old < 0, batch_min, self.threshold_decay * old + (1 - self.threshold_decay) * batch_min)
        new = jnp.where(jnp.isfinite(batch_min), ema, old).astype(old.dtype)
        return eqx.tree_at(lambda s: s.threshold, self, new)

    def constrain(self) -> BatchTopKSAE:
        return eqx.tree_at(lambda s: s.W_dec, self, unit_rows(self.W_dec))


def to_jumprelu(sae: BatchTopKSAE, *, bandwidth: float = 0.001) -> JumpReLUSAE:
    """The inference SAE as a JumpReLU with every latent's threshold = the global one (stacks too)."""
    theta = jnp.maximum(sae.threshold, 0.0)
    return JumpReLUSAE(
        W_enc=sae.W_enc,
        b_enc=sae.b_enc,
        W_dec=sae.W_dec,
        b_dec=sae.b_dec,
        apply_b_dec_to_input=sae.apply_b_dec_to_input,
        threshold=jnp.broadcast_to(theta[..., None], sae.b_enc.shape),
        bandwidth=float(bandwidth),
        unit_norm_decoder=True,
        l0_grad_to_pre=True,
    )


def init(
    key: PRNGKeyArray,
    d_in: int,
    d_sae: int,
    *,
    k: int,
    k_aux: int | None = None,
    threshold_decay: float = 0.99,
    data: Float[Array, "n d_in"] | None = None,
    b_dec_init: BDecInit | None = None,
    apply_b_dec_to_input: bool = True,
    sparse: bool | None = None,
) -> BatchTopKSAE:
    """A BatchTopK SAE with unit-norm decoder rows and W_enc = W_dec^T.

    Args:
      k: mean active latents per token (1 <= k <= d_sae); a batch of B keeps k*B activations.
      k_aux: latents used by AuxK (default d_in // 2, at least 1, at most d_sae).
      threshold_decay: EMA decay of the inference threshold (0 <= decay < 1).
      b_dec_init: default geometric median of ``data`` when given, else zeros.
      sparse: train on the active entries only (True), densely (False), or by size (None, see
        ``jsae.sae.auxk.use_sparse``).
    """
    return BatchTopKSAE(
        **init_fields(key, d_in, d_sae, k, k_aux, threshold_decay, data, b_dec_init, apply_b_dec_to_input, sparse)
    )


def init_fields(
    key, d_in, d_sae, k, k_aux, threshold_decay, data, b_dec_init, apply_b_dec_to_input, sparse=None
) -> dict:
    """The constructor arguments shared by BatchTopK and its subclasses (Matryoshka)."""
    k = check_k(k, d_sae)
    if not 0.0 <= threshold_decay < 1.0:
        raise ValueError(f"threshold_decay must be in [0, 1), got {threshold_decay}")
    W_enc, W_dec = init_tied_weights(key, d_in, d_sae, 1.0)
    return dict(
        W_enc=W_enc,
        b_enc=jnp.zeros((d_sae,)),
        W_dec=W_dec,
        b_dec=initial_b_dec(data, d_in, resolve_b_dec_init(b_dec_init, data)),
        apply_b_dec_to_input=apply_b_dec_to_input,
        threshold=jnp.array(-1.0, W_enc.dtype),
        k=k,
        k_aux=resolve_k_aux(k_aux, d_in, d_sae),
        threshold_decay=float(threshold_decay),
        sparse=sparse,
    )
