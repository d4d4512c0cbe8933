"""Circuit discovery on attention heads: discrete SAE codes (O'Neill & Bui 2024) and the baselines it
is graded against (activation patching, attribution patching, random), plus ROC evaluation.

Heads are flattened layer-major: index ``layer * n_heads + head`` (``H = n_layers * n_heads``).
Every method is an entry of :data:`METHODS` (name -> :class:`CircuitMethod`), called with one signature;
:func:`discover` looks it up. Nothing here times, logs or plots: the CLI (``jsae circuits``) and
``experiments/circuits_smollm2.py`` do.

Typical use::

    model, tok, _ = jsae.models.load("smollm2-135m")
    task = jsae.tasks.ioi(tok, 500)
    acts = harvest_task(model, tok, task)                       # once, shared by the activation methods
    found = {m: discover(model, tok, task, m, key=jax.random.key(0), activations=acts)
             for m in ("sae_shared", "activation_difference", "random")}
    patched = activation_patching(model, tok, task.subset(range(16)))
    graded = compare_methods(found, reference_mask(patched, 27))
    print(graded.auc)                                            # {method: AUC}
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int
from tqdm.auto import tqdm

from jsae.analysis import codes as codes_mod
from jsae.models import HookSpec, Replace, forward, map_batches
from jsae.models.hooks import Reduce
from jsae.sae import registry
from jsae.sae.base import SAE
from jsae.sae.registry import init_stack
from jsae.tasks.base import Metric, Task, predicts_correctly, task_metric
from jsae.train import TrainConfig, train
from jsae.train import data as data_mod
from jsae.train.grouping import group_size
from jsae.train.step import init_state, run_chunk

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

    ids, lengths = pad_sequences([tokenizer.encode(p) for p in prompts], tokenizer.pad_id, pad_to=pad_to)
    return ids, lengths


@dataclass
class TaskActivations:
    """Per-head activations of a task's prompts, labelled positive/negative.

    acts: ``[H, n, d]`` (rows: the clean prompts the model gets right, then every corrupted prompt).
    positive: ``[n]`` bool. accuracy: fraction of clean prompts the model gets right.
    clean_metric: ``[n_clean]`` task metric on the clean prompts.
    pair: ``[n_pos]`` for each positive row ``i`` (rows ``0 .. n_pos-1``), the row of its own corrupted
      prompt, so ``(i, pair[i])`` is a clean/corrupted pair (used by the ``*_paired`` scores).
    """

    acts: np.ndarray
    positive: np.ndarray
    accuracy: float
    clean_metric: np.ndarray
    pair: np.ndarray | None = None


@eqx.filter_jit
def _last_logits_and_heads(model, tokens, lengths, *, point: str, positions: Reduce):
    """``[b, V]`` last-position logits and ``[b, L, H, d]`` per-head ``point`` reduced over ``positions``."""
    spec = HookSpec(capture=(point,), reduce=positions)
    logits, cache = forward(model, tokens, hooks=spec, lengths=lengths, logits="last")
    return logits, jnp.moveaxis(cache[point], 1, 0)


_task_metric = jax.jit(task_metric, static_argnums=3)  # one program, not one per operation


def harvest_task(
    model,
    tokenizer,
    task: Task,
    *,
    point: str = "result",
    positions: Reduce = "mean",
    batch_size: int = 32,
    progress: bool = False,
) -> TaskActivations:
    """Run clean and corrupted prompts once (:func:`jsae.models.map_batches`): last-position logits (who
    is right) and per-head ``point`` activations reduced over ``positions`` (``"mean"`` or ``"last"``).
    Positives are the clean prompts the model predicts correctly; negatives are all corrupted prompts."""
    if point not in ("result", "z"):
        raise ValueError(f"point must be 'result' or 'z', got {point!r}")
    if positions not in ("mean", "last"):
        raise ValueError(f"positions must be 'mean' or 'last', got {positions!r}")
    prompts = task.clean + task.corrupted
    n = len(prompts)
    fn = functools.partial(_last_logits_and_heads, point=point, positions=positions)
    logits_last, acts = map_batches(
        fn,
        model,
        [tokenizer.encode(p) for p in prompts],
        batch_size=batch_size,
        progress=progress,
        desc=f"harvest {point} ({n} prompts)",
    )  # [n, V], [n, L, H, d]
    _, L, Hh, d = acts.shape
    acts = acts.transpose(1, 2, 0, 3).reshape(L * Hh, n, d)
    n_clean = len(task)
    correct = predicts_correctly(logits_last[:n_clean], task.correct)
    metric = np.asarray(_task_metric(logits_last[:n_clean], task.correct, task.incorrect, task.metric))
    right = np.flatnonzero(correct)
    keep = np.concatenate([right, n_clean + np.arange(n_clean)])
    positive = np.concatenate([np.ones(len(right), bool), np.zeros(n_clean, bool)])
    pair = len(right) + right  # the corrupted row of each kept clean prompt
    return TaskActivations(acts[:, keep], positive, float(correct.mean()), metric, pair)


# ---------------------------------------------------------------------------------------------------
# Baselines: activation patching, attribution patching, random


@dataclass(frozen=True)
class HeadScores:
    """Per-head scores ``[H]`` from one method, and what it measured on the way (``info``: task metrics
    of the clean and corrupted runs for the patching methods; the SAEs' mean ``l0``,
    ``explained_variance``, ``dead_fraction`` and ``n_train`` for the SAE-code methods)."""

    method: str
    scores: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)


def _patching_inputs(tokenizer, task: Task):
    lens = [len(tokenizer.encode(p)) for p in task.clean + task.corrupted]
    T = max(lens)
    clean, lengths = _encode(tokenizer, task.clean, T)
    corrupted, lengths_c = _encode(tokenizer, task.corrupted, T)
    if not np.array_equal(lengths, lengths_c):
        raise ValueError("clean and corrupted prompts must have the same token lengths for patching")
    return jnp.asarray(clean), jnp.asarray(corrupted), jnp.asarray(lengths)


def _last_metric(model, tokens, lengths, correct, incorrect, metric: Metric, edits) -> Float[Array, ""]:
    """Mean task metric with ``edits`` applied, from the last-position residual (no full-vocabulary
    logits at every position)."""
    logits, _ = forward(model, tokens, hooks=HookSpec(edits=edits), lengths=lengths, logits="last")
    return task_metric(logits, correct, incorrect, metric).mean()


@eqx.filter_jit
def _patch_each_head(model, clean, lengths, correct, incorrect, metric, masks, source, heads_per_batch):
    """``[n_masks]`` metrics, patching ``source`` into the heads of each ``masks[i]`` ``[L, H]``."""

    def run(m):
        return _last_metric(model, clean, lengths, correct, incorrect, metric, {"result": (Replace(m, source),)})

    return jax.lax.map(run, masks, batch_size=heads_per_batch)


@eqx.filter_jit
def _metric_and_head_grad(model, clean, lengths, correct, incorrect, metric, source):
    """Metric at the clean run and its gradient w.r.t. per-head interpolation weights ``[L, H]``."""
    cfg = model.cfg

    def f(a):
        return _last_metric(model, clean, lengths, correct, incorrect, metric, {"result": (Replace(a, source),)})

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
    empty masks), so ``progress=True`` can show a progress bar. For per-prompt effects with standard
    errors on many prompts, see :mod:`jsae.analysis.patching`."""
    cfg = model.cfg
    clean, corrupted, lengths = _patching_inputs(tokenizer, task)
    correct, incorrect = _answers(task)
    source = _capture_result(model, corrupted, lengths)
    m_clean = float(_last_metric(model, clean, lengths, correct, incorrect, task.metric, {}))
    m_corr = float(_last_metric(model, corrupted, lengths, correct, incorrect, task.metric, {}))
    H = cfg.n_layers * cfg.n_heads
    per_call = -(-min(heads_per_call, H) // heads_per_batch) * heads_per_batch
    n_calls = -(-H // per_call)
    masks = jnp.eye(n_calls * per_call, H, dtype=jnp.float32).reshape(n_calls, per_call, cfg.n_layers, cfg.n_heads)
    bar = tqdm(masks, desc=f"activation patching ({H} heads, {len(task)} prompts)", disable=not progress, leave=False)
    patched = np.concatenate(
        [
            np.asarray(
                _patch_each_head(model, clean, lengths, correct, incorrect, task.metric, m, source, heads_per_batch)
            )
            for m in bar
        ]
    )[:H]
    effect = (m_clean - patched) / (m_clean - m_corr)
    return HeadScores(
        "activation_patching",
        effect,
        {"metric_clean": m_clean, "metric_corrupted": m_corr, "n_prompts": len(task)},
    )


def attribution_patching(model, tokenizer, task: Task) -> HeadScores:
    """First-order estimate of :func:`activation_patching` for every head at once (Nanda 2023): the
    gradient of the metric w.r.t. a per-head interpolation ``result + a (result_corrupted - result)`` at
    ``a = 0``, i.e. ``sum_positions grad . (corrupted - clean)``. Two forwards + one backward."""
    clean, corrupted, lengths = _patching_inputs(tokenizer, task)
    correct, incorrect = _answers(task)
    source = _capture_result(model, corrupted, lengths)
    m_corr = float(_last_metric(model, corrupted, lengths, correct, incorrect, task.metric, {}))
    m_clean, grad = _metric_and_head_grad(model, clean, lengths, correct, incorrect, task.metric, source)
    m_clean = float(m_clean)
    effect = -np.asarray(grad).reshape(-1) / (m_clean - m_corr)
    return HeadScores(
        "attribution_patching",
        effect,
        {"metric_clean": m_clean, "metric_corrupted": m_corr, "n_prompts": len(task)},
    )


def random_scores(key, n_heads_total: int) -> HeadScores:
    """Uniform random scores: the chance baseline (expected AUC 0.5)."""
    return HeadScores("random", np.asarray(jax.random.uniform(key, (n_heads_total,))))


# ---------------------------------------------------------------------------------------------------
# Discrete SAE codes


@dataclass(frozen=True)
class SAECodeConfig:
    """SAE settings for discovery (defaults: O'Neill & Bui's, except the per-head SAEs, a jsae addition).

    d_sae: latents (200). l1: the paper's L1 coefficient lambda (0.02; 0.05 for docstring), whose loss
      is ``mean_{b,i} (x - x_hat)^2 + lambda * mean_b sum_j |f_j|``. jsae's ReLU loss is
      ``mean_b sum_i (x - x_hat)^2 + c * mean_b sum_j f_j ||W_dec_j||``, i.e. ``d_in`` times theirs
      when ``c = lambda * d_in`` and decoder rows have unit norm (``unit_norm_decoder=True`` here), so
      ``sparsity_coef = l1 * d_in``.
    epochs: full-batch Adam steps (500); lr (1e-3). n_train: training prompts, half positive and half
      negative (10). ensemble_l1 / ensemble_seeds: the ensemble's grid (member 0 is the paper's SAE).
    node_score: "raw", "softmax" or "normalised" (see :func:`jsae.analysis.codes.node_scores`).
    per_head_d_sae: latents of each per-head SAE (10 training rows per head do not need 200 latents,
      and ``H x d x 200`` parameters make Adam memory-bound).
    per_head_l1: lambda of the per-head SAEs. Each head's activations are first standardised
      (:func:`standardise_heads`: minus the mean of its training rows, scaled to mean norm sqrt(d)), so
      one lambda suits heads whose output norms differ by orders of magnitude and the SAE spends its
      latents on how prompts differ, not on the head's constant offset (without centring, a
      position-averaged head output is mostly that offset, which a zero-initialised ``b_dec`` does not
      reach in a few hundred Adam steps, so every latent dies).
    per_head_epochs / per_head_lr: the per-head SAEs' full-batch Adam steps and rate (chosen on SmolLM2
      IOI activations; docs/BENCHMARKS.md has the comparison with the paper's 500 at 1e-3).
    per_head_basis: train the per-head SAEs in each head's row coordinates (:func:`row_basis`) when the
      rows (clean and corrupted prompts) number at most half the head's width (jsae addition: 20 rows
      of a 576-wide head make the SAEs 29x narrower with the same geometry of the rows; off, or more
      rows: train at full width).
    normalise_heads: scale each head's activations to unit mean norm before the shared SAE (jsae
      addition; off = the paper).
    """

    d_sae: int = 200
    per_head_d_sae: int = 16
    per_head_l1: float = 0.01
    per_head_epochs: int = 100
    per_head_lr: float = 5e-3
    per_head_basis: bool = True
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
    return np.asarray(_draw_rows(key, jnp.asarray(pos), jnp.asarray(neg), n_pos, n_neg))


@functools.partial(jax.jit, static_argnums=(3, 4))
def _draw_rows(key, pos: Int[Array, " P"], neg: Int[Array, " Q"], n_pos: int, n_neg: int) -> Int[Array, " n"]:
    """``n_pos`` of ``pos`` and ``n_neg`` of ``neg`` without replacement, shuffled: one program (three
    eager random calls would be three, each traced and loaded on a process's first call)."""
    k1, k2, k3 = jax.random.split(key, 3)
    rows = jnp.concatenate(
        [jax.random.choice(k1, pos, (n_pos,), replace=False), jax.random.choice(k2, neg, (n_neg,), replace=False)]
    )
    return rows[jax.random.permutation(k3, n_pos + n_neg)]


def standardise_heads(acts: Float[np.ndarray, "H n d"], rows: np.ndarray) -> Float[np.ndarray, "H n d"]:
    """Per head ``h``: ``(acts[h] - mu_h) * s_h`` with ``mu_h`` the mean of ``acts[h, rows]`` and ``s_h``
    such that the centred training rows have mean norm ``sqrt(d)`` (a head that never varies stays 0)."""
    acts = np.asarray(acts, np.float32)
    mu = acts[:, rows].mean(axis=1, keepdims=True)
    centred = acts - mu
    spread = np.linalg.norm(centred[:, rows], axis=-1).mean(axis=1)
    scale = np.where(spread > 0, np.sqrt(acts.shape[-1]) / np.maximum(spread, 1e-30), 0.0)
    return (centred * scale[:, None, None]).astype(np.float32)


def _code_saes(key, n_saes: int, d_in: int, d_sae: int, rows: int, sparsity, epochs: int, lr: float):
    """The untrained stack of ``n_saes`` unit-norm ReLU SAEs and the full-batch run (``epochs`` Adam
    steps on ``rows`` rows, no dead latents) that every code SAE trains with."""
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
    return sae, tc


def _train_saes(key, data, n_saes: int, sparsity, d_sae: int, epochs: int, lr: float):
    """``n_saes`` unit-norm ReLU SAEs trained full-batch on ``data`` (``[n, d]`` shared or ``[N, n, d]``)."""
    sae, tc = _code_saes(key, n_saes, data.shape[-1], d_sae, data.shape[-2], sparsity, epochs, lr)
    return train(sae, data, tc, progress=False)


@dataclass(frozen=True)
class Codes:
    """Discrete codes of every (prompt, head): ``codes [M, n, H]`` from ``M`` SAEs (M = 1 except for the
    ensemble) with ``n_codes`` latents each, and the SAEs' training metrics (``info``)."""

    codes: jax.Array
    n_codes: int
    info: dict[str, Any]


def _train_info(metrics: Mapping[str, Any], rows) -> dict[str, Any]:
    """The SAEs' mean ``l0``, ``explained_variance`` and ``dead_fraction`` (from per-SAE ``metrics``)."""
    keep = ("l0", "explained_variance", "dead_fraction")
    return {"n_train": len(rows), **{k: float(np.mean(v)) for k, v in metrics.items() if k in keep}}


def row_basis(x: Float[Array, "H n d"]) -> Float[Array, "H d n"]:
    """Per head, a basis (columns) of a space holding all ``n <= d`` of its rows: ``x[h] @ Q[h]`` are the
    rows' coordinates, with every distance, norm and inner product of the rows unchanged, and
    ``x[h] @ Q[h] @ Q[h].T == x[h]``.

    Gram-Schmidt on the rows, each orthogonalised twice against the columns so far (orthonormal to
    rounding). A row already in the span of the ones before it gets a zero column, so the nonzero
    columns are orthonormal and the zero ones add nothing. Matmuls only: no LAPACK call to load.
    """
    a = jnp.swapaxes(x, 1, 2).astype(jnp.float32)  # [H, d, n]

    def add_row(j, q):
        row = jax.lax.dynamic_index_in_dim(a, j, axis=2, keepdims=False)  # [H, d]
        v = row
        for _ in range(2):
            v = v - jnp.einsum("hdk,hk->hd", q, jnp.einsum("hdk,hd->hk", q, v))
        norm = jnp.linalg.norm(v, axis=-1, keepdims=True)
        new = norm > 1e-5 * jnp.linalg.norm(row, axis=-1, keepdims=True)
        column = jnp.where(new, v / jnp.where(new, norm, 1.0), 0.0)
        return jax.lax.dynamic_update_index_in_dim(q, column, j, axis=2)

    return jax.lax.fori_loop(0, a.shape[2], add_row, jnp.zeros_like(a))


def fit_per_head(
    key, standard: Float[Array, "H n d"], rows: Int[Array, " m"], sparsity: float, lr: float, *, d_sae, epochs, basis
) -> tuple[SAE, Float[Array, "H n r"], Int[Array, "n H"], dict[str, Float[Array, " H"]]]:
    """One program: a unit-norm ReLU SAE per head trained full-batch on its ``rows`` (``epochs`` Adam
    steps of the trainer's own step, :func:`jsae.train.step.run_chunk`), and every row's code (argmax
    latent). Returns the stack of ``H`` SAEs, the inputs they read (``[H, n, r]``), the codes ``[n, H]``
    and per-SAE metrics (means over the steps, as ``train`` reports a one-chunk run).

    ``basis``: the SAEs read the rows' coordinates in :func:`row_basis` (``r = n``) instead of the rows
    (``r = d``). Every distance, norm and inner product of the rows is the same there, so the
    reconstruction errors, sparsity and codes are those of an SAE on the rows themselves whose
    directions lie in the rows' span, at ``d / n`` times less width.

    On a CPU the program compiles at XLA's backend optimisation level 1 (of 3): about half the compile
    time of level 3 for this small training loop, and no slower to run (figures in docs/BENCHMARKS.md).
    """
    program = _fit_program(jax.default_backend())
    return program(key, standard, rows, sparsity, lr, d_sae=d_sae, epochs=epochs, basis=basis)


@functools.cache
def _fit_program(backend: str):
    options = {"xla_backend_optimization_level": 1} if backend == "cpu" else None
    static = ("sparsity", "lr", "d_sae", "epochs", "basis")
    return jax.jit(_fit_per_head, static_argnames=static, compiler_options=options)


def _fit_per_head(key, standard, rows, sparsity: float, lr: float, *, d_sae: int, epochs: int, basis: bool):
    x = jnp.einsum("hnd,hdr->hnr", standard, row_basis(standard)) if basis else standard
    H, _, d_in = x.shape
    sae, tc = _code_saes(key, H, d_in, d_sae, rows.shape[0], sparsity, epochs, lr)
    hp = {k: jnp.asarray(v) for k, v in tc.per_sae(H, registry.get("relu")).items()}
    state = init_state(sae, tc, hp["lr"], jnp.ones((H,), jnp.float32))
    group = group_size(jax.default_backend(), H, rows.shape[0], d_in, d_sae)
    order = data_mod.chunk_indices(jax.random.key(tc.seed), jnp.int32(0), epochs, rows.shape[0], rows.shape[0])
    state, metrics = run_chunk(
        state,
        hp,
        jnp.int32(0),
        epochs,
        lambda i, own, g: data_mod.gather_batch(own, order[i], g),  # the trainer's order of the rows
        tc,
        group,
        sae_data=x[:, rows],
    )
    codes = jax.vmap(lambda s, v: jnp.argmax(s.encode(v), axis=-1))(state.sae, x).T.astype(jnp.int32)
    return state.sae, x, codes, {k: v.mean(axis=0) for k, v in metrics.items()}


def per_head_codes(key, acts: Float[np.ndarray, "H n d"], rows: np.ndarray, cfg: SAECodeConfig) -> Codes:
    """One SAE per head (all trained at once) on the standardised training ``rows``; codes ``[1, n, H]``.

    With ``cfg.per_head_basis`` and ``n <= d / 2`` rows the SAEs train in the rows' own coordinates
    (:func:`row_basis`, ``d / n`` times narrower) in one program (:func:`fit_per_head`); otherwise at
    full width by ``train`` (its stack split over the devices)."""
    _, n, d = acts.shape
    standard = standardise_heads(acts, rows)
    sparsity, d_sae, epochs, lr = cfg.per_head_l1 * d, cfg.per_head_d_sae, cfg.per_head_epochs, cfg.per_head_lr
    if cfg.per_head_basis and 2 * n <= d:
        _, _, codes, metrics = fit_per_head(
            key, jnp.asarray(standard), jnp.asarray(rows), sparsity, lr, d_sae=d_sae, epochs=epochs, basis=True
        )
        return Codes(codes[None], d_sae, _train_info(metrics, rows))
    result = _train_saes(key, standard[:, rows], acts.shape[0], sparsity, d_sae, epochs, lr)
    codes = codes_mod.discretise(result.sae, standard, per_head=True)
    return Codes(codes[None], d_sae, _train_info(result.metrics, rows))


def shared_codes(
    key, acts: Float[np.ndarray, "H n d"], rows: np.ndarray, cfg: SAECodeConfig, l1s: tuple[float, ...]
) -> Codes:
    """One SAE per entry of ``l1s``, each shared by every head and trained on all heads' training ``rows``
    (all trained at once); codes ``[len(l1s), n, H]``."""
    H, _, d = acts.shape
    shared = acts[:, rows].reshape(H * len(rows), d)
    result = _train_saes(key, shared, len(l1s), [lam * d for lam in l1s], cfg.d_sae, cfg.epochs, cfg.lr)
    codes = codes_mod.discretise_stack(result.sae, acts)
    return Codes(codes, cfg.d_sae, {**_train_info(result.metrics, rows), "l1": list(l1s)})


# How a method scores heads from its codes: (codes [M, n, H], positive [n], pair [n_pos] | None, cfg) -> [H]
CodeScore = Callable[[Codes, np.ndarray, "np.ndarray | None", SAECodeConfig], jax.Array]


def _node(c: Codes, positive, pair, cfg: SAECodeConfig) -> jax.Array:
    return codes_mod.node_scores(c.codes[0], positive, c.n_codes, cfg.node_score)  # pyright: ignore[reportArgumentType]  # node_score is checked there


def _paired(c: Codes, positive, pair, cfg: SAECodeConfig) -> jax.Array:
    return codes_mod.paired_code_changes(c.codes[0], np.flatnonzero(positive), pair)


def _edges(c: Codes, positive, pair, cfg: SAECodeConfig) -> jax.Array:
    return codes_mod.heads_from_edges(codes_mod.edge_scores(c.codes[0], jnp.asarray(positive), normalised=True))


def _ensemble(c: Codes, positive, pair, cfg: SAECodeConfig) -> jax.Array:
    raw = jax.vmap(lambda k: codes_mod.node_scores(k, positive, c.n_codes, "raw"))(c.codes)  # [M, H]
    return jnp.mean(raw / jnp.maximum(raw.max(axis=1, keepdims=True), 1.0), axis=0)


@dataclass(frozen=True)
class SAEMethod:
    """An SAE-code method: which SAEs make the codes (``"per_head"``, ``"shared"`` or ``"ensemble"``), how
    heads are scored from them, and whether it needs the clean/corrupted ``pair`` of each positive."""

    saes: str
    score: CodeScore
    paired: bool = False


SAE_METHODS: dict[str, SAEMethod] = {
    "sae_shared": SAEMethod("shared", _node),  # one SAE for every head (the paper)
    "sae_per_head": SAEMethod("per_head", _node),  # one SAE per head, all trained at once
    "sae_ensemble": SAEMethod("ensemble", _ensemble),  # shared SAEs over seeds x L1 values, mean of max-1 scores
    "sae_edges": SAEMethod("shared", _edges),  # mean normalised edge score over all partners
    "sae_shared_paired": SAEMethod("shared", _paired, paired=True),  # fraction of pairs whose code changes
    "sae_per_head_paired": SAEMethod("per_head", _paired, paired=True),
}
PAIRED_METHODS = tuple(m for m, s in SAE_METHODS.items() if s.paired)


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
    method: a key of :data:`SAE_METHODS`: ``"sae_shared"`` (one SAE for every head, the paper),
      ``"sae_per_head"`` (one SAE per head, all trained at once), ``"sae_ensemble"`` (shared SAEs over
      seeds x L1 values, mean of each member's scores normalised to max 1), ``"sae_edges"`` (shared SAE,
      heads ranked by their mean normalised edge score over all partners, see
      :func:`jsae.analysis.codes.heads_from_edges`); ``"sae_shared_paired"`` / ``"sae_per_head_paired"``
      (jsae additions: the same SAEs, heads scored by the fraction of clean/corrupted prompt pairs whose
      code changes, :func:`jsae.analysis.codes.paired_code_changes`; need ``pair``).
    pair: ``[n_pos]`` the corrupted row of each positive row (:attr:`TaskActivations.pair`).
    """
    if method not in SAE_METHODS:
        raise ValueError(f"unknown SAE method {method!r}; choose one of {', '.join(SAE_METHODS)}")
    spec = SAE_METHODS[method]
    if spec.paired and (pair is None or len(pair) != int(np.sum(positive))):
        raise ValueError(
            f"method {method!r} needs pair: the corrupted row of each of the {int(np.sum(positive))} "
            "positive rows (TaskActivations.pair from harvest_task)"
        )
    acts = np.asarray(acts)
    if cfg.normalise_heads:
        acts = acts / np.maximum(np.linalg.norm(acts, axis=-1).mean(axis=1), 1e-12)[:, None, None]
    k_rows, k_sae = jax.random.split(key)
    rows = _training_rows(k_rows, positive, cfg.n_train)
    if spec.saes == "per_head":
        codes = per_head_codes(k_sae, acts, rows, cfg)
    elif spec.saes == "ensemble":
        codes = shared_codes(k_sae, acts, rows, cfg, tuple(cfg.ensemble_l1) * cfg.ensemble_seeds)
    else:
        codes = shared_codes(k_sae, acts, rows, cfg, (cfg.l1,))
    scores = spec.score(codes, positive, pair, cfg)
    return HeadScores(method, np.asarray(scores, np.float64), codes.info)


def activation_difference_scores(
    acts: Float[np.ndarray, "H n d"], positive: np.ndarray, pair: np.ndarray | None
) -> HeadScores:
    """No SAE, no codes: per head, the mean distance between each positive prompt's activation and its
    own corruption's, over the head's typical spread (mean distance of its activations from their mean).

    A diagnostic for the SAE-code methods: it reads the same activations, so it shows how far any score
    built only from "which heads change between clean and corrupted prompts" gets (without the
    model's downstream computation, which the patching methods use)."""
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
    return HeadScores("activation_difference", scores.astype(np.float64))


# ---------------------------------------------------------------------------------------------------
# The method registry: every method has one signature


@dataclass(frozen=True)
class MethodInputs:
    """What a circuit method may read: the model, tokenizer and task, a jax key, the SAE settings, and
    (for the methods that score harvested activations) the task's :class:`TaskActivations`."""

    model: Any
    tokenizer: Any
    task: Task
    key: jax.Array
    sae_config: SAECodeConfig = SAECodeConfig()
    activations: TaskActivations | None = None

    def acts(self) -> TaskActivations:
        if self.activations is None:
            raise ValueError("this method scores harvested activations; pass activations=harvest_task(...)")
        return self.activations


@dataclass(frozen=True)
class CircuitMethod:
    """A circuit method: ``run(MethodInputs) -> HeadScores``. ``needs_activations``: it scores
    :func:`harvest_task`'s activations (which :func:`discover` harvests when not given); ``signed``: its
    scores are signed effects, so heads rank by ``|score|`` (the patching methods)."""

    run: Callable[[MethodInputs], HeadScores]
    needs_activations: bool = False
    signed: bool = False


def _sae_method(name: str) -> CircuitMethod:
    def run(x: MethodInputs) -> HeadScores:
        a = x.acts()
        return sae_code_scores(x.key, a.acts, a.positive, name, x.sae_config, a.pair)

    return CircuitMethod(run, needs_activations=True)


METHODS: dict[str, CircuitMethod] = {
    **{name: _sae_method(name) for name in SAE_METHODS},
    "activation_difference": CircuitMethod(
        lambda x: activation_difference_scores(x.acts().acts, x.acts().positive, x.acts().pair),
        needs_activations=True,
    ),
    "attribution_patching": CircuitMethod(lambda x: attribution_patching(x.model, x.tokenizer, x.task), signed=True),
    "activation_patching": CircuitMethod(lambda x: activation_patching(x.model, x.tokenizer, x.task), signed=True),
    "random": CircuitMethod(lambda x: random_scores(x.key, x.model.cfg.n_layers * x.model.cfg.n_heads)),
}
ACTIVATION_METHODS = tuple(m for m, c in METHODS.items() if c.needs_activations)
DISCOVERY_METHODS = tuple(METHODS)


def discover(
    model,
    tokenizer,
    task: Task,
    method: str = "sae_shared",
    *,
    key=None,
    sae_config: SAECodeConfig = SAECodeConfig(),
    point: str = "result",
    positions: Reduce = "mean",
    activations: TaskActivations | None = None,
) -> HeadScores:
    """Per-head circuit scores ``[n_layers * n_heads]`` for ``task`` by ``method`` (a key of :data:`METHODS`).

    Methods that score activations use ``activations`` (or harvest them with :func:`harvest_task` at
    ``point``/``positions``); the patching methods run on all of ``task``'s prompts; ``random`` is the
    chance baseline.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    spec = METHODS[method]
    if spec.needs_activations and activations is None:
        activations = harvest_task(model, tokenizer, task, point=point, positions=positions)
    key = jax.random.key(0) if key is None else key
    return spec.run(MethodInputs(model, tokenizer, task, key, sae_config, activations))


# ---------------------------------------------------------------------------------------------------
# Grading methods against one reference


def reference_mask(reference: HeadScores, k: int) -> np.ndarray:
    """The reference circuit from activation patching: the ``k`` heads of largest ``|effect|`` (heads
    that hurt the task count too, like the negative name movers of IOI)."""
    return top_k_mask(np.abs(reference.scores), k)


def ranking_scores(found: HeadScores) -> np.ndarray:
    """Scores to rank heads by: ``|effect|`` for signed methods (the patching ones), the scores otherwise."""
    spec = METHODS.get(found.method)
    return np.abs(found.scores) if spec is not None and spec.signed else np.asarray(found.scores)


@dataclass(frozen=True)
class Comparison:
    """Methods graded against one reference circuit.

    reference: ``[H]`` bool, named ``reference_name``. scores: per method, the ``[H]`` ranking scores
    (:func:`ranking_scores`). evaluation: per method, :func:`evaluate`'s output (AUC, top-k and best-F1
    classification). roc: per method, :func:`roc_curve`'s (false, true positive rates).
    """

    reference: np.ndarray
    reference_name: str
    scores: dict[str, np.ndarray]
    evaluation: dict[str, dict]
    roc: dict[str, tuple[np.ndarray, np.ndarray]]

    @property
    def auc(self) -> dict[str, float]:
        return {m: e["auc"] for m, e in self.evaluation.items()}

    def top_heads(self, method: str, k: int | None = None) -> np.ndarray:
        """The ``k`` (default: the reference's size) best-ranked heads of ``method``, best first."""
        k = int(self.reference.sum()) if k is None else k
        return np.argsort(-self.scores[method], kind="stable")[:k]


def compare_methods(
    found: Mapping[str, HeadScores], reference: np.ndarray, reference_name: str = "activation_patching"
) -> Comparison:
    """Grade every method's :class:`HeadScores` (``{name: scores}``) against ``reference`` (bool ``[H]``:
    :func:`reference_mask` of activation patching, or a published circuit from :func:`head_mask_from_list`)."""
    reference = np.asarray(reference, bool)
    scores = {m: ranking_scores(f) for m, f in found.items()}
    for m, s in scores.items():
        if s.shape != reference.shape:
            raise ValueError(f"method {m!r} scored {s.shape} heads; the reference has {reference.shape}")
    return Comparison(
        reference,
        reference_name,
        scores,
        {m: evaluate(s, reference) for m, s in scores.items()},
        {m: roc_curve(s, reference) for m, s in scores.items()},
    )


def run_methods(
    model,
    tokenizer,
    task: Task,
    methods,
    *,
    key,
    activations: TaskActivations,
    sae_config: SAECodeConfig = SAECodeConfig(),
    attribution_prompts: int = 32,
) -> Iterator[tuple[str, HeadScores]]:
    """``(method, scores)`` for each of ``methods`` on ``task``, lazily, so a caller can time each one.

    Method ``i`` gets the key ``fold_in(key, i)``; the activation methods score ``activations``;
    attribution patching runs on the first ``attribution_prompts`` prompts of ``task``.
    """
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
    for i, method in enumerate(methods):
        sub = task.subset(range(min(attribution_prompts, len(task)))) if method == "attribution_patching" else task
        mkey = jax.random.fold_in(key, i)
        yield method, discover(model, tokenizer, sub, method, key=mkey, sae_config=sae_config, activations=activations)
