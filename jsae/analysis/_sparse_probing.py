"""k-sparse probing over SAE latents and feature-split detection (Gurnee et al. 2023; Chanin et al. 2024).

For every class c (a letter) and latents ``f [n, m]``:

1. **Selection** ranks the latents for c:
   - ``"mean_diff"``: ``mean_{y=c} f_j - mean_{y!=c} f_j`` (largest first);
   - ``"l1"``: the weights of an L1-regularised class-balanced logistic probe on all latents
     (``jsae.analysis._probes.fit_logistic`` with ``l1``), largest positive weight first.
   The top ``K`` become the candidates ``[C, K]``.
2. **Refit**: for k = 1..K a fresh class-balanced binary probe on the first k candidates only,
   scored by test F1 -> ``f1 [C, K]``. All C*K probes are fitted in one vmapped program.
3. **Feature splits**: starting from k = 1, accept k+1 while ``f1[k+1] - f1[k] > tau_fs`` (0.03,
   SAEBench's ``f1_jump_threshold``); the accepted latents are the class's *main* latents. More than
   one main latent means the concept is split over several latents.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from jsae.analysis._probes import f1_per_class, fit_logistic, one_hot_targets

Selection = Literal["mean_diff", "l1"]


@dataclass
class SparseProbingResult:
    """candidates [C, K] latent ids (best first); f1 [C, K] test F1 of the k-sparse probe (column k-1
    uses the first k candidates); n_main [C] accepted k; main_latents: per class the accepted ids."""

    candidates: np.ndarray
    f1: np.ndarray
    n_main: np.ndarray
    main_latents: list[list[int]]


def mean_difference_ranking(latents: Float[Array, "n m"], targets: Float[Array, "n C"]) -> Float[Array, "C m"]:
    """Per class, mean latent activation on positives minus on negatives."""
    t = targets.astype(latents.dtype)
    pos = (t.T @ latents) / jnp.maximum(jnp.sum(t, axis=0), 1.0)[:, None]
    neg = ((1.0 - t).T @ latents) / jnp.maximum(jnp.sum(1.0 - t, axis=0), 1.0)[:, None]
    return pos - neg


def select_latents(
    latents: Float[Array, "n m"],
    labels: Int[Array, " n"],
    n_classes: int,
    max_k: int,
    method: Selection = "mean_diff",
    l1: float = 0.01,
    steps: int = 200,
) -> np.ndarray:
    """The ``max_k`` best latents per class, ``[C, K]`` ids, by mean difference or L1-probe weight."""
    if method not in ("mean_diff", "l1"):
        raise ValueError(f"unknown latent selection {method!r}; use 'mean_diff' or 'l1'")
    latents = jnp.asarray(latents, jnp.float32)
    if not 1 <= max_k <= latents.shape[1]:
        raise ValueError(f"max_k must be in [1, d_sae={latents.shape[1]}], got {max_k}")
    targets = one_hot_targets(labels, n_classes)
    if method == "mean_diff":
        score = mean_difference_ranking(latents, targets)
    else:
        probe = fit_logistic(latents, targets, steps=steps, l1=l1)
        score = probe.W.T * jnp.std(latents, axis=0)  # weights in standardised units, [C, m]
    return np.asarray(jax.lax.top_k(score, max_k)[1])


@jax.jit
def _refit_f1(train_sel, train_t, test_sel, test_t):
    """train_sel [C, n, K], train_t [C, n, 1] -> F1 [C, K] of probes on the first k of K columns."""
    K = train_sel.shape[-1]
    masks = (jnp.arange(K)[None, :] <= jnp.arange(K)[:, None]).astype(train_sel.dtype)  # [K(k), K]

    def one(xtr, ttr, xte, tte, mask):
        probe = fit_logistic(xtr, ttr, mask, steps=200)
        return f1_per_class(probe.predict(xte), tte)[0]

    per_k = jax.vmap(one, in_axes=(None, None, None, None, 0))
    return jax.vmap(per_k, in_axes=(0, 0, 0, 0, None))(train_sel, train_t, test_sel, test_t, masks)


def accepted_splits(f1: Float[Array, "C K"] | np.ndarray, tau_fs: float = 0.03) -> np.ndarray:
    """Per class the number of main latents: the largest k such that every step 1->2->...->k raised F1 by
    more than ``tau_fs``."""
    f1 = np.asarray(f1)
    jumps = np.diff(f1, axis=1) > tau_fs  # [C, K-1]
    return 1 + np.argmin(np.concatenate([jumps, np.zeros((len(f1), 1), bool)], axis=1), axis=1)


def k_sparse_probing(
    latents_train: Float[Array, "n m"],
    labels_train: Int[Array, " n"],
    latents_test: Float[Array, "n2 m"],
    labels_test: Int[Array, " n2"],
    n_classes: int = 26,
    *,
    max_k: int = 10,
    method: Selection = "mean_diff",
    tau_fs: float = 0.03,
    l1: float = 0.01,
) -> SparseProbingResult:
    """Select, refit for k = 1..max_k and detect feature splits (see the module docstring)."""
    cand = select_latents(latents_train, labels_train, n_classes, max_k, method=method, l1=l1)
    tr = jnp.asarray(latents_train, jnp.float32)[:, cand].transpose(1, 0, 2)  # [C, n, K]
    te = jnp.asarray(latents_test, jnp.float32)[:, cand].transpose(1, 0, 2)
    ttr = one_hot_targets(labels_train, n_classes).T[:, :, None]
    tte = one_hot_targets(labels_test, n_classes).T[:, :, None]
    f1 = np.asarray(_refit_f1(tr, ttr, te, tte))
    n_main = accepted_splits(f1, tau_fs)
    return SparseProbingResult(cand, f1, n_main, [cand[c, : n_main[c]].tolist() for c in range(n_classes)])
