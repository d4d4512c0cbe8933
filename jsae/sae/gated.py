"""Gated SAE (Rajamanoharan et al. 2024a): a gate decides which latents fire, a magnitude path how much.

    x_c      = x - b_dec
    pi_gate  = x_c W_enc + b_enc                       (W_gate = W_enc, b_gate = b_enc)
    pi_mag   = x_c (W_enc * exp(r_mag)) + b_mag        (W_mag shares W_enc's directions)
    f        = 1[pi_gate > 0] * ReLU(pi_mag)
    x_hat    = f W_dec + b_dec
    loss     = mean_b ||x - x_hat||^2
             + sparsity_coef * mean_b sum_i ReLU(pi_gate_i) ||W_dec[i]||
             + aux_coef * mean_b ||x - (ReLU(pi_gate) sg(W_dec) + sg(b_dec))||^2

(sg = stop_gradient.) The gate's step passes no gradient; the sparsity and auxiliary terms train the
gate path. Hyperparameters (``hp``): ``sparsity_coef`` (required), ``aux_coef`` (the paper uses 1,
the default here; note ``TrainConfig.aux_coef`` defaults to AuxK's 1/32 -- pass 1.0 for Gated SAEs).

``fold_scale`` needs nothing beyond the base rule: scaling W_enc by c scales W_mag = W_enc exp(r_mag)
by c too, so both pre-activations, hence f, are unchanged.
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
    centered_matmul,
    decoder_norms,
    init_tied_weights,
    initial_b_dec,
    matmul,
    reconstruction_metrics,
    squared_error,
    unit_rows,
)


class GatedSAE(SAE):
    r_mag: Float[Array, " d_sae"]
    b_mag: Float[Array, " d_sae"]
    unit_norm_decoder: bool = eqx.field(static=True)

    def gate_and_magnitude(
        self, x: Float[Array, "... d_in"]
    ) -> tuple[Float[Array, "... d_sae"], Float[Array, "... d_sae"]]:
        """The two pre-activations (pi_gate, pi_mag)."""
        W_mag = (self.W_enc * jnp.exp(self.r_mag)).astype(self.W_enc.dtype)  # the compute dtype under mixed precision
        if self.apply_b_dec_to_input:
            return (
                centered_matmul(x, self.b_dec, self.W_enc) + self.b_enc,
                centered_matmul(x, self.b_dec, W_mag) + self.b_mag,
            )
        return matmul(x, self.W_enc) + self.b_enc, matmul(x, W_mag) + self.b_mag

    def activation(self, pre):
        raise TypeError("a Gated SAE's activation needs both pre-activations: use encode(x)")

    @staticmethod
    def gated_activation(pi_gate, pi_mag):
        return (pi_gate > 0).astype(pi_mag.dtype) * jax.nn.relu(pi_mag)

    def encode(self, x: Float[Array, "... d_in"]) -> Float[Array, "... d_sae"]:
        return self.gated_activation(*self.gate_and_magnitude(x))

    def loss(self, x: Float[Array, "B d_in"], hp: Hyper, dead: Bool[Array, " d_sae"] | None):
        pi_gate, pi_mag = self.gate_and_magnitude(x)
        f = self.gated_activation(pi_gate, pi_mag)
        x_hat = self.decode(f)
        recon = squared_error(x, x_hat)
        gate = jax.nn.relu(pi_gate)
        sparsity = jnp.mean(gate @ decoder_norms(self.W_dec))
        aux = squared_error(x, matmul(gate, jax.lax.stop_gradient(self.W_dec)) + jax.lax.stop_gradient(self.b_dec))
        total = recon + hp["sparsity_coef"] * sparsity + hp.get("aux_coef", 1.0) * aux
        metrics = {
            "loss": total,
            "recon": recon,
            "sparsity": sparsity,
            "aux": aux,
            **reconstruction_metrics(x, x_hat, f),
        }
        return total, (metrics, f)

    def constrain(self) -> GatedSAE:
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
) -> GatedSAE:
    """A Gated SAE with W_enc = W_dec^T, r_mag = b_mag = b_enc = 0 (so pi_mag = pi_gate at init)."""
    W_enc, W_dec = init_tied_weights(key, d_in, d_sae, 1.0 if unit_norm_decoder else decoder_norm)
    return GatedSAE(
        W_enc=W_enc,
        b_enc=jnp.zeros((d_sae,)),
        W_dec=W_dec,
        b_dec=initial_b_dec(data, d_in, b_dec_init),
        apply_b_dec_to_input=apply_b_dec_to_input,
        r_mag=jnp.zeros((d_sae,)),
        b_mag=jnp.zeros((d_sae,)),
        unit_norm_decoder=unit_norm_decoder,
    )
