"""ReLU SAE with an L1 penalty weighted by decoder row norms (Anthropic, April 2024 update).

    f     = ReLU((x - b_dec) W_enc + b_enc)
    x_hat = f W_dec + b_dec
    loss  = mean_b ||x - x_hat||^2 + sparsity_coef * mean_b sum_i f_i ||W_dec[i]||

With ``unit_norm_decoder=True`` the decoder rows are projected to unit norm after every step and the
L1 term is then the plain sum of activations (the classic SAE of Bricken et al. 2023).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, PRNGKeyArray

from jsae.sae.base import (
    SAE,
    BDecInit,
    Hyper,
    decoder_norms,
    init_tied_weights,
    initial_b_dec,
    reconstruction_metrics,
    squared_error,
    unit_rows,
)


class ReLUSAE(SAE):
    unit_norm_decoder: bool = eqx.field(static=True)

    def activation(self, pre):
        return jax.nn.relu(pre)

    def loss(self, x: Float[Array, "B d_in"], hp: Hyper, dead: Bool[Array, " d_sae"] | None):
        f = self.encode(x)
        x_hat = self.decode(f)
        recon = squared_error(x, x_hat)
        l1 = jnp.mean(f @ decoder_norms(self.W_dec))
        total = recon + hp["sparsity_coef"] * l1
        return total, ({"loss": total, "recon": recon, "l1": l1, **reconstruction_metrics(x, x_hat, f)}, f)

    def constrain(self) -> ReLUSAE:
        if not self.unit_norm_decoder:
            return self
        return eqx.tree_at(lambda s: s.W_dec, self, unit_rows(self.W_dec))


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
