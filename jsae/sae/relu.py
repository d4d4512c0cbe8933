"""ReLU SAE with an L1 penalty weighted by decoder row norms (Anthropic, April 2024 update).

    f     = ReLU((x - b_dec) W_enc + b_enc)
    x_hat = f W_dec + b_dec
    loss  = mean_b ||x - x_hat||^2 + sparsity_coef * mean_b sum_i f_i ||W_dec[i]||

With ``unit_norm_decoder=True`` the decoder rows are projected to unit norm after every step and the
L1 term is then the plain sum of activations (the classic SAE of Bricken et al. 2023).

Hyperparameters (``hp``): ``sparsity_coef`` (default 0.1, jsae's CLI value for activations normalised
to mean norm sqrt(d_in); Anthropic's update uses 5 with that normalisation and a longer run, and the
right value depends on the data scale and the L0 wanted: sweep it). SAELens architecture: "standard".
"""

from __future__ import annotations

from typing import ClassVar, final

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, PRNGKeyArray

from jsae.sae._base import (
    SAE,
    BDecInit,
    Hyper,
    decoder_norms,
    init_tied_weights,
    initial_b_dec,
    reconstruction_metrics,
    squared_error,
    unit_rows_if,
)
from jsae.sae._record import BASE_TENSORS, Architecture, SAELensForm, base_tensors, saelens_b_dec_to_input


@final
class ReLUSAE(SAE):
    W_enc: Float[Array, "d_in d_sae"]
    b_enc: Float[Array, " d_sae"]
    W_dec: Float[Array, "d_sae d_in"]
    b_dec: Float[Array, " d_in"]
    apply_b_dec_to_input: bool = eqx.field(static=True)
    unit_norm_decoder: bool = eqx.field(static=True)
    uses_dead_latents: ClassVar[bool] = False
    buffers: ClassVar[tuple[str, ...]] = ()

    def encode(self, x: Float[Array, "... d_in"]) -> Float[Array, "... d_sae"]:
        return jax.nn.relu(self.pre_acts(x))

    def loss(self, x: Float[Array, "B d_in"], hp: Hyper, dead: Bool[Array, " d_sae"] | None):
        f = self.encode(x)
        x_hat = self.decode(f)
        recon = squared_error(x, x_hat)
        l1 = jnp.mean(f @ decoder_norms(self.W_dec))
        total = recon + hp["sparsity_coef"] * l1
        return total, ({"loss": total, "recon": recon, "l1": l1, **reconstruction_metrics(x, x_hat, f)}, f)

    def update_buffers(self, f: Float[Array, "B d_sae"]) -> ReLUSAE:
        return self

    def constrain(self) -> ReLUSAE:
        return unit_rows_if(self, self.unit_norm_decoder)


def init(
    key: PRNGKeyArray,
    d_in: int,
    d_sae: int,
    *,
    data: Float[Array, "n d_in"] | None = None,
    b_dec_init: BDecInit = "zeros",
    decoder_norm: float = 0.1,
    unit_norm_decoder: bool = False,
    apply_b_dec_to_input: bool = True,
) -> ReLUSAE:
    """A ReLU SAE with W_enc = W_dec^T and decoder rows of norm ``decoder_norm`` (1 if unit-norm)."""
    W_enc, W_dec = init_tied_weights(key, d_in, d_sae, 1.0 if unit_norm_decoder else decoder_norm)
    return ReLUSAE(
        W_enc=W_enc,
        b_enc=jnp.zeros((d_sae,)),
        W_dec=W_dec,
        b_dec=initial_b_dec(data, d_in, b_dec_init),
        apply_b_dec_to_input=apply_b_dec_to_input,
        unit_norm_decoder=unit_norm_decoder,
    )


def to_saelens(sae: ReLUSAE) -> SAELensForm:
    return SAELensForm("standard", base_tensors(sae), {})


def from_saelens(architecture: str, t: dict[str, Array], cfg: dict) -> ReLUSAE:
    """A SAELens "standard" SAE (published decoders need not have unit-norm rows: none is imposed)."""
    return ReLUSAE(
        W_enc=t["W_enc"],
        b_enc=t["b_enc"],
        W_dec=t["W_dec"],
        b_dec=t["b_dec"],
        apply_b_dec_to_input=saelens_b_dec_to_input(cfg),
        unit_norm_decoder=False,
    )


ARCHITECTURE = Architecture(
    name="relu",
    cls=ReLUSAE,
    init=init,
    uses_k=False,
    hyperparams={"sparsity_coef": 0.1},
    sparsity="L1 coefficient (activations weighted by decoder row norms)",
    saelens_reads={"standard": BASE_TENSORS},
    to_saelens=to_saelens,
    from_saelens=from_saelens,
)
