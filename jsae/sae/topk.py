"""TopK SAE (Gao et al. 2024): keep the k largest pre-activations of each token.

    f     = ReLU(TopK((x - b_dec) W_enc + b_enc))    (exactly k entries kept per token)
    x_hat = f W_dec + b_dec
    loss  = mean_b ||x - x_hat||^2 + aux_coef * AuxK      (AuxK: see jsae.sae._auxk)

Hyperparameters (``hp``): ``aux_coef`` (default 1/32, Gao et al.'s alpha). There is no sparsity
coefficient: k sets the sparsity. Decoder rows have unit norm (init and ``constrain``). The AuxK term
is normalised by the residual's variance as in the paper while the reconstruction term is the plain
squared error of ``base.squared_error``, so the balance between them depends on the data scale (train on normalised
activations, ``TrainConfig(normalise_activations=True)``, to keep the paper's balance meaningful).

Training can run sparse (``sparse=True``; ``None`` picks by ``auxk.use_sparse``): only the k active
latents' decoder rows are decoded and only their encoder columns and decoder rows get gradients
(``jsae.sae._sparse``). Same values as the dense loss up to float rounding; ``sparse=False`` keeps
the dense products.
"""

from __future__ import annotations

from functools import partial
from typing import ClassVar, final

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, PRNGKeyArray

from jsae.sae import _sparse as sp
from jsae.sae._auxk import (
    check_k,
    keep_top_k,
    reconstruction_with_auxk,
    resolve_k_aux,
    sparse_reconstruction_with_auxk,
    use_sparse,
)
from jsae.sae._base import SAE, BDecInit, Hyper, init_tied_weights, initial_b_dec, unit_rows_if
from jsae.sae._record import BASE_TENSORS, Architecture, SAELensForm, base_tensors, saelens_b_dec_to_input


@final
class TopKSAE(SAE):
    W_enc: Float[Array, "d_in d_sae"]
    b_enc: Float[Array, " d_sae"]
    W_dec: Float[Array, "d_sae d_in"]
    b_dec: Float[Array, " d_in"]
    apply_b_dec_to_input: bool = eqx.field(static=True)
    k: int = eqx.field(static=True)
    k_aux: int = eqx.field(static=True)
    sparse: bool | None = eqx.field(static=True, default=None)  # training path: None = by size (use_sparse)
    uses_dead_latents: ClassVar[bool] = True  # AuxK
    buffers: ClassVar[tuple[str, ...]] = ()

    def encode(self, x: Float[Array, "... d_in"]) -> Float[Array, "... d_sae"]:
        return keep_top_k(self.pre_acts(x), self.k)

    def loss(self, x: Float[Array, "B d_in"], hp: Hyper, dead: Bool[Array, " d_sae"] | None):
        if use_sparse(self.sparse, self.d_sae, self.k, self.d_in):
            entries = partial(sp.topk_entries, k=self.k)
            return sparse_reconstruction_with_auxk(self, x, hp, dead, entries, self.k, self.k_aux)
        return reconstruction_with_auxk(self, x, hp, dead, lambda pre: keep_top_k(pre, self.k), self.k_aux)

    def update_buffers(self, f: Float[Array, "B d_sae"]) -> TopKSAE:
        return self

    def constrain(self) -> TopKSAE:
        return unit_rows_if(self, True)


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
        ``jsae.sae.use_sparse``).
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


def to_saelens(sae: TopKSAE) -> SAELensForm:
    return SAELensForm("topk", base_tensors(sae), {"k": sae.k, "rescale_acts_by_decoder_norm": False})


def from_saelens(architecture: str, t: dict[str, Array], cfg: dict) -> TopKSAE:
    """A SAELens "topk" SAE (cfg ``k``). ``rescale_acts_by_decoder_norm`` is folded into the weights:
    W_enc, b_enc times the decoder row norms, W_dec divided by them (same encodings and reconstructions)."""
    k, d_in, d_sae = cfg.get("k"), int(cfg["d_in"]), int(cfg["d_sae"])
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    if k > d_sae:
        raise ValueError(f"k={k} exceeds d_sae={d_sae}")
    W_enc, b_enc, W_dec = t["W_enc"], t["b_enc"], t["W_dec"]
    if cfg.get("rescale_acts_by_decoder_norm", False):  # encode scales pre by |W_dec|, decode divides
        norms = jnp.linalg.norm(W_dec, axis=-1)
        W_enc, b_enc, W_dec = W_enc * norms, b_enc * norms, W_dec / norms[:, None]
    return TopKSAE(
        W_enc=W_enc,
        b_enc=b_enc,
        W_dec=W_dec,
        b_dec=t["b_dec"],
        apply_b_dec_to_input=saelens_b_dec_to_input(cfg),
        k=k,
        k_aux=resolve_k_aux(None, d_in, d_sae),
    )


ARCHITECTURE = Architecture(
    name="topk",
    cls=TopKSAE,
    init=init,
    uses_k=True,
    hyperparams={"aux_coef": 1.0 / 32},
    saelens_reads={"topk": BASE_TENSORS},
    to_saelens=to_saelens,
    from_saelens=from_saelens,
)
