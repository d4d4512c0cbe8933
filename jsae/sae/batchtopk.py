"""BatchTopK SAE (Bussmann et al. 2024): keep the k*B largest activations of the whole batch.

Training (``loss``), on a batch pre [B, d_sae]:

    f     = ReLU(TopK_{k*B}(flatten(pre)))        (exactly k*B entries kept per batch)
    x_hat = f W_dec + b_dec
    loss  = mean_b ||x - x_hat||^2 + aux_coef * AuxK      (AuxK: see jsae.sae._auxk)

Inference (``encode``) uses one global threshold, a JumpReLU: ``f = pre * (pre > threshold)``. The
threshold is a buffer, not a trained parameter: ``update_buffers(f)`` sets it to an EMA (decay
``threshold_decay``) of the smallest positive activation of each training batch; the first update
initialises it (the stored value is -1 until then, and ``encode`` behaves as a ReLU). It is never used
in ``loss`` and is read through ``stop_gradient`` elsewhere, so its gradient is exactly zero and Adam
leaves it unchanged. ``to_jumprelu`` exports the inference SAE as a ``JumpReLUSAE``.

Hyperparameters (``hp``): ``aux_coef`` (default 1/32, the AuxK weight of Bussmann et al.'s code, from
Gao et al.). There is no sparsity coefficient: k sets the sparsity. Decoder rows have unit norm (init
and ``constrain``). SAELens: saved as "jumprelu" (the inference rule, ``to_jumprelu``); a SAELens
jumprelu file loads as a ``JumpReLUSAE``.

Matryoshka (``jsae.sae.matryoshka``) shares this file's functions (``batch_activation``,
``updated_threshold``, ``threshold_activation``, ``init_fields``, ``to_jumprelu``); neither class
subclasses the other.
"""

from __future__ import annotations

from functools import partial
from typing import ClassVar, Protocol, final

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, PRNGKeyArray

from jsae.sae import _sparse as sp
from jsae.sae import jumprelu
from jsae.sae._auxk import (
    check_k,
    keep_top_k_flat,
    reconstruction_with_auxk,
    resolve_k_aux,
    sparse_reconstruction_with_auxk,
    use_sparse,
)
from jsae.sae._base import SAE, BDecInit, Hyper, init_tied_weights, initial_b_dec, unit_rows_if
from jsae.sae._record import Architecture, SAELensForm
from jsae.sae.jumprelu import JumpReLUSAE
from jsae.sae.topk import resolve_b_dec_init


def threshold_activation(pre: Float[Array, "... d_sae"], threshold: Float[Array, ""]) -> Float[Array, "... d_sae"]:
    """Inference rule: a JumpReLU with one global threshold (a ReLU before calibration, threshold < 0);
    the threshold is read through ``stop_gradient``."""
    theta = jnp.maximum(jax.lax.stop_gradient(threshold), 0.0)
    return pre * (pre > theta).astype(pre.dtype)


def batch_activation(pre: Float[Array, "B d_sae"], k: int) -> Float[Array, "B d_sae"]:
    """Training rule: the k*B largest pre-activations of the batch, ReLU'd."""
    return keep_top_k_flat(pre, k * pre.shape[0])


def batch_entries(pre: Float[Array, "B d_sae"], k: int):
    """The training rule's active entries ``(rows, cols)`` for the sparse path (``jsae.sae._sparse``)."""
    return sp.flat_topk_entries(pre, k * pre.shape[0])


def updated_threshold(threshold: Float[Array, ""], f: Float[Array, "B d_sae"], decay: float) -> Float[Array, ""]:
    """The threshold EMA after a batch: the smallest positive activation of ``f``, averaged with decay
    ``decay`` (the first batch sets it; a batch without any positive activation leaves it)."""
    f = jax.lax.stop_gradient(f)
    batch_min = jnp.min(jnp.where(f > 0, f, jnp.inf))
    ema = jnp.where(threshold < 0, batch_min, decay * threshold + (1 - decay) * batch_min)
    return jnp.where(jnp.isfinite(batch_min), ema, threshold).astype(threshold.dtype)


@final
class BatchTopKSAE(SAE):
    W_enc: Float[Array, "d_in d_sae"]
    b_enc: Float[Array, " d_sae"]
    W_dec: Float[Array, "d_sae d_in"]
    b_dec: Float[Array, " d_in"]
    apply_b_dec_to_input: bool = eqx.field(static=True)
    threshold: Float[Array, ""]
    k: int = eqx.field(static=True)
    k_aux: int = eqx.field(static=True)
    threshold_decay: float = eqx.field(static=True)
    sparse: bool | None = eqx.field(static=True, default=None)  # training path: None = by size (use_sparse)
    uses_dead_latents: ClassVar[bool] = True  # AuxK
    buffers: ClassVar[tuple[str, ...]] = ("threshold",)  # set by update_buffers, never by the optimizer

    def encode(self, x: Float[Array, "... d_in"]) -> Float[Array, "... d_sae"]:
        return threshold_activation(self.pre_acts(x), self.threshold)

    def loss(self, x: Float[Array, "B d_in"], hp: Hyper, dead: Bool[Array, " d_sae"] | None):
        if use_sparse(self.sparse, self.d_sae, self.k, self.d_in):
            entries = partial(batch_entries, k=self.k)
            return sparse_reconstruction_with_auxk(self, x, hp, dead, entries, None, self.k_aux)
        return reconstruction_with_auxk(self, x, hp, dead, lambda pre: batch_activation(pre, self.k), self.k_aux)

    def update_buffers(self, f: Float[Array, "B d_sae"]) -> BatchTopKSAE:
        return eqx.tree_at(lambda s: s.threshold, self, updated_threshold(self.threshold, f, self.threshold_decay))

    def constrain(self) -> BatchTopKSAE:
        return unit_rows_if(self, True)


class GlobalThresholdSAE(Protocol):
    """What ``to_jumprelu`` reads: an SAE with one global inference threshold (BatchTopK, Matryoshka)."""

    W_enc: Float[Array, "d_in d_sae"]
    b_enc: Float[Array, " d_sae"]
    W_dec: Float[Array, "d_sae d_in"]
    b_dec: Float[Array, " d_in"]
    apply_b_dec_to_input: bool
    threshold: Float[Array, ""]


def to_jumprelu(sae: GlobalThresholdSAE, *, bandwidth: float = 0.001) -> JumpReLUSAE:
    """The inference SAE of a BatchTopK or Matryoshka SAE as a JumpReLU with every latent's threshold =
    the global one (stacks too)."""
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
        ``jsae.sae.use_sparse``).
    """
    return BatchTopKSAE(
        **init_fields(key, d_in, d_sae, k, k_aux, threshold_decay, data, b_dec_init, apply_b_dec_to_input, sparse)
    )


def init_fields(
    key, d_in, d_sae, k, k_aux, threshold_decay, data, b_dec_init, apply_b_dec_to_input, sparse=None
) -> dict:
    """The constructor arguments shared by BatchTopK and Matryoshka."""
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


def to_saelens(sae: GlobalThresholdSAE) -> SAELensForm:
    """Saved as its inference rule, a SAELens "jumprelu" (BatchTopK and Matryoshka)."""
    return jumprelu.to_saelens(to_jumprelu(sae))


ARCHITECTURE = Architecture(
    name="batchtopk",
    cls=BatchTopKSAE,
    init=init,
    uses_k=True,
    hyperparams={"aux_coef": 1.0 / 32},
    to_saelens=to_saelens,
)
