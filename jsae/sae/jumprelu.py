"""JumpReLU SAE (Rajamanoharan et al. 2024, Gemma Scope) trained with a direct L0 penalty.

    pre   = (x - b_dec) W_enc + b_enc
    f     = pre * H(pre - threshold)                   (H the Heaviside step, H(0) = 0)
    x_hat = f W_dec + b_dec
    loss  = mean_b ||x - x_hat||^2 + sparsity_coef * mean_b sum_i H(pre_i - threshold_i)

Hyperparameters (``hp``): ``sparsity_coef``, the L0 coefficient (default 0.01, jsae's CLI value for
activations normalised to mean norm sqrt(d_in); Rajamanoharan et al. sweep it to set L0, so choose it
for the L0 you want). SAELens architecture: "jumprelu" (Gemma Scope).

The step has zero gradient almost everywhere, so both discontinuities use straight-through
pseudo-derivatives with the rectangle kernel K(u) = 1[|u| < 1/2] and bandwidth eps (``bandwidth``):

    d JumpReLU / d pre       = H(pre - theta)
    d JumpReLU / d theta     = -(theta / eps) K((pre - theta) / eps)
    d H(pre - theta) / d theta = -(1 / eps) K((pre - theta) / eps)
    d H(pre - theta) / d pre   = +(1 / eps) K((pre - theta) / eps)     (``l0_grad_to_pre=True``)

Parametrisation choices (the fixes for two failure modes of SAELens' JumpReLU):

- The threshold is a plain parameter (not its logarithm): with ``log_threshold`` the gradient is
  multiplied by theta, which vanishes as theta -> 0, and the threshold stops moving. ``constrain``
  clips it to >= 0 after every step.
- The last line above is Anthropic's January 2025 change ("Dictionary learning optimization
  techniques"): the L0 pseudo-gradient also flows into the pre-activations, hence W_enc, b_enc and
  b_dec. Without it the L0 term's gradient reaches only ``threshold``; where it dominates that
  parameter's gradient, Adam divides it by its own running RMS and the update no longer depends on
  ``sparsity_coef`` -- raising the coefficient barely changes L0. Through the shared encoder
  parameters the L0 gradient competes with the reconstruction gradient, so its coefficient matters.
  ``l0_grad_to_pre=False`` gives the original GDM estimator.

Scale: ``bandwidth`` (default 0.001) and the initial threshold (0.001) are in pre-activation units and
assume activations normalised to mean norm sqrt(d_in) (``TrainConfig(normalise_activations=True)``)
with unit-norm decoder rows, as in Gemma Scope; for other scales pass values in proportion.
"""

from __future__ import annotations

from functools import partial
from typing import ClassVar, final

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, PRNGKeyArray

from jsae.sae._base import (
    SAE,
    BDecInit,
    Hyper,
    init_tied_weights,
    initial_b_dec,
    reconstruction_metrics,
    squared_error,
    unit_rows,
)
from jsae.sae._record import BASE_TENSORS, Architecture, SAELensForm, base_tensors, saelens_b_dec_to_input


def rectangle(u: Array) -> Array:
    """The rectangle kernel K(u) = 1[|u| < 1/2]."""
    return (jnp.abs(u) < 0.5).astype(u.dtype)


def _sum_to(g: Array, shape: tuple[int, ...]) -> Array:
    """Sum a broadcast gradient back to ``shape`` (the threshold's)."""
    g = jnp.sum(g, axis=tuple(range(g.ndim - len(shape))))
    return jnp.sum(g, axis=tuple(i for i, n in enumerate(shape) if n == 1 and g.shape[i] != 1), keepdims=True)


@partial(jax.custom_vjp, nondiff_argnums=(2,))
def jumprelu(pre: Array, threshold: Array, bandwidth: float) -> Array:
    """pre * H(pre - threshold) with the straight-through threshold gradient (module docstring)."""
    return pre * (pre > threshold).astype(pre.dtype)


def _jumprelu_fwd(pre, threshold, bandwidth):
    return jumprelu(pre, threshold, bandwidth), (pre, threshold)


def _jumprelu_bwd(bandwidth, res, g):
    pre, threshold = res
    kernel = rectangle((pre - threshold) / bandwidth)
    d_pre = g * (pre > threshold).astype(pre.dtype)
    d_threshold = -(threshold / bandwidth) * kernel * g
    return d_pre, _sum_to(d_threshold, jnp.shape(threshold))


jumprelu.defvjp(_jumprelu_fwd, _jumprelu_bwd)


@partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def step(pre: Array, threshold: Array, bandwidth: float, grad_to_pre: bool = True) -> Array:
    """H(pre - threshold) with straight-through gradients to the threshold (and to pre if asked)."""
    return (pre > threshold).astype(pre.dtype)


def _step_fwd(pre, threshold, bandwidth, grad_to_pre):
    return step(pre, threshold, bandwidth, grad_to_pre), (pre, threshold)


def _step_bwd(bandwidth, grad_to_pre, res, g):
    pre, threshold = res
    dk = g * rectangle((pre - threshold) / bandwidth) / bandwidth
    d_pre = dk if grad_to_pre else jnp.zeros_like(pre)
    return d_pre, _sum_to(-dk, jnp.shape(threshold))


step.defvjp(_step_fwd, _step_bwd)


@final
class JumpReLUSAE(SAE):
    W_enc: Float[Array, "d_in d_sae"]
    b_enc: Float[Array, " d_sae"]
    W_dec: Float[Array, "d_sae d_in"]
    b_dec: Float[Array, " d_in"]
    apply_b_dec_to_input: bool = eqx.field(static=True)
    threshold: Float[Array, " d_sae"]
    bandwidth: float = eqx.field(static=True)
    unit_norm_decoder: bool = eqx.field(static=True)
    l0_grad_to_pre: bool = eqx.field(static=True)
    uses_dead_latents: ClassVar[bool] = False
    buffers: ClassVar[tuple[str, ...]] = ()

    def activation(self, pre: Float[Array, "... d_sae"]) -> Float[Array, "... d_sae"]:
        """``pre * H(pre - threshold)`` with the straight-through threshold gradient."""
        return jumprelu(pre, self.threshold, self.bandwidth)

    def encode(self, x: Float[Array, "... d_in"]) -> Float[Array, "... d_sae"]:
        return self.activation(self.pre_acts(x))

    def loss(self, x: Float[Array, "B d_in"], hp: Hyper, dead: Bool[Array, " d_sae"] | None):
        pre = self.pre_acts(x)
        f = self.activation(pre)
        x_hat = self.decode(f)
        recon = squared_error(x, x_hat)
        l0_penalty = jnp.mean(jnp.sum(step(pre, self.threshold, self.bandwidth, self.l0_grad_to_pre), axis=-1))
        total = recon + hp["sparsity_coef"] * l0_penalty
        metrics = {"loss": total, "recon": recon, "l0_penalty": l0_penalty, **reconstruction_metrics(x, x_hat, f)}
        return total, (metrics, f)

    def update_buffers(self, f: Float[Array, "B d_sae"]) -> JumpReLUSAE:
        return self

    def constrain(self) -> JumpReLUSAE:
        W_dec = self.W_dec
        if self.unit_norm_decoder:
            W_dec = unit_rows(W_dec)
        return eqx.tree_at(lambda s: (s.W_dec, s.threshold), self, (W_dec, jnp.maximum(self.threshold, 0.0)))


def init(
    key: PRNGKeyArray,
    d_in: int,
    d_sae: int,
    *,
    data: Float[Array, "n d_in"] | None = None,
    b_dec_init: BDecInit = "zeros",
    threshold: float = 0.001,
    bandwidth: float = 0.001,
    unit_norm_decoder: bool = True,
    decoder_norm: float = 0.1,
    l0_grad_to_pre: bool = True,
    apply_b_dec_to_input: bool = True,
) -> JumpReLUSAE:
    """A JumpReLU SAE with W_enc = W_dec^T, b_enc = 0 and every threshold at ``threshold``.

    Decoder rows have norm 1 if ``unit_norm_decoder`` (then kept at 1 by ``constrain``), else
    ``decoder_norm``.
    """
    if bandwidth <= 0:
        raise ValueError(f"bandwidth must be > 0, got {bandwidth}")
    if threshold < 0:
        raise ValueError(f"threshold must be >= 0, got {threshold}")
    W_enc, W_dec = init_tied_weights(key, d_in, d_sae, 1.0 if unit_norm_decoder else decoder_norm)
    return JumpReLUSAE(
        W_enc=W_enc,
        b_enc=jnp.zeros((d_sae,)),
        W_dec=W_dec,
        b_dec=initial_b_dec(data, d_in, b_dec_init),
        apply_b_dec_to_input=apply_b_dec_to_input,
        threshold=jnp.full((d_sae,), threshold, dtype=W_enc.dtype),
        bandwidth=float(bandwidth),
        unit_norm_decoder=unit_norm_decoder,
        l0_grad_to_pre=l0_grad_to_pre,
    )


def from_weights(
    W_enc: Float[Array, "... d_in d_sae"],
    b_enc: Float[Array, "... d_sae"],
    W_dec: Float[Array, "... d_sae d_in"],
    b_dec: Float[Array, "... d_in"],
    threshold: Float[Array, "... d_sae"],
    *,
    apply_b_dec_to_input: bool = False,
    bandwidth: float = 0.001,
    unit_norm_decoder: bool = False,
    l0_grad_to_pre: bool = True,
) -> JumpReLUSAE:
    """A JumpReLU SAE from given weights (SAELens / Gemma Scope import; a leading stack axis is fine).

    Gemma Scope encodes ``x W_enc + b_enc`` without subtracting ``b_dec`` (hence the default
    ``apply_b_dec_to_input=False``); published decoders need not have unit-norm rows, so ``constrain``
    leaves them alone unless ``unit_norm_decoder=True``.
    """
    W_enc, b_enc, W_dec, b_dec, threshold = (jnp.asarray(a) for a in (W_enc, b_enc, W_dec, b_dec, threshold))
    d_in, d_sae = W_enc.shape[-2:]
    lead = W_enc.shape[:-2]
    expected = {
        "b_enc": lead + (d_sae,),
        "W_dec": lead + (d_sae, d_in),
        "b_dec": lead + (d_in,),
        "threshold": lead + (d_sae,),
    }
    for name, a in zip(expected, (b_enc, W_dec, b_dec, threshold)):
        if a.shape != expected[name]:
            raise ValueError(f"{name} has shape {a.shape}; expected {expected[name]} for W_enc {W_enc.shape}")
    return JumpReLUSAE(
        W_enc=W_enc,
        b_enc=b_enc,
        W_dec=W_dec,
        b_dec=b_dec,
        apply_b_dec_to_input=apply_b_dec_to_input,
        threshold=threshold,
        bandwidth=float(bandwidth),
        unit_norm_decoder=unit_norm_decoder,
        l0_grad_to_pre=l0_grad_to_pre,
    )


def to_saelens(sae: JumpReLUSAE) -> SAELensForm:
    return SAELensForm("jumprelu", {**base_tensors(sae), "threshold": sae.threshold}, {})


def from_saelens(architecture: str, t: dict[str, Array], cfg: dict) -> JumpReLUSAE:
    """A SAELens "jumprelu" SAE (Gemma Scope); thresholds must be >= 0."""
    if bool(jnp.any(t["threshold"] < 0)):
        raise ValueError(
            "negative JumpReLU thresholds; SAELens then applies a ReLU first, jsae's JumpReLU assumes threshold >= 0"
        )
    return from_weights(
        t["W_enc"], t["b_enc"], t["W_dec"], t["b_dec"], t["threshold"], apply_b_dec_to_input=saelens_b_dec_to_input(cfg)
    )


ARCHITECTURE = Architecture(
    name="jumprelu",
    cls=JumpReLUSAE,
    init=init,
    uses_k=False,
    hyperparams={"sparsity_coef": 0.01},
    sparsity="L0 coefficient",
    saelens_reads={"jumprelu": {**BASE_TENSORS, "threshold": ("d_sae",)}},
    to_saelens=to_saelens,
    from_saelens=from_saelens,
)
