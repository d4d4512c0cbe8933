"""Feature absorption metrics: SAEBench's projection-based ones and the paper's attribution-based one.

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
"""

from __future__ import annotations

from dataclasses import dataclass

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from jsae.sae.base import SAE

EPS = 1e-8


def decoder_probe_cosines(W_dec: Float[Array, "m d"], probe_direction: Float[Array, " d"]) -> np.ndarray:
    """``cos(W_dec[j], p)`` for every latent, [m]."""
    W = np.asarray(W_dec, np.float64)
    p = np.asarray(probe_direction, np.float64)
    return (W @ p) / np.maximum(np.linalg.norm(W, axis=1) * np.linalg.norm(p), 1e-12)


def saebench_absorption(
    acts: Float[Array, "n d"],
    latents: Float[Array, "n m"],
    W_dec: Float[Array, "m d"],
    probe_direction: Float[Array, " d"],
    main_latents: list[int] | np.ndarray,
    *,
    absorber_cos: float = 0.1,
    full_cos: float = 0.025,
    proportion: float = 0.4,
    max_absorbers: int = 3,
    eps: float = EPS,
) -> tuple[np.ndarray, np.ndarray]:
    """SAEBench's absorption fraction [n] and full-absorption flags [n] (formulas: module docstring)."""
    x, f, W = (np.asarray(a, np.float64) for a in (acts, latents, W_dec))
    p = np.asarray(probe_direction, np.float64)
    p = p / np.linalg.norm(p)
    main = np.zeros(W.shape[0], bool)
    main[np.asarray(main_latents, int)] = True
    cos = decoder_probe_cosines(W, p)
    P = x @ p  # [n]
    P_lat = f * (W @ p)[None, :]  # [n, m]
    P_main = P_lat[:, main].sum(axis=1)
    absorber = (~main)[None, :] & (cos >= absorber_cos)[None, :] & (P_lat > 0)
    cand = np.where(absorber, P_lat, 0.0)
    kk = min(max_absorbers, cand.shape[1])
    P_abs = -np.sort(-cand, axis=1)[:, :kk].sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        share = P_abs / P
        a = np.minimum(P_abs, P - P_main)
        partial = np.clip(a / (a + P_main), 0.0, 1.0)
    fraction = np.where((P_main >= P) | ~(share >= proportion), 0.0, np.where(P_main <= 0.0, 1.0, partial))
    top = np.argmax(P_lat, axis=1)
    top_share = P_lat[np.arange(len(top)), top] / np.where(P == 0, np.inf, P)
    main_off = np.all(np.abs(f[:, main]) < eps, axis=1)
    full = main_off & (cos[top] >= full_cos) & (P >= 0) & (top_share >= proportion)
    return fraction, full


def paper_absorption(
    ablation_effects: Float[Array, "n m"],
    W_dec: Float[Array, "m d"],
    probe_direction: Float[Array, " d"],
    *,
    min_gap: float = 1.0,
    paper_cos: float = 0.025,
) -> np.ndarray:
    """The paper's decision per candidate [n] bool, from the ablation effects ``e = -IG`` (module
    docstring). Candidates must already be probe true positives with every main latent inactive."""
    e = np.asarray(ablation_effects, np.float64)
    if e.shape[1] < 2:
        raise ValueError("the paper's metric compares the top latent with the runner-up; the SAE needs >= 2 latents")
    order = np.argsort(e, axis=1)
    rows = np.arange(e.shape[0])
    top, second = e[rows, order[:, 0]], e[rows, order[:, 1]]
    cos = decoder_probe_cosines(W_dec, probe_direction)
    return (top < 0) & (second - top >= min_gap) & (cos[order[:, 0]] >= paper_cos)


def main_latents_inactive(latents: Float[Array, "n m"], main_latents: list[int], eps: float = EPS) -> np.ndarray:
    """[n] True where every main latent is (numerically) zero."""
    f = np.asarray(latents)
    return np.all(np.abs(f[:, np.asarray(main_latents, int)]) < eps, axis=1)


# --- integrated gradients through the model ----------------------------------------------------------


def _splice_delta(x, layer, _per_layer, shared):
    """Edit for resid_post: add ``delta [B, D]`` at each row's word position of the chosen layer."""
    delta, pos_onehot, target_layer = shared
    on = (layer == target_layer).astype(x.dtype)
    return x + on * pos_onehot[..., None] * delta[:, None, :]


@eqx.filter_jit
def _metric_grads(model, tokens, lengths, word_pos, layer, deltas, answer_ids, letters):
    """d metric / d resid_post[layer, word_pos] at ``resid + delta`` for every row, [B, D]."""
    from jsae.models import edit, forward

    T = tokens.shape[1]
    onehot = (jnp.arange(T)[None, :] == word_pos[:, None]).astype(jnp.float32)

    def total_metric(d):
        logits, _ = forward(
            model, tokens, hooks=edit("resid_post", _splice_delta, shared=(d, onehot, layer)), lengths=lengths
        )
        last = logits[jnp.arange(tokens.shape[0]), lengths - 1]  # [B, V]
        letter_logits = last[:, answer_ids]  # [B, 26]
        right = jnp.take_along_axis(letter_logits, letters[:, None], axis=1)[:, 0]
        others = (jnp.sum(letter_logits, axis=1) - right) / (answer_ids.shape[0] - 1)
        return jnp.sum(right - others)

    return jax.grad(total_metric)(deltas)


def integrated_gradient_effects(
    model,
    sae: SAE,
    tokens: Int[Array, "B T"],
    lengths: Int[Array, " B"],
    word_pos: Int[Array, " B"],
    letters: Int[Array, " B"],
    resid: Float[Array, "B D"],
    layer: int,
    answer_ids: Int[Array, " 26"],
    *,
    steps: int = 4,
    rows_per_call: int = 8,
) -> np.ndarray:
    """Ablation effects ``e = -IG`` [B, m] of every latent on the letter metric (module docstring).

    ``resid [B, D]`` is the residual stream (resid_post of ``layer``) at ``word_pos``. The ``steps``
    alphas of up to ``rows_per_call // steps`` prompts share one batched forward+backward.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    alphas = (np.arange(steps) + 0.5) / steps
    f = np.asarray(sae.encode(jnp.asarray(resid)))  # [B, m]
    v = f @ np.asarray(sae.W_dec)  # [B, D] the latents' part of the reconstruction
    per_call = max(1, rows_per_call // steps)
    B = tokens.shape[0]
    out = np.zeros_like(f)
    for s in range(0, B, per_call):
        rows = np.arange(s, min(s + per_call, B))
        rows_p = np.concatenate([rows, np.full(per_call - len(rows), rows[0])])  # fixed shape: one compile
        rep = np.repeat(rows_p, steps)
        a = np.tile(alphas, per_call)
        deltas = ((a - 1.0)[:, None] * v[rep]).astype(np.float32)
        g = np.asarray(
            _metric_grads(
                model,
                jnp.asarray(tokens[rep]),
                jnp.asarray(lengths[rep]),
                jnp.asarray(word_pos[rep]),
                jnp.asarray(layer),
                jnp.asarray(deltas),
                jnp.asarray(answer_ids),
                jnp.asarray(letters[rep]),
            )
        )
        g_mean = g.reshape(per_call, steps, -1).mean(axis=1)[: len(rows)]  # [b, D]
        out[rows] = -f[rows] * (g_mean @ np.asarray(sae.W_dec).T)
    return out


# --- per-letter aggregation -------------------------------------------------------------------------


@dataclass
class LetterAbsorption:
    """One letter's scores. n_true_positives: probe TPs; fraction/full: SAEBench means over them;
    n_candidates: TPs with every main latent inactive; n_paper_evaluated: candidates sent through IG
    (capped); paper_rate: absorbed / evaluated (NaN when none)."""

    letter: int
    probe_f1: float
    main_latents: list[int]
    n_true_positives: int
    absorption_fraction: float
    full_absorption: float
    n_candidates: int
    n_paper_evaluated: int
    n_paper_absorbed: int
    paper_rate: float


def aggregate(letters: list[LetterAbsorption], min_probe_f1: float = 0.6) -> dict[str, float]:
    """SAE-level means over letters with probe F1 >= ``min_probe_f1`` (and at least one true positive)."""
    kept = [r for r in letters if r.probe_f1 >= min_probe_f1 and r.n_true_positives > 0]
    paper = [r for r in kept if r.n_paper_evaluated > 0]
    mean = lambda v: float(np.mean(v)) if len(v) else float("nan")  # noqa: E731
    return {
        "absorption_fraction": mean([r.absorption_fraction for r in kept]),
        "full_absorption": mean([r.full_absorption for r in kept]),
        "paper_absorption_rate": (
            float(sum(r.n_paper_absorbed for r in paper) / sum(r.n_paper_evaluated for r in paper))
            if paper
            else float("nan")
        ),
        "mean_split_latents": mean([len(r.main_latents) for r in kept]),
        "n_letters": len(kept),
    }


# --- the pipeline on a language model --------------------------------------------------------------


def residual_at_positions(
    model,
    tokens: Int[Array, "B T"],
    positions: Int[Array, " B"],
    layer: int,
    *,
    batch_size: int = 32,
) -> np.ndarray:
    """resid_post of ``layer`` at one position per row, [B, D], running only the first layer+1 blocks."""
    from jsae.models import capture, forward, layer_range

    short = layer_range(model, 0, layer + 1)
    spec = capture("resid_post", reduce="last")
    out = []
    B = tokens.shape[0]
    for s in range(0, B, batch_size):
        rows = np.arange(s, min(s + batch_size, B))
        rows_p = np.concatenate([rows, np.full(batch_size - len(rows), rows[0])])
        _, cache = forward(
            short, jnp.asarray(tokens[rows_p]), hooks=spec, lengths=jnp.asarray(positions[rows_p] + 1), logits=False
        )
        out.append(np.asarray(cache["resid_post"][layer])[: len(rows)])
    return np.concatenate(out)


@dataclass
class ProbeData:
    """First-letter activations and the probe: train/test acts [n, D], letters [n], the test prompts
    (for IG), the probe and its per-letter test F1 [26], predictions [n_test, 26]."""

    train_acts: np.ndarray
    train_letters: np.ndarray
    test_acts: np.ndarray
    test_letters: np.ndarray
    test_prompts: object
    probe: object
    probe_f1: np.ndarray
    test_pred: np.ndarray


def letter_absorption(
    sae: SAE,
    data: ProbeData,
    main_latents: list[list[int]],
    *,
    model=None,
    layer: int | None = None,
    answer_ids: np.ndarray | None = None,
    ig_steps: int = 4,
    max_paper_candidates: int = 4,
    min_probe_f1: float = 0.6,
    absorber_cos: float = 0.1,
    full_cos: float = 0.025,
    proportion: float = 0.4,
    max_absorbers: int = 3,
    min_gap: float = 1.0,
    paper_cos: float = 0.025,
    seed: int = 0,
) -> list[LetterAbsorption]:
    """Both metrics for every letter on the test words where the probe is right (true positives).

    The paper's metric needs ``model``, ``layer`` and ``answer_ids`` (skipped otherwise) and runs IG on
    at most ``max_paper_candidates`` randomly chosen candidates per letter (its cost is one forward +
    backward of the whole model per candidate and alpha).
    """
    rng = np.random.default_rng(seed)
    dirs = np.asarray(data.probe.directions())
    latents = np.asarray(sae.encode(jnp.asarray(data.test_acts)))
    W_dec = np.asarray(sae.W_dec)
    results = []
    for c in range(26):
        f1 = float(data.probe_f1[c])
        tp = np.flatnonzero((data.test_letters == c) & data.test_pred[:, c])
        if f1 < min_probe_f1 or len(tp) == 0:
            results.append(
                LetterAbsorption(c, f1, main_latents[c], len(tp), float("nan"), float("nan"), 0, 0, 0, float("nan"))
            )
            continue
        frac, full = saebench_absorption(
            data.test_acts[tp],
            latents[tp],
            W_dec,
            dirs[c],
            main_latents[c],
            absorber_cos=absorber_cos,
            full_cos=full_cos,
            proportion=proportion,
            max_absorbers=max_absorbers,
        )
        cand = tp[main_latents_inactive(latents[tp], main_latents[c])]
        n_eval = n_abs = 0
        if model is not None and len(cand) and max_paper_candidates > 0:
            pick = np.sort(rng.choice(cand, min(len(cand), max_paper_candidates), replace=False))
            pr = data.test_prompts
            effects = integrated_gradient_effects(
                model,
                sae,
                pr.tokens[pick],
                pr.lengths[pick],
                pr.word_pos[pick],
                pr.letters[pick],
                data.test_acts[pick],
                layer,
                answer_ids,
                steps=ig_steps,
            )
            absorbed = paper_absorption(effects, W_dec, dirs[c], min_gap=min_gap, paper_cos=paper_cos)
            n_eval, n_abs = len(pick), int(absorbed.sum())
        results.append(
            LetterAbsorption(
                c,
                f1,
                main_latents[c],
                len(tp),
                float(frac.mean()),
                float(full.mean()),
                len(cand),
                n_eval,
                n_abs,
                n_abs / n_eval if n_eval else float("nan"),
            )
        )
    return results


def prepare_probe_data(
    model,
    tokenizer,
    layer: int,
    *,
    n_train: int = 3000,
    n_test: int = 1000,
    n_examples: int = 10,
    seed: int = 0,
    probe_steps: int = 500,
) -> ProbeData:
    """Vocabulary -> 80/20 split -> ICL prompts for ``n_train``/``n_test`` sampled words -> activations at
    the word token of ``layer`` -> 26-way probe and its per-letter test F1."""
    from jsae.analysis.probes import f1_per_class, one_hot_targets, train_probe
    from jsae.tasks.first_letter import alphabetic_vocabulary, build_prompts, train_test_split

    vocab = alphabetic_vocabulary(tokenizer)
    train_v, test_v = train_test_split(vocab, seed=seed)
    rng = np.random.default_rng(seed)
    train_s = train_v.subset(np.sort(rng.choice(len(train_v), min(n_train, len(train_v)), replace=False)))
    test_s = test_v.subset(np.sort(rng.choice(len(test_v), min(n_test, len(test_v)), replace=False)))
    train_p = build_prompts(tokenizer, train_s, train_v, n_examples=n_examples, seed=seed)
    test_p = build_prompts(tokenizer, test_s, train_v, n_examples=n_examples, seed=seed + 1)
    train_acts = residual_at_positions(model, train_p.tokens, train_p.word_pos, layer)
    test_acts = residual_at_positions(model, test_p.tokens, test_p.word_pos, layer)
    probe = train_probe(train_acts, train_p.letters, 26, steps=probe_steps)
    pred = np.asarray(probe.predict(jnp.asarray(test_acts)))
    f1 = np.asarray(f1_per_class(pred, one_hot_targets(test_p.letters, 26)))
    return ProbeData(train_acts, train_p.letters, test_acts, test_p.letters, test_p, probe, f1, pred)
