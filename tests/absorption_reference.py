"""The float64 host implementation of the absorption metrics, kept as the oracle of the jnp ones.

This is ``jsae/analysis/_absorption.py`` as it was before the metrics moved to the device (formulas:
that module's docstring): numpy in float64 for SAEBench's metrics and the paper's decision, one SAE at
a time, and integrated gradients through the full model with the SAE's latents spliced in at the word
token (every layer, every position, all logits). ``letter_absorption`` and ``evaluate_sae`` are the old
per-SAE pipeline (``experiments/bench_absorption.py`` times it against the stacked one).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

EPS = 1e-8


def decoder_probe_cosines(W_dec, probe_direction) -> np.ndarray:
    """``cos(W_dec[j], p)`` for every latent, [m]."""
    W = np.asarray(W_dec, np.float64)
    p = np.asarray(probe_direction, np.float64)
    return (W @ p) / np.maximum(np.linalg.norm(W, axis=1) * np.linalg.norm(p), 1e-12)


def saebench_absorption(
    acts,
    latents,
    W_dec,
    probe_direction,
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
    ablation_effects,
    W_dec,
    probe_direction,
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


def main_latents_inactive(latents, main_latents: list[int], eps: float = EPS) -> np.ndarray:
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
    sae,
    tokens,
    lengths,
    word_pos,
    letters,
    resid,
    layer: int,
    answer_ids,
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
    mean = lambda v: float(np.mean(v)) if len(v) else float("nan")
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


def letter_absorption(
    sae,
    data,
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


@eqx.filter_jit
def _encode(sae, x):
    return sae.encode(x)


def evaluate_sae(
    sae,
    data,
    model,
    layer: int,
    answer_ids,
    *,
    max_k: int = 10,
    tau_fs: float = 0.03,
    selection: str = "mean_diff",
    ig_steps: int = 4,
    paper_candidates: int = 2,
    min_probe_f1: float = 0.6,
    seed: int = 0,
) -> dict:
    """The old ``jsae.commands.absorption.evaluate_sae``: k-sparse probing + both metrics for one SAE."""
    from jsae.analysis import k_sparse_probing

    t0 = time.perf_counter()
    lat_train = np.asarray(_encode(sae, jnp.asarray(data.train_acts)))
    lat_test = np.asarray(_encode(sae, jnp.asarray(data.test_acts)))
    sp = k_sparse_probing(
        lat_train, data.train_letters, lat_test, data.test_letters, 26, max_k=max_k, method=selection, tau_fs=tau_fs
    )
    letters = letter_absorption(
        sae,
        data,
        sp.main_latents,
        model=model,
        layer=layer,
        answer_ids=answer_ids,
        ig_steps=ig_steps,
        max_paper_candidates=paper_candidates,
        min_probe_f1=min_probe_f1,
        seed=seed,
    )
    summary = aggregate(letters, min_probe_f1)
    l0 = float(np.mean(np.sum(lat_test != 0, axis=1)))
    return {
        "width": int(sae.d_sae),
        "l0": l0,
        **summary,
        "seconds": time.perf_counter() - t0,
        "k_sparse_f1": sp.f1,
        "per_letter": [vars(r) for r in letters],
    }
