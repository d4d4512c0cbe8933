"""The toy model of feature absorption with an exact answer (Chanin et al. 2024, section 3).

Features are orthonormal directions in ``R^d_in`` (default 50): one parent and ``n_children``
children. The parent fires with probability ``p_parent`` (0.25). Each child fires with marginal
probability ``p_child`` (0.05):

- ``hierarchical=True``: a child fires only when the parent fires, so given the parent each child fires
  with probability ``p_child / p_parent`` (0.2), independently of the other children;
- ``hierarchical=False`` (the control): every child fires independently of the parent with
  probability ``p_child``.

A token's activation is ``x = sum_j a_j * feature_j`` with ``a_j`` uniform in
``magnitude * [1 - magnitude_spread, 1 + magnitude_spread]`` for active features (0 otherwise). A
spread > 0 keeps SAEs from the degenerate solution "b_dec = parent, one latent = minus the parent
firing when the parent is absent", which constant magnitudes allow.

Absorption is measured from the known features, per SAE of a stack (all [N]):

- ``parent_encoder_cosine``: cosine between the parent latent's encoder column, projected onto the
  span of the features (components outside it never see data and keep their random initial values),
  and the parent feature. Without absorption it is ~1; when children absorb the parent, the parent latent's encoder
  gains negative components along the children (it must stay off when a child fires), so it drops.
- ``parent_in_child_decoder``: mean over children of ``cos(W_dec[child latent], parent)``. Without
  absorption ~0; a fully absorbing child latent writes ``parent + child``, i.e. ~1/sqrt(2) = 0.71.
- ``absorption_rate``: among tokens where the parent and at least one child fire, the fraction where
  the parent latent does not fire (activation <= ``active_eps``).
- ``absorption_score``: ``max(parent_in_child_decoder, 1 - parent_encoder_cosine)`` clipped to
  [0, 1], one number for plots and tests.

The parent latent is the latent whose decoder row has the largest |cosine| with the parent feature.
Its sign matters: some SAEs (Matryoshka/BatchTopK on constant magnitudes especially) put the parent
into ``b_dec`` and learn a latent ``-parent`` that fires when the parent is *absent*; for such a
latent (``parent_sign = -1``) the encoder cosine is sign-flipped and ``absorption_rate`` counts the
parent+child tokens where it fires (the representation then claims the parent is absent). Each
child's latent is, among the other latents, the one whose decoder row has the largest cosine with
that child.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, PRNGKeyArray

from jsae.sae import SAE, registry
from jsae.sae.registry import init_stack
from jsae.train import TrainConfig, TrainResult, train


@dataclass(frozen=True)
class ToyHierarchy:
    """The toy data: one parent, ``n_children`` children, orthonormal in ``R^d_in``."""

    d_in: int = 50
    n_children: int = 3
    p_parent: float = 0.25
    p_child: float = 0.05
    hierarchical: bool = True
    magnitude: float = 1.0
    magnitude_spread: float = 0.0

    def __post_init__(self):
        if self.d_in < self.n_features:
            raise ValueError(f"d_in={self.d_in} cannot hold {self.n_features} orthogonal features")
        if self.n_children < 1:
            raise ValueError(f"n_children must be >= 1, got {self.n_children}")
        if not 0 < self.p_parent <= 1 or not 0 < self.p_child <= 1:
            raise ValueError(f"probabilities must be in (0, 1]: p_parent={self.p_parent}, p_child={self.p_child}")
        if not 0.0 <= self.magnitude_spread < 1.0:
            raise ValueError(f"magnitude_spread must be in [0, 1), got {self.magnitude_spread}")
        if self.hierarchical and self.p_child > self.p_parent:
            raise ValueError(
                f"a child that fires only with its parent needs p_child <= p_parent "
                f"(got {self.p_child} > {self.p_parent})"
            )

    @property
    def n_features(self) -> int:
        return 1 + self.n_children


def toy_features(key: PRNGKeyArray, cfg: ToyHierarchy) -> Float[Array, "F d_in"]:
    """Orthonormal feature directions, row 0 the parent, rows 1.. the children (random rotation)."""
    q, _ = jnp.linalg.qr(jax.random.normal(key, (cfg.d_in, cfg.n_features)))
    return q.T


def toy_activations(
    key: PRNGKeyArray, cfg: ToyHierarchy, features: Float[Array, "F d_in"], n_tokens: int
) -> tuple[Float[Array, "n d_in"], Bool[Array, "n F"]]:
    """``n_tokens`` activations and which features fired (column 0 the parent)."""
    k_parent, k_child, k_mag = jax.random.split(key, 3)
    parent = jax.random.bernoulli(k_parent, cfg.p_parent, (n_tokens, 1))
    if cfg.hierarchical:
        children = jax.random.bernoulli(k_child, cfg.p_child / cfg.p_parent, (n_tokens, cfg.n_children)) & parent
    else:
        children = jax.random.bernoulli(k_child, cfg.p_child, (n_tokens, cfg.n_children))
    active = jnp.concatenate([parent, children], axis=1)
    mag = cfg.magnitude * jax.random.uniform(
        k_mag, active.shape, minval=1.0 - cfg.magnitude_spread, maxval=1.0 + cfg.magnitude_spread
    )
    return (active * mag) @ features, active


def _unit(a: Float[Array, "... d"]) -> Float[Array, "... d"]:
    return a / jnp.maximum(jnp.linalg.norm(a, axis=-1, keepdims=True), 1e-12)


def toy_absorption_scores(
    sae: SAE,
    features: Float[Array, "F d_in"],
    x: Float[Array, "n d_in"],
    active: Bool[Array, "n F"],
    active_eps: float = 1e-6,
) -> dict[str, np.ndarray]:
    """Absorption of the parent into the children for every SAE of a stack (see the module docstring).

    Returns ``{"parent_encoder_cosine", "parent_in_child_decoder", "absorption_rate",
    "absorption_score", "parent_latent", "parent_sign"}``, each an array [N].
    """

    def one(s: SAE):
        dec = _unit(s.W_dec)  # [m, d]
        enc_in_span = s.W_enc.T @ features.T  # [m, F]: encoder columns in the feature basis
        dec_cos = dec @ features.T  # [m, F]
        p_lat = jnp.argmax(jnp.abs(dec_cos[:, 0]))
        sign = jnp.sign(dec_cos[p_lat, 0])  # -1: a "parent absent" latent (b_dec holds the parent)
        others = jnp.where(jnp.arange(dec.shape[0])[:, None] == p_lat, -jnp.inf, dec_cos[:, 1:])
        child_lat = jnp.argmax(others, axis=0)  # [C]
        enc_cos = sign * _unit(enc_in_span[p_lat])[0]
        in_child = jnp.mean(dec[child_lat] @ features[0])
        fires = s.encode(x)[:, p_lat] > active_eps
        both = active[:, 0] & jnp.any(active[:, 1:], axis=1)
        wrong = jnp.where(sign > 0, ~fires, fires)  # the parent's representation says "absent"
        rate = jnp.sum(both & wrong) / jnp.maximum(jnp.sum(both), 1)
        score = jnp.clip(jnp.maximum(in_child, 1.0 - enc_cos), 0.0, 1.0)
        return {
            "parent_encoder_cosine": enc_cos,
            "parent_in_child_decoder": in_child,
            "absorption_rate": rate,
            "absorption_score": score,
            "parent_latent": p_lat,
            "parent_sign": sign,
        }

    out = jax.vmap(one)(sae)
    return {k: np.asarray(v) for k, v in out.items()}


def init_in_span(key: PRNGKeyArray, sae: SAE, span: Float[Array, "F d_in"]) -> SAE:
    """A stack whose decoder rows are random unit directions inside the row span of ``span`` (norms kept)
    and whose encoder is the decoder transposed.

    The toy data live in an F-dimensional subspace of R^d_in; a random direction in R^50 has only
    ~sqrt(F/50) of its norm there, so with one latent per feature a random start leaves latents that
    never win and stay dead. Starting inside the span removes that accident and nothing else.
    """
    norms = jnp.linalg.norm(sae.W_dec, axis=-1, keepdims=True)  # [N, m, 1]
    coords = jax.random.normal(key, sae.W_dec.shape[:-1] + (span.shape[0],))
    W_dec = _unit(coords @ span) * norms
    return eqx.tree_at(lambda s: (s.W_dec, s.W_enc), sae, (W_dec, jnp.swapaxes(W_dec, -1, -2)))


def train_toy_saes(
    key: PRNGKeyArray,
    x: Float[Array, "n d_in"],
    arch: str,
    *,
    n_seeds: int = 2,
    sparsity_coefs: tuple[float, ...] = (0.0,),
    d_sae: int | None = None,
    n_features: int = 4,
    k: int = 1,
    prefixes: tuple[int, ...] | None = None,
    decoder_norm: float = 0.5,
    steps: int = 1500,
    batch_size: int = 256,
    lr: float = 3e-3,
    span: Float[Array, "F d_in"] | None = None,
) -> tuple[TrainResult, np.ndarray, np.ndarray]:
    """Train ``n_seeds * len(sparsity_coefs)`` SAEs of ``arch`` on the toy data in one vmapped stack.

    ``d_sae`` defaults to ``n_features`` (one latent per true feature, the paper's setting); ``k`` goes
    to architectures that take it (``uses_k``), ``sparsity_coefs`` to those with a sparsity coefficient
    (the others get the same list of seeds, their coefficient reported as given). Nested widths
    ``prefixes`` (default ``(1, d_sae)``: the first latent alone must reconstruct, as for a parent) and
    ``decoder_norm`` (0.5) go to architectures whose ``init`` takes them.
    ``span``: if given (the feature directions), every SAE starts with decoder rows drawn at random
    inside their span (see ``init_in_span``).
    Returns the TrainResult and, per SAE, its seed index and sparsity coefficient (both [N]).
    """
    d_sae = d_sae or n_features
    seeds = np.repeat(np.arange(n_seeds), len(sparsity_coefs))
    coefs = np.tile(np.asarray(sparsity_coefs, np.float32), n_seeds)
    n = len(seeds)
    record = registry.get(arch)
    takes = inspect.signature(record.init).parameters
    options = {"prefixes": prefixes or (1, d_sae), "decoder_norm": decoder_norm}
    cfg = {name: v for name, v in options.items() if name in takes}
    k_init, k_span = jax.random.split(key)
    sae = init_stack(arch, k_init, n, x.shape[-1], d_sae, k=k if record.uses_k else None, **cfg)
    if span is not None:
        sae = init_in_span(k_span, sae, span)
    tc = TrainConfig(
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        sparsity_coef=[float(c) for c in coefs] if record.sparsity else None,
        chunk_steps=min(steps, 500),
        dead_after_tokens=batch_size * 50,
        grad_clip=None,
    )
    return train(sae, x, tc, progress=False), seeds, coefs
