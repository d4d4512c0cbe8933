"""Circuit discovery on attention heads: discrete SAE codes (O'Neill & Bui 2024) and the baselines it
is graded against (activation patching, attribution patching, random), plus ROC evaluation.

Heads are flattened layer-major: index ``layer * n_heads + head`` (``H = n_layers * n_heads``).

Typical use::

    model, tok, _ = jsae.models.load("smollm2-135m")
    task = jsae.tasks.ioi(tok, 500)
    found = discover(model, tok, task, method="sae_shared", key=jax.random.key(0))
    reference = activation_patching(model, tok, task.subset(range(16)))
    print(evaluate(found.scores, top_k_mask(np.abs(reference.scores), 27)))
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float
from tqdm.auto import tqdm

from jsae.analysis import codes as codes_mod
from jsae.models import HookSpec, Replace, forward
from jsae.sae.registry import init_stack
from jsae.tasks.base import Task, predicts_correctly, task_metric
from jsae.train import TrainConfig, train

# ---------------------------------------------------------------------------------------------------
# Published ground truth (GPT-2 small / attn-only-4l), as (layer, head)

GPT2_IOI_HEADS: tuple[tuple[int, int], ...] = (
    # Wang et al. 2022, "Interpretability in the Wild: a Circuit for Indirect Object Identification in
    # GPT-2 small", arXiv:2211.00593, Fig. 2 / Table: the 26 heads of the IOI circuit.
    (0, 1),
    (0, 10),
    (3, 0),  # duplicate token
    (2, 2),
    (4, 11),  # previous token
    (5, 5),
    (5, 8),
    (5, 9),
    (6, 9),  # induction
    (7, 3),
    (7, 9),
    (8, 6),
    (8, 10),  # S-inhibition
    (9, 6),
    (9, 9),
    (10, 0),  # name movers
    (9, 0),
    (9, 7),
    (10, 1),
    (10, 2),
    (10, 6),
    (10, 10),
    (11, 2),
    (11, 9),  # backup name movers
    (10, 7),
    (11, 10),  # negative name movers
)
GPT2_GREATER_THAN_HEADS: tuple[tuple[int, int], ...] = (
    # Hanna, Liu & Variengien 2023, "How does GPT-2 compute greater-than?", arXiv:2305.00586, as encoded
    # in ACDC's ground truth (Conmy et al. 2023, acdc/greaterthan/utils.py CIRCUIT): 9 heads.
    (0, 1),
    (0, 3),
    (0, 5),
    (5, 5),
    (6, 1),
    (6, 9),
    (7, 10),
    (8, 11),
    (9, 1),
)
ATTN_ONLY_4L_DOCSTRING_HEADS: tuple[tuple[int, int], ...] = (
    # Heimersheim & Janiak 2023, "A circuit for Python docstrings in a 4-layer attention-only
    # transformer" (Alignment Forum), as encoded in ACDC (acdc/docstring/utils.py): 6 heads.
    (0, 5),
    (1, 2),
    (1, 4),
    (2, 0),
    (3, 0),
    (3, 6),
)
PUBLISHED_CIRCUITS = {
    ("gpt2", "ioi"): (GPT2_IOI_HEADS, "Wang et al. 2022 (arXiv:2211.00593)"),
    ("gpt2", "greater_than"): (GPT2_GREATER_THAN_HEADS, "Hanna et al. 2023 (arXiv:2305.00586)"),
    ("attn-only-4l", "docstring"): (ATTN_ONLY_4L_DOCSTRING_HEADS, "Heimersheim & Janiak 2023"),
}


def head_mask_from_list(heads, n_layers: int, n_heads: int) -> np.ndarray:
    """``[n_layers * n_heads]`` bool with True at each (layer, head)."""
    m = np.zeros(n_layers * n_heads, bool)
    for layer, head in heads:
        if not (0 <= layer < n_layers and 0 <= head < n_heads):
            raise ValueError(f"head ({layer}, {head}) is outside a model with {n_layers} layers x {n_heads} heads")
        m[layer * n_heads + head] = True
    return m


def head_names(n_layers: int, n_heads: int) -> list[str]:
    """``"L.H"`` names in flattened order."""
    return [f"{layer}.{head}" for layer in range(n_layers) for head in range(n_heads)]


def top_k_mask(scores: np.ndarray, k: int) -> np.ndarray:
    """Bool mask of the ``k`` highest scores (ties broken by index)."""
    scores = np.asarray(scores)
    if not 1 <= k <= scores.size:
        raise ValueError(f"k must be in [1, {scores.size}], got {k}")
    m = np.zeros(scores.size, bool)
    m[np.argsort(-scores, kind="stable")[:k]] = True
    return m


# ---------------------------------------------------------------------------------------------------
# Evaluation


def average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks with ties given their average rank (like scipy.stats.rankdata)."""
    x = np.asarray(x, np.float64)
    order = np.argsort(x, kind="stable")
    sorted_x = x[order]
    ranks = np.empty(x.size, np.float64)
    starts = np.flatnonzero(np.r_[True, sorted_x[1:] != sorted_x[:-1]])
    ends = np.r_[starts[1:], x.size]
    for s, e in zip(starts, ends):
        ranks[order[s:e]] = (s + 1 + e) / 2.0
    return ranks


def roc_auc(scores: np.ndarray, reference: np.ndarray) -> float:
    """Area under the ROC curve: P(score of a reference head > score of another head), ties count 1/2."""
    scores, reference = np.asarray(scores, np.float64), np.asarray(reference, bool)
    if scores.shape != reference.shape:
        raise ValueError(f"scores {scores.shape} and reference {reference.shape} must have the same shape")
    n_pos, n_neg = int(reference.sum()), int((~reference).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("the reference must contain at least one head in and one head out of the circuit")
    r = average_ranks(scores)
    return float((r[reference].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def roc_curve(scores: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false positive rates, true positive rates), one point per distinct threshold, from (0,0) to (1,1)."""
    scores, reference = np.asarray(scores, np.float64), np.asarray(reference, bool)
    thresholds = np.unique(scores)[::-1]
    tpr = [0.0] + [float((reference & (scores >= t)).sum() / reference.sum()) for t in thresholds]
    fpr = [0.0] + [float((~reference & (scores >= t)).sum() / (~reference).sum()) for t in thresholds]
    return np.array(fpr), np.array(tpr)


def _classification(pred: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    tp = float((pred & reference).sum())
    fp = float((pred & ~reference).sum())
    fn = float((~pred & reference).sum())
    tn = float((~pred & ~reference).sum())
    precision = tp / max(tp + fp, 1.0)
    recall = tp / max(tp + fn, 1.0)
    tnr = tn / max(tn + fp, 1.0)
    f1 = 2 * precision * recall / max(precision + recall, 1e-12)
    tpr_tnr_f1 = 2 * recall * tnr / max(recall + tnr, 1e-12)
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "tpr": recall,
        "tnr": tnr,
        "authors_f1_tpr_tnr": tpr_tnr_f1,
    }


def evaluate(scores: np.ndarray, reference: np.ndarray) -> dict:
    """Grade head scores ``[H]`` against a reference circuit (bool mask ``[H]``).

    Returns ``auc``; ``at_k`` (the top ``k = |reference|`` heads) and ``best`` (the threshold of largest
    F1): precision, recall, F1, TPR, TNR and ``authors_f1_tpr_tnr`` — the harmonic mean of TPR and TNR
    that O'Neill & Bui report under the name "F1" (their code's metric; it is not the usual F1).
    """
    scores, reference = np.asarray(scores, np.float64), np.asarray(reference, bool)
    auc = roc_auc(scores, reference)
    k = int(reference.sum())
    at_k = {"k": k, **_classification(top_k_mask(scores, k), reference)}
    best = {"f1": -1.0}
    for t in np.unique(scores):
        c = _classification(scores >= t, reference)
        if c["f1"] > best["f1"]:
            best = {"threshold": float(t), "n_selected": int((scores >= t).sum()), **c}
    best_authors = max(_classification(scores >= t, reference)["authors_f1_tpr_tnr"] for t in np.unique(scores))
    return {"auc": auc, "n_reference": k, "at_k": at_k, "best": best, "best_authors_f1_tpr_tnr": best_authors}


# ---------------------------------------------------------------------------------------------------
# Running the model on a task


def _encode(tokenizer, prompts: list[str], pad_to: int) -> tuple[np.ndarray, np.ndarray]:
    from jsae.models import pad_sequences

    return pad_sequences([tokenizer.encode(p) for p in prompts], tokenizer.pad_id, pad_to=pad_to)


def _pad_length(tokenizer, prompts: list[str], multiple: int = 8) -> int:
    longest = max(len(tokenizer.encode(p)) for p in prompts)
    return -(-longest // multiple) * multiple


@dataclass
class TaskActivations:
    """Per-head activations of a task's prompts, labelled positive/negative.

    acts: ``[H, n, d]`` (rows: the clean prompts the model gets right, then every corrupted prompt).
    positive: ``[n]`` bool. accuracy: fraction of clean prompts the model gets right.
    clean_metric: ``[n_clean]`` task metric on the clean prompts. seconds: wall time of the forwards.
    pair: ``[n_pos]`` for each positive row ``i`` (rows ``0 .. n_pos-1``), the row of its own corrupted
      prompt, so ``(i, pair[i])`` is a clean/corrupted pair (used by the ``*_paired`` scores).
    """

    acts: np.ndarray
    positive: np.ndarray
    accuracy: float
    clean_metric: np.ndarray
    seconds: float
    pair: np.ndarray | None = None


def harvest_task(
    model,
    tokenizer,
    task: Task,
    *,
    point: str = "result",
    positions: str = "mean",
    batch_size: int = 32,
    progress: bool = False,
) -> TaskActivations:
    """Run clean and corrupted prompts once: last-position logits (who is right) and per-head ``point``
    activations reduced over ``positions`` (``"mean"`` or ``"last"``). Positives are the clean prompts
    the model predicts correctly; negatives are all corrupted prompts."""
    if point not in ("result", "z"):
        raise ValueError(f"point must be 'result' or 'z', got {point!r}")
    if positions not in ("mean", "last"):
        raise ValueError(f"positions must be 'mean' or 'last', got {positions!r}")
    t0 = time.perf_counter()
    prompts = task.clean + task.corrupted
    T = _pad_length(tokenizer, prompts)
    tokens, lengths = _encode(tokenizer, prompts, T)
    n = len(prompts)
    spec = HookSpec(capture=(point,), reduce=positions)
    logits_last, acts = [], []
    for i in tqdm(
        range(0, n, batch_size), desc=f"harvest {point} ({n} prompts)", unit="batch", disable=not progress, leave=False
    ):
        tok, lens = tokens[i : i + batch_size], lengths[i : i + batch_size]
        rows = len(lens)
        if rows < batch_size:  # pad the last batch so every batch has one compiled shape
            tok = np.concatenate([tok, np.repeat(tok[:1], batch_size - rows, 0)])
            lens = np.concatenate([lens, np.repeat(lens[:1], batch_size - rows)])
        logits, cache = forward(model, tok, hooks=spec, lengths=lens, logits="last")
        logits_last.append(np.asarray(logits)[:rows])
        acts.append(np.asarray(cache[point])[:, :rows])  # [L, b, H, d]
    logits_last = np.concatenate(logits_last)
    acts = np.concatenate(acts, axis=1)  # [L, n, H, d]
    L, _, Hh, d = acts.shape
    acts = acts.transpose(0, 2, 1, 3).reshape(L * Hh, n, d)
    n_clean = len(task)
    correct = predicts_correctly(logits_last[:n_clean], task.correct)
    metric = np.asarray(task_metric(jnp.asarray(logits_last[:n_clean]), task.correct, task.incorrect, task.metric))
    right = np.flatnonzero(correct)
    keep = np.concatenate([right, n_clean + np.arange(n_clean)])
    positive = np.concatenate([np.ones(len(right), bool), np.zeros(n_clean, bool)])
    pair = len(right) + right  # the corrupted row of each kept clean prompt
    return TaskActivations(acts[:, keep], positive, float(correct.mean()), metric, time.perf_counter() - t0, pair)


# ---------------------------------------------------------------------------------------------------
# Baselines: activation patching, attribution patching, random


@dataclass
class HeadScores:
    """Per-head scores ``[H]`` from one method, with its wall time and details."""

    method: str
    scores: np.ndarray
    seconds: float
    details: dict = field(default_factory=dict)


def _patching_inputs(model, tokenizer, task: Task):
    T = _pad_length(tokenizer, task.clean + task.corrupted, multiple=1)
    clean, lengths = _encode(tokenizer, task.clean, T)
    corrupted, lengths_c = _encode(tokenizer, task.corrupted, T)
    if not np.array_equal(lengths, lengths_c):
        raise ValueError("clean and corrupted prompts must have the same token lengths for patching")
    return jnp.asarray(clean), jnp.asarray(corrupted), jnp.asarray(lengths)


def _last_metric(model, tokens, lengths, correct, incorrect, metric: str, edits) -> Float[Array, ""]:
    """Mean task metric with ``edits`` applied, from the last-position residual (no full-vocabulary
    logits at every position)."""
    logits, _ = forward(model, tokens, hooks=HookSpec(edits=edits), lengths=lengths, logits="last")
    return task_metric(logits, correct, incorrect, metric).mean()


@eqx.filter_jit
def _patch_each_head(model, clean, lengths, correct, incorrect, metric, masks, source, heads_per_batch):
    """``[n_masks]`` metrics, patching ``source`` into the heads of each ``masks[i]`` ``[L, H]``."""
    run = lambda m: _last_metric(
        model,
        clean,
        lengths,
        correct,
        incorrect,
        metric,  # noqa: E731
        {"result": (Replace(m, source),)},
    )
    return jax.lax.map(run, masks, batch_size=heads_per_batch)


@eqx.filter_jit
def _metric_and_head_grad(model, clean, lengths, correct, incorrect, metric, source):
    """Metric at the clean run and its gradient w.r.t. per-head interpolation weights ``[L, H]``."""
    cfg = model.cfg
    f = lambda a: _last_metric(
        model,
        clean,
        lengths,
        correct,
        incorrect,
        metric,  # noqa: E731
        {"result": (Replace(a, source),)},
    )
    return jax.value_and_grad(f)(jnp.zeros((cfg.n_layers, cfg.n_heads), jnp.float32))


@eqx.filter_jit
def _capture_result(model, tokens, lengths):
    _, cache = forward(model, tokens, hooks=HookSpec(capture=("result",)), lengths=lengths, logits=False)
    return cache["result"]  # [L, B, T, H, D]


def _answers(task: Task):
    return jnp.asarray(task.correct), jnp.asarray(task.incorrect)


def activation_patching(
    model, tokenizer, task: Task, *, heads_per_batch: int = 10, heads_per_call: int = 30, progress: bool = False
) -> HeadScores:
    """Patch each head's ``result`` (all positions) from the corrupted run into the clean run, one head
    at a time, batched over heads (``lax.map`` of a vectorised forward, ``heads_per_batch`` heads per
    forward); score = normalised effect ``(m_clean - m_patched) / (m_clean - m_corrupted)`` of the mean
    task metric ``m`` (1 = the head alone carries the whole effect; negative = patching it helps).

    The heads go through ``heads_per_call`` at a time (one compiled shape; the last call is padded with
    empty masks), so ``progress=True`` can show a progress bar."""
    t0 = time.perf_counter()
    cfg = model.cfg
    clean, corrupted, lengths = _patching_inputs(model, tokenizer, task)
    correct, incorrect = _answers(task)
    source = _capture_result(model, corrupted, lengths)
    m_clean = float(_last_metric(model, clean, lengths, correct, incorrect, task.metric, {}))
    m_corr = float(_last_metric(model, corrupted, lengths, correct, incorrect, task.metric, {}))
    H = cfg.n_layers * cfg.n_heads
    per_call = -(-min(heads_per_call, H) // heads_per_batch) * heads_per_batch
    n_calls = -(-H // per_call)
    masks = jnp.eye(n_calls * per_call, H, dtype=jnp.float32).reshape(n_calls, per_call, cfg.n_layers, cfg.n_heads)
    patched = []
    for chunk in tqdm(
        masks,
        desc=f"activation patching ({H} heads, {len(task)} prompts)",
        unit="call",
        disable=not progress,
        leave=False,
    ):
        patched.append(
            np.asarray(
                _patch_each_head(model, clean, lengths, correct, incorrect, task.metric, chunk, source, heads_per_batch)
            )
        )
    patched = np.concatenate(patched)[:H]
    effect = (m_clean - patched) / (m_clean - m_corr)
    return HeadScores(
        "activation_patching",
        effect,
        time.perf_counter() - t0,
        {"metric_clean": m_clean, "metric_corrupted": m_corr, "n_prompts": len(task)},
    )


def attribution_patching(model, tokenizer, task: Task) -> HeadScores:
    """First-order estimate of :func:`activation_patching` for every head at once (Nanda 2023): the
    gradient of the metric w.r.t. a per-head interpolation ``result + a (result_corrupted - result)`` at
    ``a = 0``, i.e. ``sum_positions grad . (corrupted - clean)``. Two forwards + one backward."""
    t0 = time.perf_counter()
    clean, corrupted, lengths = _patching_inputs(model, tokenizer, task)
    correct, incorrect = _answers(task)
    source = _capture_result(model, corrupted, lengths)
    m_corr = float(_last_metric(model, corrupted, lengths, correct, incorrect, task.metric, {}))
    m_clean, grad = _metric_and_head_grad(model, clean, lengths, correct, incorrect, task.metric, source)
    m_clean = float(m_clean)
    effect = -np.asarray(grad).reshape(-1) / (m_clean - m_corr)
    return HeadScores(
        "attribution_patching",
        effect,
        time.perf_counter() - t0,
        {"metric_clean": m_clean, "metric_corrupted": m_corr, "n_prompts": len(task)},
    )


def random_scores(key, n_heads_total: int) -> HeadScores:
    """Uniform random scores: the chance baseline (expected AUC 0.5)."""
    t0 = time.perf_counter()
    s = np.asarray(jax.random.uniform(key, (n_heads_total,)))
    return HeadScores("random", s, time.perf_counter() - t0)


# ---------------------------------------------------------------------------------------------------
# Discrete SAE codes

SAE_METHODS = ("sae_shared", "sae_per_head", "sae_ensemble", "sae_edges", "sae_shared_paired", "sae_per_head_paired")
PAIRED_METHODS = ("sae_shared_paired", "sae_per_head_paired")


@dataclass(frozen=True)
class SAECodeConfig:
    """SAE settings for discovery (defaults: O'Neill & Bui's).

    d_sae: latents (200). l1: the paper's L1 coefficient lambda (0.02; 0.05 for docstring), whose loss
      is ``mean_{b,i} (x - x_hat)^2 + lambda * mean_b sum_j |f_j|``. jsae's ReLU loss is
      ``mean_b sum_i (x - x_hat)^2 + c * mean_b sum_j f_j ||W_dec_j||``, i.e. ``d_in`` times theirs
      when ``c = lambda * d_in`` and decoder rows have unit norm (``unit_norm_decoder=True`` here), so
      ``sparsity_coef = l1 * d_in``.
    epochs: full-batch Adam steps (500); lr (1e-3). n_train: training prompts, half positive and half
      negative (10). ensemble_l1 / ensemble_seeds: the ensemble's grid (member 0 is the paper's SAE).
    node_score: "raw", "softmax" or "normalised" (see :func:`jsae.analysis.codes.node_scores`).
    per_head_d_sae: latents of each per-head SAE (jsae addition; 10 training rows per head do not need
      200 latents, and 270 x 576 x 200 parameters make Adam memory-bound).
    per_head_l1: lambda of the per-head SAEs (0.01). Each head's activations are first standardised
      (:func:`standardise_heads`: minus the mean of its training rows, scaled to mean norm sqrt(d)), so
      one lambda suits heads whose output norms differ by 100x and the SAE spends its latents on how
      prompts differ, not on the head's constant offset. (Without centring, a position-averaged head
      output is mostly that offset: with Adam at lr 1e-3 the zero-initialised b_dec cannot reach it in
      500 steps, every latent dies and explained variance is far below 0. On SmolLM2 IOI/greater-than
      lambda 0.01 gives EV ~0.88 and L0 ~2.4 with 16 latents; 0.03 gives L0 ~1 and EV ~0.47.)
    per_head_epochs / per_head_lr: the per-head SAEs' full-batch Adam steps (100) and rate (5e-3). On
      SmolLM2 IOI activations (measured while choosing them: 8 seeds at 100 steps, 2 at 500), 100 steps
      at 5e-3 rank heads as well as the paper's 500 at 1e-3 (paired-code AUC 0.858 vs 0.843) in a fifth
      of the training time (0.9 s vs 4.5 s for 270 SAEs).
    normalise_heads: scale each head's activations to unit mean norm before the shared SAE (jsae
      addition; off = the paper).
    """

    d_sae: int = 200
    per_head_d_sae: int = 16
    per_head_l1: float = 0.01
    per_head_epochs: int = 100
    per_head_lr: float = 5e-3
    normalise_heads: bool = False
    l1: float = 0.02
    epochs: int = 500
    lr: float = 1e-3
    n_train: int = 10
    ensemble_l1: tuple[float, ...] = (0.02, 0.05)
    ensemble_seeds: int = 2
    node_score: str = "softmax"


def _training_rows(key, positive: np.ndarray, n_train: int) -> np.ndarray:
    """Indices of ``n_train`` prompts: half positives, half negatives, shuffled."""
    pos, neg = np.flatnonzero(positive), np.flatnonzero(~positive)
    n_pos = min(len(pos), n_train // 2)
    n_neg = min(len(neg), n_train - n_pos)
    if n_pos == 0 or n_neg == 0:
        raise ValueError(
            f"need positive and negative prompts to train on; got {len(pos)} positives "
            f"(the model is right on none of the clean prompts?) and {len(neg)} negatives"
        )
    k1, k2, k3 = jax.random.split(key, 3)
    rows = np.concatenate(
        [
            np.asarray(jax.random.choice(k1, pos, (n_pos,), replace=False)),
            np.asarray(jax.random.choice(k2, neg, (n_neg,), replace=False)),
        ]
    )
    return rows[np.asarray(jax.random.permutation(k3, len(rows)))]


def standardise_heads(acts: Float[np.ndarray, "H n d"], rows: np.ndarray) -> Float[np.ndarray, "H n d"]:
    """Per head ``h``: ``(acts[h] - mu_h) * s_h`` with ``mu_h`` the mean of ``acts[h, rows]`` and ``s_h``
    such that the centred training rows have mean norm ``sqrt(d)`` (a head that never varies stays 0)."""
    acts = np.asarray(acts, np.float32)
    mu = acts[:, rows].mean(axis=1, keepdims=True)
    centred = acts - mu
    spread = np.linalg.norm(centred[:, rows], axis=-1).mean(axis=1)
    scale = np.where(spread > 0, np.sqrt(acts.shape[-1]) / np.maximum(spread, 1e-30), 0.0)
    return (centred * scale[:, None, None]).astype(np.float32)


def _train_saes(key, data, n_saes: int, sparsity, d_sae: int, epochs: int, lr: float):
    """``n_saes`` unit-norm ReLU SAEs trained full-batch on ``data`` (``[n, d]`` shared or ``[N, n, d]``)."""
    d_in = data.shape[-1]
    rows = data.shape[-2]
    sae = init_stack("relu", key, n_saes, d_in, d_sae, unit_norm_decoder=True)
    tc = TrainConfig(
        steps=epochs,
        batch_size=rows,
        lr=lr,
        sparsity_coef=sparsity,
        grad_clip=None,
        chunk_steps=epochs,
        dead_after_tokens=rows * epochs + 1,
    )
    return train(sae, data, tc, progress=False)


def sae_code_scores(
    key,
    acts: np.ndarray,
    positive: np.ndarray,
    method: str,
    cfg: SAECodeConfig = SAECodeConfig(),
    pair: np.ndarray | None = None,
) -> HeadScores:
    """Head scores from discrete SAE codes.

    acts: ``[H, n, d]`` per-head activations of all prompts; positive: ``[n]`` bool.
    method: ``"sae_shared"`` (one SAE for every head, the paper), ``"sae_per_head"`` (one SAE per head,
      all trained at once), ``"sae_ensemble"`` (shared SAEs over seeds x L1 values, mean of each
      member's scores normalised to max 1), ``"sae_edges"`` (shared SAE, heads ranked by their mean
      normalised edge score over all partners, see :func:`jsae.analysis.codes.heads_from_edges`);
      ``"sae_shared_paired"`` / ``"sae_per_head_paired"`` (jsae additions: the same SAEs, heads scored by
      the fraction of clean/corrupted prompt pairs whose code changes,
      :func:`jsae.analysis.codes.paired_code_changes`; need ``pair``).
    pair: ``[n_pos]`` the corrupted row of each positive row (:attr:`TaskActivations.pair`).
    """
    if method not in SAE_METHODS:
        raise ValueError(f"unknown SAE method {method!r}; choose one of {', '.join(SAE_METHODS)}")
    if method in PAIRED_METHODS and (pair is None or len(pair) != int(np.sum(positive))):
        raise ValueError(
            f"method {method!r} needs pair: the corrupted row of each of the {int(np.sum(positive))} "
            "positive rows (TaskActivations.pair from harvest_task)"
        )
    t0 = time.perf_counter()
    H, n, d = acts.shape
    if cfg.normalise_heads:
        acts = acts / np.maximum(np.linalg.norm(acts, axis=-1).mean(axis=1), 1e-12)[:, None, None]
    k_rows, k_sae = jax.random.split(key)
    rows = _training_rows(k_rows, positive, cfg.n_train)
    train_acts = acts[:, rows]  # [H, n_train, d]
    details: dict = {"n_train": len(rows)}
    if method in ("sae_per_head", "sae_per_head_paired"):
        standard = standardise_heads(acts, rows)
        result = _train_saes(
            k_sae, standard[:, rows], H, cfg.per_head_l1 * d, cfg.per_head_d_sae, cfg.per_head_epochs, cfg.per_head_lr
        )
        codes = codes_mod.discretise(result.sae, standard, per_head=True)
        if method == "sae_per_head_paired":
            scores = codes_mod.paired_code_changes(codes, np.flatnonzero(positive), pair)
        else:
            scores = codes_mod.node_scores(codes, positive, cfg.per_head_d_sae, cfg.node_score)
    else:
        shared = train_acts.reshape(H * len(rows), d)
        if method == "sae_ensemble":
            l1s = [l1 for _ in range(cfg.ensemble_seeds) for l1 in cfg.ensemble_l1]
        else:
            l1s = [cfg.l1]
        result = _train_saes(k_sae, shared, len(l1s), [l * d for l in l1s], cfg.d_sae, cfg.epochs, cfg.lr)
        members = []
        for i in range(len(l1s)):
            sae_i = jax.tree.map(lambda x: x[i] if eqx.is_array(x) else x, result.sae)
            codes = codes_mod.discretise(sae_i, acts, per_head=False)
            if method == "sae_edges":
                scores = codes_mod.heads_from_edges(
                    codes_mod.edge_scores(codes, jnp.asarray(positive), normalised=True)
                )
            else:
                raw = codes_mod.node_scores(codes, positive, cfg.d_sae, "raw")
                members.append(raw / jnp.maximum(raw.max(), 1.0))
        if method == "sae_ensemble":
            scores = jnp.mean(jnp.stack(members), axis=0)
            details["ensemble_l1"] = l1s
        elif method == "sae_shared":
            scores = codes_mod.node_scores(codes, positive, cfg.d_sae, cfg.node_score)
        elif method == "sae_shared_paired":
            scores = codes_mod.paired_code_changes(codes, np.flatnonzero(positive), pair)
    details.update(
        {k: float(np.mean(v)) for k, v in result.metrics.items() if k in ("l0", "explained_variance", "dead_fraction")}
    )
    details["train_seconds"] = result.seconds
    return HeadScores(method, np.asarray(scores, np.float64), time.perf_counter() - t0, details)


def activation_difference_scores(
    acts: Float[np.ndarray, "H n d"], positive: np.ndarray, pair: np.ndarray
) -> HeadScores:
    """No SAE, no codes: per head, the mean distance between each positive prompt's activation and its
    own corruption's, over the head's typical spread (mean distance of its activations from their mean).

    A diagnostic for the SAE-code methods: it reads the same activations, so it shows how far any score
    built only from "which heads change between clean and corrupted prompts" gets (without the
    model's downstream computation, which the patching methods use)."""
    t0 = time.perf_counter()
    acts = np.asarray(acts, np.float32)
    clean = np.flatnonzero(positive)
    if pair is None or len(pair) != len(clean):
        raise ValueError(
            f"activation_difference needs pair: the corrupted row of each of the {len(clean)} positive "
            "rows (TaskActivations.pair from harvest_task)"
        )
    change = np.linalg.norm(acts[:, clean] - acts[:, pair], axis=-1).mean(axis=1)
    spread = np.linalg.norm(acts - acts.mean(axis=1, keepdims=True), axis=-1).mean(axis=1)
    scores = np.where(spread > 0, change / np.maximum(spread, 1e-30), 0.0)
    return HeadScores("activation_difference", scores.astype(np.float64), time.perf_counter() - t0)


ACTIVATION_METHODS = (*SAE_METHODS, "activation_difference")  # scored from harvested per-head activations
DISCOVERY_METHODS = (*ACTIVATION_METHODS, "attribution_patching", "activation_patching", "random")


def discover(
    model,
    tokenizer,
    task: Task,
    method: str = "sae_shared",
    *,
    key=None,
    sae_config: SAECodeConfig = SAECodeConfig(),
    point: str = "result",
    positions: str = "mean",
    activations: TaskActivations | None = None,
) -> HeadScores:
    """Per-head circuit scores ``[n_layers * n_heads]`` for ``task`` by ``method``.

    SAE methods harvest per-head activations (or reuse ``activations``) and score discrete codes; their
    ``seconds`` include the harvest. Patching methods run on all of ``task``'s prompts; ``random`` is
    the chance baseline.
    """
    key = jax.random.key(0) if key is None else key
    if method not in DISCOVERY_METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(DISCOVERY_METHODS)}")
    if method == "activation_patching":
        return activation_patching(model, tokenizer, task)
    if method == "attribution_patching":
        return attribution_patching(model, tokenizer, task)
    if method == "random":
        return random_scores(key, model.cfg.n_layers * model.cfg.n_heads)
    harvest_seconds = 0.0
    if activations is None:
        activations = harvest_task(model, tokenizer, task, point=point, positions=positions)
        harvest_seconds = activations.seconds
    if method == "activation_difference":
        found = activation_difference_scores(activations.acts, activations.positive, activations.pair)
    else:
        found = sae_code_scores(key, activations.acts, activations.positive, method, sae_config, activations.pair)
    found.details.update(
        {
            "harvest_seconds": harvest_seconds,
            "model_accuracy": activations.accuracy,
            "n_pos": int(activations.positive.sum()),
            "n_neg": int((~activations.positive).sum()),
        }
    )
    found.seconds += harvest_seconds
    return found


# ---------------------------------------------------------------------------------------------------
# Comparing every method against one reference


def reference_mask(reference: HeadScores, k: int) -> np.ndarray:
    """The reference circuit from activation patching: the ``k`` heads of largest ``|effect|`` (heads
    that hurt the task count too, like the negative name movers of IOI)."""
    return top_k_mask(np.abs(reference.scores), k)


def ranking_scores(found: HeadScores) -> np.ndarray:
    """Scores to rank heads by: ``|effect|`` for the patching methods, the scores otherwise."""
    return np.abs(found.scores) if found.method.endswith("patching") else found.scores


def compare_methods(
    model,
    tokenizer,
    task: Task,
    reference_task: Task | None,
    *,
    methods=DISCOVERY_METHODS,
    key=None,
    sae_config: SAECodeConfig = SAECodeConfig(),
    reference_k: int | None = None,
    reference_heads: np.ndarray | None = None,
    reference_name: str = "activation_patching",
    attribution_prompts: int = 32,
    point: str = "result",
    positions: str = "mean",
    equal_prompts_method: str | None = None,
    progress: bool = False,
    log=print,
) -> dict:
    """Run ``methods`` on ``task`` and grade each against a reference circuit.

    The reference is ``reference_heads`` (a bool mask ``[H]``, e.g. a published circuit, named
    ``reference_name``) or, when None, the ``reference_k`` heads (default 10% of all heads) of largest
    ``|effect|`` under activation patching on ``reference_task``.
    equal_prompts_method: an SAE method to also run (harvest + train + score) on ``reference_task``'s own
    prompts, timed against activation patching of every head on those same prompts; reported under
    ``"speed_at_equal_prompts"`` (with its AUC against the reference); skipped when activation patching
    does not run (a published reference without ``"activation_patching"`` in ``methods``).
    Returns ``{"task", "n_pos", "n_neg", "model_accuracy", "methods": {name: {"auc", "seconds",
    "top_heads", "scores"}}, "reference"}`` plus, under ``"_details"``, each method's full
    :func:`evaluate` output and settings.
    """
    key = jax.random.key(0) if key is None else key
    cfg = model.cfg
    names = head_names(cfg.n_layers, cfg.n_heads)
    H = len(names)
    unknown = [m for m in methods if m not in DISCOVERY_METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; choose from {', '.join(DISCOVERY_METHODS)}")
    found: dict[str, HeadScores] = {}
    patching = reference_heads is None or "activation_patching" in methods
    same = None
    if equal_prompts_method is not None and patching:
        if reference_task is None:
            raise ValueError("equal_prompts_method needs the reference prompts (reference_task)")
        # first, so that it pays for its compilations as activation patching pays for its own
        same = discover(
            model,
            tokenizer,
            reference_task,
            equal_prompts_method,
            key=key,
            sae_config=sae_config,
            point=point,
            positions=positions,
        )
    activations = harvest_task(model, tokenizer, task, point=point, positions=positions, progress=progress)
    log(
        f"  harvested {activations.acts.shape[1]} prompts x {H} heads in {activations.seconds:.1f} s "
        f"(model accuracy {activations.accuracy:.2f})"
    )
    for i, method in enumerate(m for m in methods if m != "activation_patching"):
        mkey = jax.random.fold_in(key, i)
        if method in ACTIVATION_METHODS:
            found[method] = discover(
                model, tokenizer, task, method, key=mkey, sae_config=sae_config, activations=activations
            )
            found[method].seconds += activations.seconds  # discovery time includes the harvest
        elif method == "attribution_patching":
            found[method] = attribution_patching(
                model, tokenizer, task.subset(range(min(attribution_prompts, len(task))))
            )
        else:
            found[method] = discover(model, tokenizer, task, method, key=mkey)
        log(f"  {method:<22s} {found[method].seconds:7.1f} s")
    if patching:
        if reference_task is None:
            raise ValueError("activation patching needs reference prompts (reference_task)")
        patched = activation_patching(model, tokenizer, reference_task, progress=progress)
        found["activation_patching"] = patched
        log(f"  {'activation_patching':<22s} {patched.seconds:7.1f} s ({len(reference_task)} prompts)")
    if reference_heads is None:
        k = reference_k or max(1, round(0.1 * H))
        mask = reference_mask(found["activation_patching"], k)
        reference_name = "activation_patching"
    else:
        mask = np.asarray(reference_heads, bool)
        k = int(mask.sum())
    out = {
        "task": task.name,
        "n_pos": int(activations.positive.sum()),
        "n_neg": int((~activations.positive).sum()),
        "model_accuracy": activations.accuracy,
        "methods": {},
        "reference": reference_name,
    }
    details = {
        "reference_k": k,
        "reference_prompts": len(reference_task) if reference_task else 0,
        "task_note": task.note,
        "reference_heads": [names[i] for i in np.flatnonzero(mask)],
        "evaluation": {},
        "method_details": {},
    }
    for name, f in found.items():
        s = ranking_scores(f)
        ev = evaluate(s, mask)
        order = np.argsort(-s, kind="stable")
        out["methods"][name] = {
            "auc": ev["auc"],
            "seconds": f.seconds,
            "top_heads": [names[i] for i in order[:k]],
            "scores": {names[i]: float(f.scores[i]) for i in range(H)},
        }
        details["evaluation"][name] = ev
        details["method_details"][name] = f.details
    if same is not None:
        ap_seconds = found["activation_patching"].seconds
        out["speed_at_equal_prompts"] = {
            "n_prompts": len(reference_task),
            "method": equal_prompts_method,
            "sae_seconds": same.seconds,
            "activation_patching_seconds": ap_seconds,
            "speedup": ap_seconds / same.seconds,
            "sae_auc": roc_auc(same.scores, mask),
            "sae_harvest_seconds": same.details["harvest_seconds"],
        }
        log(
            f"  equal prompts ({len(reference_task)} clean + corrupted): {equal_prompts_method} {same.seconds:.1f} s "
            f"vs activation patching {ap_seconds:.1f} s ({ap_seconds / same.seconds:.1f}x)"
        )
    out["_details"] = details
    return out


def plot_roc(results: list[dict], path, title: str = "") -> None:
    """ROC curves of every method (one panel per task result from :func:`compare_methods`)."""
    from jsae.plots import figure, save

    fig, axes = figure(5 * len(results), 4.5, ncols=len(results))
    for ax, res in zip(np.atleast_1d(axes), results):
        names = list(next(iter(res["methods"].values()))["scores"])
        ref = np.isin(names, res["_details"]["reference_heads"])
        for method, m in res["methods"].items():
            if method == res["reference"]:
                continue
            s = np.array([m["scores"][h] for h in names])
            s = np.abs(s) if method.endswith("patching") else s
            fpr, tpr = roc_curve(s, ref)
            ax.plot(fpr, tpr, label=f"{method} (AUC {m['auc']:.2f}, {m['seconds']:.0f} s)")
        ax.plot([0, 1], [0, 1], "k:", lw=0.8)
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        ax.set_title(f"{res['task']}: vs {res['reference']} ({res['_details']['reference_k']} heads)", fontsize=9)
        ax.legend(fontsize=7, loc="lower right")
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    save(fig, path)
