"""The protocol every SAE architecture follows.

An SAE is an equinox module: a pytree of arrays (W_enc, b_enc, W_dec, b_dec, and whatever an
architecture adds) with static configuration, and pure methods:

- ``encode(x)``: ``[..., d_in] -> [..., d_sae]`` latent activations.
- ``decode(f)``: ``[..., d_sae] -> [..., d_in]`` reconstruction.
- ``loss(x, hp, dead)``: ``x [B, d_in]``, ``hp`` a dict of per-SAE scalar hyperparameters,
  ``dead [d_sae]`` bool mask of latents that have not fired for a while, or None when no latent of
  the stack is dead (architectures then skip dead-latent losses such as AuxK) ->
  ``(scalar, (metrics, f))`` with ``metrics`` a dict of scalars and ``f [B, d_sae]`` the
  latent activations used in training (the trainer derives firing statistics from them).
- ``update_buffers(f)``: non-gradient state after a step (e.g. BatchTopK's threshold EMA); the
  fields it owns are named in the class variable ``buffers``.
- ``constrain()``: projection after an optimizer step (e.g. unit-norm decoder rows).
- ``fold_scale(c)``: an SAE trained on ``c * x`` turned into one that reads and writes raw ``x``.

``encode``, ``loss``, ``update_buffers`` and ``constrain`` are abstract; each architecture file also
exports its record (``jsae.sae.Architecture``) as ``ARCHITECTURE``.

Conventions: ``W_enc [d_in, d_sae]``, ``W_dec [d_sae, d_in]`` (row i is latent i's direction).
The reconstruction loss is the squared error summed over ``d_in`` and averaged over the batch.
A stack of N SAEs is the same module with a leading axis ``[N, ...]`` on every array.
"""

import abc
from typing import TYPE_CHECKING, Literal, Self, TypeVar

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, PRNGKeyArray

# equinox's abstract class variables, spelled as equinox documents for type checkers (pyright #4965).
# This file has no ``from __future__ import annotations``: equinox reads the abstract annotations of
# ``SAE`` at class creation and does not support them as strings.
if TYPE_CHECKING:
    from typing import ClassVar as AbstractClassVar
else:
    from equinox import AbstractClassVar

Hyper = dict[str, Float[Array, ""]]
"""Per-SAE scalar hyperparameters, e.g. ``{"sparsity_coef": 5.0, "aux_coef": 1/32}``."""

Metrics = dict[str, Float[Array, ""]]


class SAE(eqx.Module):
    """The SAE protocol (abstract): every architecture is a final subclass that declares these fields
    (in this order, before its own) and implements the abstract methods; the concrete methods here are
    never overridden (equinox's abstract/final pattern). Architectures share code through functions
    (``jsae.sae._auxk``, ``jsae.sae.batchtopk``), not through subclassing."""

    W_enc: eqx.AbstractVar[Float[Array, "d_in d_sae"]]
    b_enc: eqx.AbstractVar[Float[Array, " d_sae"]]
    W_dec: eqx.AbstractVar[Float[Array, "d_sae d_in"]]
    b_dec: eqx.AbstractVar[Float[Array, " d_in"]]
    apply_b_dec_to_input: eqx.AbstractVar[bool]  # a static field: pre-activations read x - b_dec
    # uses_dead_latents: True when ``loss`` reads the ``dead`` mask (AuxK); the trainer then tracks which
    # latents are dead inside the step, and skips that work for architectures that never look at it.
    # buffers: array fields set by ``update_buffers`` and not by the optimizer: the trainer zeroes their
    # updates, so no optimizer (weight decay, say) moves them.
    uses_dead_latents: AbstractClassVar[bool]
    buffers: AbstractClassVar[tuple[str, ...]]

    @property
    def d_in(self) -> int:
        return self.W_enc.shape[-2]

    @property
    def d_sae(self) -> int:
        return self.W_enc.shape[-1]

    def pre_acts(self, x: Float[Array, "... d_in"]) -> Float[Array, "... d_sae"]:
        """``(x - b_dec) W_enc + b_enc`` (``x W_enc + b_enc`` without ``apply_b_dec_to_input``)."""
        if self.apply_b_dec_to_input:
            return centered_matmul(x, self.b_dec, self.W_enc) + self.b_enc
        return matmul(x, self.W_enc) + self.b_enc

    @abc.abstractmethod
    def encode(self, x: Float[Array, "... d_in"]) -> Float[Array, "... d_sae"]:
        """Latent activations (the inference rule)."""

    def decode(self, f: Float[Array, "... d_sae"]) -> Float[Array, "... d_in"]:
        return matmul(f, self.W_dec) + self.b_dec

    def __call__(self, x: Float[Array, "... d_in"]) -> Float[Array, "... d_in"]:
        return self.decode(self.encode(x))

    @abc.abstractmethod
    def loss(
        self, x: Float[Array, "B d_in"], hp: Hyper, dead: Bool[Array, " d_sae"] | None
    ) -> tuple[Float[Array, ""], tuple[Metrics, Float[Array, "B d_sae"]]]:
        """The training objective (module docstring); reads its hyperparameters as ``hp[name]``."""

    @abc.abstractmethod
    def update_buffers(self, f: Float[Array, "B d_sae"]) -> Self:
        """Non-gradient state after a step (``return self`` when there is none)."""

    @abc.abstractmethod
    def constrain(self) -> Self:
        """Projection after an optimizer step (``return self`` when there is none)."""

    def fold_scale(self, c: Float[Array, ""]) -> Self:
        """Return the SAE that, on raw ``x``, does what this one does on ``c * x`` (outputs unscaled)."""
        return eqx.tree_at(
            lambda s: (s.W_enc, s.W_dec, s.b_dec), self, (self.W_enc * c, self.W_dec / c, self.b_dec / c)
        )


S = TypeVar("S", bound=SAE)


def unit_rows_if(sae: S, unit_norm_decoder: bool) -> S:
    """``sae`` with unit-norm decoder rows when ``unit_norm_decoder`` (the usual ``constrain``)."""
    if not unit_norm_decoder:
        return sae
    return eqx.tree_at(lambda s: s.W_dec, sae, unit_rows(sae.W_dec))


def matmul(a: Float[Array, "... n"], W: Float[Array, "n p"]) -> Float[Array, "... p"]:
    """``a @ W`` computed in ``W``'s dtype, accumulated and returned in at least float32.

    Mixed precision is a matter of the weights' dtype: the trainer hands the loss an SAE whose weight
    matrices are cast to the compute dtype (bfloat16, say) while the float32 originals stay the
    optimizer's, so every product of the loss runs in bfloat16 and everything around it (biases,
    errors, sums) in float32. With float32 weights this is the plain product."""
    if jnp.finfo(W.dtype).bits >= 32:
        return a @ W
    return _low_precision_matmul(a.astype(W.dtype), W)


@jax.custom_vjp
def _low_precision_matmul(a: Float[Array, "... n"], W: Float[Array, "n p"]) -> Float[Array, "... p"]:
    """``a @ W`` for low-precision ``a`` and ``W`` (same dtype), accumulated in float32; the backward
    products take their inputs in that dtype too. (Autodiff of the plain product would pair the float32
    cotangent with the low-precision operand, so both backward matmuls would run in float32.)"""
    return jnp.matmul(a, W, preferred_element_type=jnp.float32)


def _low_precision_matmul_fwd(a, W):
    return _low_precision_matmul(a, W), (a, W)


def _low_precision_matmul_bwd(res, g):
    a, W = res
    g = g.astype(W.dtype)
    da = jnp.matmul(g, W.T, preferred_element_type=jnp.float32)
    dW = jnp.matmul(a.reshape(-1, a.shape[-1]).T, g.reshape(-1, g.shape[-1]), preferred_element_type=jnp.float32)
    return da.astype(a.dtype), dW.astype(W.dtype)


_low_precision_matmul.defvjp(_low_precision_matmul_fwd, _low_precision_matmul_bwd)


def centered_matmul(
    x: Float[Array, "... d_in"], b: Float[Array, " d_in"], W: Float[Array, "d_in d_out"]
) -> Float[Array, "... d_out"]:
    """``(x - b) @ W``, written so that the gradient w.r.t. ``b`` costs a vector-matrix product.

    Plain autodiff of ``(x - b) @ W`` forms the full cotangent of ``x - b`` (``g @ W.T``, a matmul as
    large as the forward one) only to sum it over the rows. Here ``b`` enters the product as a
    constant and again through ``(b_const - b) @ W``, which adds exact zeros in the forward pass and
    gives ``-(sum_rows g) @ W.T`` in the backward pass: same values, same gradients (for x, b and W),
    one matmul fewer per training step.
    """
    b_const = jax.lax.stop_gradient(b)
    return matmul(x - b_const, W) + matmul(b_const - b, W)


def decoder_norms(W_dec: Float[Array, "d_sae d_in"]) -> Float[Array, " d_sae"]:
    W_dec = W_dec.astype(jnp.promote_types(W_dec.dtype, jnp.float32))
    return jnp.sqrt(jnp.sum(W_dec**2, axis=-1))


def unit_rows(W_dec: Float[Array, "d_sae d_in"]) -> Float[Array, "d_sae d_in"]:
    """Decoder rows scaled to unit norm (all-zero rows stay zero)."""
    return W_dec / jnp.maximum(decoder_norms(W_dec), jnp.finfo(W_dec.dtype).tiny)[:, None]


def squared_error(x: Float[Array, "B d"], x_hat: Float[Array, "B d"]) -> Float[Array, ""]:
    """Squared error summed over features, averaged over the batch."""
    return jnp.mean(jnp.sum((x_hat - x) ** 2, axis=-1))


def reconstruction_metrics(x: Float[Array, "B d"], x_hat: Float[Array, "B d"], f: Float[Array, "B m"]) -> Metrics:
    """L0 (mean active latents per token), per-element MSE and explained variance of a batch."""
    err = jnp.sum((x_hat - x) ** 2)
    total = jnp.sum((x - jnp.mean(x, axis=0)) ** 2)
    return {
        "l0": jnp.mean(jnp.sum(f != 0, axis=-1).astype(x.dtype)),
        "mse": err / x.size,
        "explained_variance": 1.0 - err / jnp.maximum(total, jnp.finfo(x.dtype).tiny),
    }


def geometric_median(x: Float[Array, "n d"], iters: int = 50, eps: float = 1e-6) -> Float[Array, " d"]:
    """Weiszfeld's algorithm: the point minimising the summed Euclidean distance to the rows of x."""

    def step(y, _):
        w = 1.0 / jnp.maximum(jnp.linalg.norm(x - y, axis=-1), eps)
        return (w @ x) / jnp.sum(w), None

    y, _ = jax.lax.scan(step, jnp.mean(x, axis=0), None, length=iters)
    return y


BDecInit = Literal["zeros", "mean", "geometric_median"]


def initial_b_dec(data: Float[Array, "n d"] | None, d_in: int, how: BDecInit) -> Float[Array, " d_in"]:
    if how == "zeros" or data is None:
        if how != "zeros":
            raise ValueError(f"b_dec_init={how!r} needs a data sample: pass data=[n, d_in] activations")
        return jnp.zeros((d_in,))
    if data.ndim != 2 or data.shape[-1] != d_in:
        raise ValueError(f"data sample for b_dec has shape {tuple(data.shape)}; expected [n, {d_in}]")
    if how == "mean":
        return jnp.mean(data, axis=0)
    if how == "geometric_median":
        return geometric_median(data)
    raise ValueError(f"unknown b_dec_init {how!r}; use 'zeros', 'mean' or 'geometric_median'")


def init_tied_weights(
    key: PRNGKeyArray, d_in: int, d_sae: int, decoder_norm: float
) -> tuple[Float[Array, "d_in d_sae"], Float[Array, "d_sae d_in"]]:
    """Decoder rows: random directions with norm ``decoder_norm``; encoder = decoder transposed."""
    if d_in < 1 or d_sae < 1:
        raise ValueError(f"d_in and d_sae must be positive, got d_in={d_in}, d_sae={d_sae}")
    W_dec = jax.random.normal(key, (d_sae, d_in))
    W_dec = decoder_norm * W_dec / decoder_norms(W_dec)[:, None]
    return W_dec.T, W_dec


def normalisation_scale(x: Float[Array, "n d"]) -> Float[Array, ""]:
    """The factor c with mean ||c x|| = sqrt(d): train on c*x, then ``sae.fold_scale(c)``."""
    return jnp.sqrt(x.shape[-1]) / jnp.mean(jnp.linalg.norm(x, axis=-1))
