"""Feature absorption metrics in ``jnp``: SAEBench's projection-based ones and the paper's attribution-based one.

Notation for one letter c: ``x [n, d]`` residual activations at the word token of probe true
positives, ``f [n, m]`` the SAE's latents, ``p`` the unit probe direction of c, ``M`` the letter's
main latents (from k-sparse probing), ``cos_j = cos(W_dec[j], p)``.

**SAEBench (Karvonen et al. 2025)**, per word:

- probe projection of the activation ``P = x . p``; of latent j ``P_j = f_j * (W_dec[j] . p)`` (its
  contribution to the reconstruction along p; SAEBench writes ``f_j * cos_j``, the same for unit-norm
  decoder rows);
- main projection ``P_M = sum_{j in M} P_j``;
- potential absorbers ``A = {j not in M : cos_j >= absorber_cos (0.1), P_j > 0}``, and ``P_A`` the sum of
  the largest ``max_absorbers`` (3) values of ``P_j`` over A;
- **absorption fraction** = 0 if ``P_M >= P`` or ``P_A / P < proportion (0.4)``; else 1 if
  ``P_M <= 0``; else ``a / (a + P_M)`` with ``a = min(P_A, P - P_M)``, clipped to [0, 1];
- **full absorption** = all main latents inactive (``|f_j| < eps``) and the top latent by ``P_j`` has
  ``cos >= full_cos (0.025)`` and ``P >= 0`` and ``P_top / P >= proportion (0.4)``.

Per letter both are averaged over the letter's probe true positives; the SAE's scores are the means
over letters whose probe F1 is at least ``min_probe_f1`` (0.6).

**The paper (Chanin et al. 2024)**: candidates are probe true positives where every main latent is
inactive. For each, the SAE is spliced into the model at the word token with its error term kept
(so the model's output is unchanged), and each latent's effect on the metric
``logit(" " + right letter) - mean(logits of the other 25 letters)`` at the last position is
estimated by integrated gradients over ``steps`` (default 4) midpoint-rule points alpha in (0, 1)
that scale the latents: ``IG_j = f_j * W_dec[j] . mean_alpha grad_x metric(x_alpha)`` with
``x_alpha = x + (alpha - 1) f W_dec`` (exact for a linear decoder). The ablation effect of latent j
is ``e_j = -IG_j``. A candidate counts as **absorption** when the latent with the most negative
effect has ``e_top < 0``, beats the runner-up by ``e_second - e_top >= min_gap`` (1.0) and
``cos(W_dec[top], p) >= paper_cos`` (0.025). The paper's absorption rate of a letter is
``absorbed / candidates``.

Every metric here is a pure ``jnp`` function of one SAE's arrays, with the probe direction and main
latents given per row (``[n, d]``, ``[n, m]``) or shared (``[d]``, ``[m]``), so one call covers all
letters of a test set, and ``jax.vmap`` over a stack of SAEs evaluates a whole sweep in one program
(:mod:`jsae.analysis.absorption_run`). The per-letter and SAE-level summaries are a registry,
:data:`SUMMARIES` (name -> function of :class:`LetterCounts`).

The gradients for IG (:func:`ig_gradients`) run the layers up to the splice once per prompt (a clean
forward), and the spliced forward + backward of each IG point from the layer after the splice to the
logits of the last position, with the model's own forward (``forward(layer_range(model, l + 1), ...,
resid=x)``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int

from jsae.models import capture, forward, layer_range, unembed

EPS = 1e-8


def decoder_probe_cosines(W_dec: Float[Array, "m d"], direction: Float[Array, "*n d"]) -> Float[Array, "*n m"]:
    """``cos(W_dec[j], p)`` for every latent, ``[m]`` (or ``[n, m]`` for one direction per row)."""
    dots = jnp.einsum("...d,md->...m", direction, W_dec)
    norms = jnp.linalg.norm(W_dec, axis=1) * jnp.linalg.norm(direction, axis=-1, keepdims=True)
    return dots / jnp.maximum(norms, 1e-12)


def main_latent_mask(main_latents: list[list[int]], d_sae: int) -> Bool[Array, "C m"]:
    """Per class, True at its main latents: ``[C, d_sae]`` from lists of latent ids."""
    rows = [jnp.zeros(d_sae, bool).at[jnp.asarray(ids, jnp.int32)].set(True) for ids in main_latents]
    return jnp.stack(rows)


def main_latents_inactive(
    latents: Float[Array, "n m"], main: Bool[Array, "*n m"], eps: float = EPS
) -> Bool[Array, " n"]:
    """[n] True where every main latent is (numerically) zero; ``main`` is a mask ``[m]`` or ``[n, m]``."""
    return jnp.all(jnp.where(main, jnp.abs(latents) < eps, True), axis=-1)


def saebench_absorption(
    acts: Float[Array, "n d"],
    latents: Float[Array, "n m"],
    W_dec: Float[Array, "m d"],
    direction: Float[Array, "*n d"],
    main: Bool[Array, "*n m"],
    *,
    absorber_cos: float = 0.1,
    full_cos: float = 0.025,
    proportion: float = 0.4,
    max_absorbers: int = 3,
    eps: float = EPS,
) -> tuple[Float[Array, " n"], Bool[Array, " n"]]:
    """SAEBench's absorption fraction [n] and full-absorption flags [n] (formulas: module docstring).

    direction: the probe direction, ``[d]`` or one per row ``[n, d]`` (need not be unit norm).
    main: the main-latent mask, ``[m]`` or one per row ``[n, m]``.
    """
    p = direction / jnp.linalg.norm(direction, axis=-1, keepdims=True)
    main = jnp.broadcast_to(main, latents.shape)
    cos = jnp.broadcast_to(decoder_probe_cosines(W_dec, p), latents.shape)  # [n, m]
    P = jnp.sum(acts * p, axis=-1)  # [n]
    P_lat = latents * jnp.einsum("...d,md->...m", p, W_dec)  # [n, m]
    P_main = jnp.sum(jnp.where(main, P_lat, 0.0), axis=1)
    absorber = ~main & (cos >= absorber_cos) & (P_lat > 0)
    cand = jnp.where(absorber, P_lat, 0.0)
    P_abs = jnp.sum(jax.lax.top_k(cand, min(max_absorbers, cand.shape[1]))[0], axis=1)
    share = P_abs / P
    a = jnp.minimum(P_abs, P - P_main)
    partial = jnp.clip(a / (a + P_main), 0.0, 1.0)
    fraction = jnp.where((P_main >= P) | ~(share >= proportion), 0.0, jnp.where(P_main <= 0.0, 1.0, partial))
    top = jnp.argmax(P_lat, axis=1)
    top_P = jnp.take_along_axis(P_lat, top[:, None], axis=1)[:, 0]
    top_cos = jnp.take_along_axis(cos, top[:, None], axis=1)[:, 0]
    top_share = top_P / jnp.where(P == 0, jnp.inf, P)
    main_off = main_latents_inactive(latents, main, eps)
    full = main_off & (top_cos >= full_cos) & (P >= 0) & (top_share >= proportion)
    return fraction, full


def paper_absorption(
    ablation_effects: Float[Array, "n m"],
    W_dec: Float[Array, "m d"],
    direction: Float[Array, "*n d"],
    *,
    min_gap: float = 1.0,
    paper_cos: float = 0.025,
) -> Bool[Array, " n"]:
    """The paper's decision per candidate [n] bool, from the ablation effects ``e = -IG`` (module
    docstring). Candidates must already be probe true positives with every main latent inactive;
    ``direction`` is ``[d]`` or one per row ``[n, d]``."""
    if ablation_effects.shape[1] < 2:
        raise ValueError("the paper's metric compares the top latent with the runner-up; the SAE needs >= 2 latents")
    neg, idx = jax.lax.top_k(-ablation_effects, 2)
    top, second = -neg[:, 0], -neg[:, 1]
    cos = jnp.broadcast_to(decoder_probe_cosines(W_dec, direction), ablation_effects.shape)
    top_cos = jnp.take_along_axis(cos, idx[:, :1], axis=1)[:, 0]
    return (top < 0) & (second - top >= min_gap) & (top_cos >= paper_cos)


def ablation_effects(
    latents: Float[Array, "n m"], W_dec: Float[Array, "m d"], grad_mean: Float[Array, "n d"]
) -> Float[Array, "n m"]:
    """``e = -IG = -f * (W_dec . mean_alpha grad)`` per row and latent (module docstring)."""
    return -latents * (grad_mean @ W_dec.T)


# --- per-letter counts and the summaries registry ----------------------------------------------------


@dataclass(frozen=True)
class LetterCounts:
    """Per SAE and letter (arrays ``[N, C]``, NaN where a letter is skipped): n_true_positives (probe TPs);
    fraction_sum / full_sum (SAEBench sums over them); n_candidates (TPs with every main latent off);
    n_paper_evaluated / n_paper_absorbed (IG candidates and absorbed ones); n_main (main latents);
    kept [C] (probe F1 >= threshold and at least one TP: the letters the summaries average)."""

    n_true_positives: Array | np.ndarray
    fraction_sum: Array | np.ndarray
    full_sum: Array | np.ndarray
    n_candidates: Array | np.ndarray
    n_paper_evaluated: Array | np.ndarray
    n_paper_absorbed: Array | np.ndarray
    n_main: Array | np.ndarray
    kept: Array | np.ndarray

    def absorption_fraction(self) -> Array:
        """SAEBench's fraction per letter, ``[N, C]`` (NaN for letters left out)."""
        return jnp.where(self.kept, self.fraction_sum / jnp.maximum(self.n_true_positives, 1), jnp.nan)

    def full_absorption(self) -> Array:
        return jnp.where(self.kept, self.full_sum / jnp.maximum(self.n_true_positives, 1), jnp.nan)

    def paper_rate(self) -> Array:
        ev = self.n_paper_evaluated
        return jnp.where(ev > 0, self.n_paper_absorbed / jnp.maximum(ev, 1), jnp.nan)


def letter_counts(
    fraction: Float[Array, "N n"],
    full: Bool[Array, "N n"],
    candidate: Bool[Array, "N n"],
    true_positive: Bool[Array, " n"],
    letters: Int[Array, " n"],
    probe_f1: Float[Array, " C"],
    n_main: Int[Array, "N C"],
    paper_letters: Int[Array, "N P"],
    paper_absorbed: Bool[Array, "N P"],
    paper_valid: Bool[Array, "N P"],
    *,
    min_probe_f1: float = 0.6,
) -> LetterCounts:
    """Per-row scores of N SAEs -> per-letter counts (sums over each letter's probe true positives)."""
    C = probe_f1.shape[0]
    onehot = (letters[:, None] == jnp.arange(C)[None, :]) & true_positive[:, None]  # [n, C]
    oh = onehot.astype(jnp.float32)
    n_tp = jnp.sum(oh, axis=0)  # [C]
    kept = (probe_f1 >= min_probe_f1) & (n_tp > 0)
    paper_oh = (paper_letters[..., None] == jnp.arange(C)) & paper_valid[..., None]  # [N, P, C]
    n_eval = jnp.sum(paper_oh, axis=1)
    n_abs = jnp.sum(paper_oh & paper_absorbed[..., None], axis=1)
    return LetterCounts(
        n_true_positives=jnp.broadcast_to(n_tp, n_main.shape),
        fraction_sum=fraction @ oh,
        full_sum=full.astype(jnp.float32) @ oh,
        n_candidates=jnp.where(kept, candidate.astype(jnp.float32) @ oh, 0.0),
        n_paper_evaluated=jnp.where(kept, n_eval, 0),
        n_paper_absorbed=jnp.where(kept, n_abs, 0),
        n_main=n_main,
        kept=kept,
    )


def _mean_over_kept(values: Array | np.ndarray, kept: Array | np.ndarray) -> Array:
    n = jnp.sum(kept)
    return jnp.where(n > 0, jnp.sum(jnp.where(kept, values, 0.0), axis=-1) / jnp.maximum(n, 1), jnp.nan)


def _paper_absorption_rate(c: LetterCounts) -> Array:
    ev = jnp.sum(c.n_paper_evaluated, axis=-1)
    return jnp.where(ev > 0, jnp.sum(c.n_paper_absorbed, axis=-1) / jnp.maximum(ev, 1), jnp.nan)


SUMMARIES: dict[str, Callable[[LetterCounts], Array]] = {
    "absorption_fraction": lambda c: _mean_over_kept(c.absorption_fraction(), c.kept),
    "full_absorption": lambda c: _mean_over_kept(c.full_absorption(), c.kept),
    "paper_absorption_rate": _paper_absorption_rate,
    "mean_split_latents": lambda c: _mean_over_kept(c.n_main.astype(jnp.float32), c.kept),
    "n_letters": lambda c: jnp.broadcast_to(jnp.sum(c.kept), c.n_main.shape[:-1]),
}
"""SAE-level summaries, ``[N]`` each: the means over kept letters (the paper's rate pools its candidates)."""


def summarise(counts: LetterCounts) -> dict[str, Array]:
    """Every summary of :data:`SUMMARIES`, ``{name: [N]}``."""
    return {name: fn(counts) for name, fn in SUMMARIES.items()}


# --- integrated gradients through the layers after the splice --------------------------------------------


@eqx.filter_jit
def ig_gradients(
    model,
    tokens: Int[Array, "B T"],
    lengths: Int[Array, " B"],
    word_pos: Int[Array, " B"],
    letters: Int[Array, " B"],
    deltas: Float[Array, "B A D"],
    answer_ids: Int[Array, " C"],
    layer: int,
) -> Float[Array, "B D"]:
    """``mean_a d metric / d resid_post[layer, word_pos]`` at ``resid + deltas[:, a]``, ``[B, D]``.

    The metric is ``logit(answer_ids[letter]) - mean(other answer logits)`` at each row's last real
    position. One clean forward per row gives the residual after ``layer``; the ``A`` spliced copies of
    each row continue from it through the model's own layers ``layer + 1 ..`` (:func:`jsae.models.forward`
    of :func:`jsae.models.layer_range` with ``resid=``), so the layers before the splice run once per row.
    Compiled once per shape and ``layer``.
    """
    B, A, D = deltas.shape
    L = model.cfg.n_layers
    head = layer_range(model, 0, layer + 1)  # layers 0..layer: the clean run up to the splice
    _, cache = forward(head, tokens, hooks=capture("resid_post"), lengths=lengths, logits=False)
    clean = jax.lax.stop_gradient(cache["resid_post"][layer])  # [B, T, D]
    rep = lambda a: jnp.repeat(a, A, axis=0)  # noqa: E731 -- row b -> its A spliced copies
    R = B * A
    tokens_r, lengths_r, clean_r, wp = rep(tokens), rep(lengths), rep(clean), rep(word_pos)

    def metric(d: Float[Array, "B A D"]) -> Array:
        x = clean_r.at[jnp.arange(R), wp].add(d.reshape(R, D))
        if layer + 1 < L:
            logits, _ = forward(layer_range(model, layer + 1), tokens_r, lengths=lengths_r, logits="last", resid=x)
            assert logits is not None  # logits="last"
        else:  # the splice is on the last layer's output: straight to the logits
            logits = unembed(model, x[jnp.arange(R), lengths_r - 1])
        answer = logits[:, answer_ids]  # [R, C]
        right = jnp.take_along_axis(answer, rep(letters)[:, None], axis=1)[:, 0]
        others = (jnp.sum(answer, axis=1) - right) / (answer_ids.shape[0] - 1)
        return jnp.sum(right - others)

    return jax.grad(metric)(deltas).mean(axis=1)


def ig_alphas(steps: int) -> Float[Array, " A"]:
    """The midpoint-rule points ``(i + 0.5) / steps`` in (0, 1)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return (jnp.arange(steps) + 0.5) / steps
