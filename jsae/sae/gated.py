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
gate path. Hyperparameters (``hp``): ``sparsity_coef`` (default 0.1, jsae's CLI value for activations
normalised to mean norm sqrt(d_in); the paper sweeps it) and ``aux_coef`` (default 1: the paper adds
the auxiliary reconstruction loss unweighted). SAELens architecture: "gated" (``b_gate`` = ``b_enc``).

``fold_scale`` needs nothing beyond the base rule: scaling W_enc by c scales W_mag = W_enc exp(r_mag)
by c too, so both pre-activations, hence f, are unchanged.
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
    centered_matmul,
    decoder_norms,
    init_tied_weights,
    initial_b_dec,
    matmul,
    reconstruction_metrics,
    squared_error,
    unit_rows_if,
)
from jsae.sae._record import Architecture, SAELensForm, saelens_b_dec_to_input


@final
class GatedSAE(SAE):
    W_enc: Float[Array, "d_in d_sae"]
    b_enc: Float[Array, " d_sae"]
    W_dec: Float[Array, "d_sae d_in"]
    b_dec: Float[Array, " d_in"]
    apply_b_dec_to_input: bool = eqx.field(static=True)
    r_mag: Float[Array, " d_sae"]
    b_mag: Float[Array, " d_sae"]
    unit_norm_decoder: bool = eqx.field(static=True)
    uses_dead_latents: ClassVar[bool] = False
    buffers: ClassVar[tuple[str, ...]] = ()

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
        total = recon + hp["sparsity_coef"] * sparsity + hp["aux_coef"] * aux
        metrics = {
            "loss": total,
            "recon": recon,
            "sparsity": sparsity,
            "aux": aux,
            **reconstruction_metrics(x, x_hat, f),
        }
        return total, (metrics, f)

    def update_buffers(self, f: Float[Array, "B d_sae"]) -> GatedSAE:
        return self

    def constrain(self) -> GatedSAE:
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


def to_saelens(sae: GatedSAE) -> SAELensForm:
    tensors = {"W_enc": sae.W_enc, "b_gate": sae.b_enc, "b_mag": sae.b_mag, "r_mag": sae.r_mag}
    return SAELensForm("gated", {**tensors, "W_dec": sae.W_dec, "b_dec": sae.b_dec}, {})


def from_saelens(architecture: str, t: dict[str, Array], cfg: dict) -> GatedSAE:
    """A SAELens "gated" SAE (``b_gate`` is jsae's ``b_enc``)."""
    return GatedSAE(
        W_enc=t["W_enc"],
        b_enc=t["b_gate"],
        W_dec=t["W_dec"],
        b_dec=t["b_dec"],
        apply_b_dec_to_input=saelens_b_dec_to_input(cfg),
        r_mag=t["r_mag"],
        b_mag=t["b_mag"],
        unit_norm_decoder=False,
    )


ARCHITECTURE = Architecture(
    name="gated",
    cls=GatedSAE,
    init=init,
    uses_k=False,
    hyperparams={"sparsity_coef": 0.1, "aux_coef": 1.0},
    sparsity="L1 coefficient of the gate (weighted by decoder row norms)",
    saelens_reads={
        "gated": {
            "W_enc": ("d_in", "d_sae"),
            "b_gate": ("d_sae",),
            "b_mag": ("d_sae",),
            "r_mag": ("d_sae",),
            "W_dec": ("d_sae", "d_in"),
            "b_dec": ("d_in",),
        }
    },
    to_saelens=to_saelens,
    from_saelens=from_saelens,
)
