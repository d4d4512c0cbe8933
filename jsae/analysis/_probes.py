"""Linear probes: one-vs-rest logistic regression trained with optax, class-balanced, and per-class F1.

For ``C`` classes a probe holds ``W [d, C]`` and ``b [C]``; class ``c`` is predicted for a row when its
logit ``x @ W[:, c] + b[c] > 0`` (one-vs-rest: a row may get zero or several classes). The loss is the
class-balanced binary cross-entropy, for every class ``c``:

    L_c = 1/2 * mean_{i: y_i = c} softplus(-z_ic) + 1/2 * mean_{i: y_i != c} softplus(z_ic)
    loss = mean_c L_c + l1 * sum |W_std| + l2 * sum W_std^2

so positives and negatives weigh the same whatever the class frequencies. Inputs are standardised
inside the fit (per-feature mean and std; ``W_std`` are the weights in that space) and the scale is
folded back, so the returned probe reads raw inputs. Full-batch Adam in one ``lax.scan``.
"""

from __future__ import annotations

import functools
from typing import cast

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, Bool, Float, Int


class LinearProbe(eqx.Module):
    """``W [d, C]``, ``b [C]``: logits ``x @ W + b``."""

    W: Float[Array, "d C"]
    b: Float[Array, " C"]

    def logits(self, x: Float[Array, "n d"]) -> Float[Array, "n C"]:
        return x @ self.W + self.b

    def predict(self, x: Float[Array, "n d"]) -> Bool[Array, "n C"]:
        """One-vs-rest decisions: row i is of class c when logit > 0."""
        return self.logits(x) > 0

    def directions(self) -> Float[Array, "C d"]:
        """Unit probe directions, one per class."""
        return (self.W / jnp.maximum(jnp.linalg.norm(self.W, axis=0, keepdims=True), 1e-12)).T


def one_hot_targets(labels: Int[Array, " n"] | np.ndarray, n_classes: int) -> Bool[Array, "n C"]:
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be a 1-D array of class ids, got shape {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
        raise ValueError(f"labels must lie in [0, {n_classes}), got range [{labels.min()}, {labels.max()}]")
    return jnp.asarray(labels[:, None] == np.arange(n_classes)[None, :])


@functools.partial(jax.jit, static_argnames=("steps",))
def fit_logistic(
    x: Float[Array, "n d"],
    targets: Bool[Array, "n C"],
    feature_mask: Float[Array, " d"] | None = None,
    *,
    steps: int = 300,
    lr: float = 0.05,
    l1: float = 0.0,
    l2: float = 1e-4,
) -> LinearProbe:
    """Fit a class-balanced one-vs-rest logistic regression (see the module docstring).

    ``feature_mask [d]`` (0/1) restricts the probe to some input features (a k-sparse probe); masked
    weights are exactly zero. Pure and jitted: ``jax.vmap`` it over letters, masks or data sets.
    """
    mean = jnp.mean(x, axis=0)
    std = jnp.maximum(jnp.std(x, axis=0), 1e-6)
    xs = (x - mean) / std
    mask = jnp.ones((x.shape[1],), x.dtype) if feature_mask is None else feature_mask.astype(x.dtype)
    t = targets.astype(x.dtype)
    n_pos = jnp.maximum(jnp.sum(t, axis=0), 1.0)
    n_neg = jnp.maximum(jnp.sum(1.0 - t, axis=0), 1.0)
    weights = 0.5 * (t / n_pos + (1.0 - t) / n_neg)  # [n, C]; each class's weights sum to 1

    def loss(params):
        W, b = params
        W = W * mask[:, None]
        z = xs @ W + b
        bce = jnp.sum(weights * (t * jax.nn.softplus(-z) + (1.0 - t) * jax.nn.softplus(z))) / t.shape[1]
        return bce + l1 * jnp.sum(jnp.abs(W)) + l2 * jnp.sum(W**2)

    opt = optax.adam(lr)
    params = (jnp.zeros((x.shape[1], t.shape[1]), x.dtype), jnp.zeros((t.shape[1],), x.dtype))

    def step(carry, _):
        params, state = carry
        g = jax.grad(loss)(params)
        updates, state = opt.update(g, state, params)
        return (optax.apply_updates(params, updates), state), None

    (params, _), _ = jax.lax.scan(step, (params, opt.init(params)), None, length=steps)
    W, b = cast(tuple[Array, Array], params)  # scan returns the carry's (W, b)
    W = W * mask[:, None] / std[:, None]
    return LinearProbe(W=W, b=b - mean @ W)


def train_probe(
    x: Float[Array, "n d"],
    labels: Int[Array, " n"],
    n_classes: int,
    *,
    steps: int = 300,
    lr: float = 0.05,
    l1: float = 0.0,
    l2: float = 1e-4,
) -> LinearProbe:
    """A C-way one-vs-rest probe on integer ``labels [n]`` (class ids in [0, n_classes))."""
    x = jnp.asarray(x, jnp.float32)
    if x.ndim != 2 or x.shape[0] != len(labels):
        raise ValueError(f"x must be [n, d] with one row per label; got x {tuple(x.shape)} and {len(labels)} labels")
    return fit_logistic(x, one_hot_targets(labels, n_classes), steps=steps, lr=lr, l1=l1, l2=l2)


def f1_per_class(predicted: Bool[Array, "n C"], targets: Bool[Array, "n C"]) -> Float[Array, " C"]:
    """Binary F1 of every class column: 2 TP / (2 TP + FP + FN) (0 when a class has no positives and
    no predictions)."""
    p, t = jnp.asarray(predicted, bool), jnp.asarray(targets, bool)
    tp = jnp.sum(p & t, axis=0)
    fp = jnp.sum(p & ~t, axis=0)
    fn = jnp.sum(~p & t, axis=0)
    return 2 * tp / jnp.maximum(2 * tp + fp + fn, 1)
