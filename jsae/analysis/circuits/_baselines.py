"""The baselines the SAE-code methods are graded against: activation patching (per head, and as an array
program over any head masks with per-prompt metrics and standard errors), attribution patching, the
activation difference (no SAE) and random scores.

One compiled program evaluates ``K`` head masks on ``B`` prompts (``lax.map`` over the masks, a few of them
vectorised per forward). Activation patching of every head is the identity matrix of masks with the
corrupted run's cache as the value; a faithfulness curve is the complements of top-k sets
(:mod:`jsae.analysis._faithfulness`). Per-prompt metrics give each head's effect a standard error, so a
reference built from many prompts says which heads are certain.
"""

from __future__ import annotations

from dataclasses import dataclass

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int
from tqdm.auto import tqdm

from jsae.analysis.circuits._scores import HeadScores
from jsae.models import HookSpec, Replace, forward, pad_sequences
from jsae.tasks import Metric, Task, task_metric


@eqx.filter_jit
def metrics_with_heads_replaced(
    model,
    tokens: Int[Array, "B T"],
    lengths: Int[Array, " B"],
    correct: Int[Array, "B A"],
    incorrect: Int[Array, "B A2"],
    masks: Float[Array, "K L H"],
    value: Float[Array, "L ..."],
    metric: Metric,
    masks_per_batch: int = 4,
) -> Float[Array, "K B"]:
    """The task metric of every prompt ``[K, B]`` with, for each ``masks[i]`` (1 = replace), those heads'
    ``result`` replaced by ``value`` at every position: ``[L, B, T, H, D]`` another run's cache
    (patching), or ``[L, H, D]`` per-head means (mean ablation)."""

    def one(mask):
        spec = HookSpec(edits={"result": (Replace(mask, value),)})
        logits, _ = forward(model, tokens, hooks=spec, lengths=lengths, logits="last")
        return task_metric(logits, correct, incorrect, metric)

    return jax.lax.map(one, masks, batch_size=masks_per_batch)


def single_head_masks(n_layers: int, n_heads: int) -> np.ndarray:
    """``[L*H, L, H]``: mask ``l*H + h`` selects head ``(l, h)`` alone (activation patching of each head)."""
    return np.eye(n_layers * n_heads, dtype=np.float32).reshape(-1, n_layers, n_heads)


@dataclass(frozen=True)
class PatchingEffects:
    """Per-head normalised effects of activation patching and their standard errors.

    effect ``[L*H]`` = mean_i (m_clean_i - m_patched_ih) / (mean m_clean - mean m_corrupted): 1 when patching
    the head alone moves the metric all the way to the corrupted run, negative when patching it helps.
    stderr ``[L*H]``: the standard error of that mean over prompts (sample sd / sqrt(n)), the normalising
    denominator taken as exact. n_prompts, metric_clean, metric_corrupted: the means it was built from.
    """

    effect: np.ndarray
    stderr: np.ndarray
    n_prompts: int
    metric_clean: float
    metric_corrupted: float

    def certain(self, n_se: float = 2.0) -> np.ndarray:
        """``[L*H]`` bool: heads whose effect is at least ``n_se`` standard errors from 0."""
        return np.abs(self.effect) >= n_se * self.stderr

    def top_fraction(self, fraction: float = 0.1) -> np.ndarray:
        """``[L*H]`` bool: the top ``fraction`` of heads by |effect| (the circuit reference)."""
        k = max(1, int(round(fraction * self.effect.size)))
        out = np.zeros(self.effect.size, bool)
        out[np.argsort(-np.abs(self.effect), kind="stable")[:k]] = True
        return out


def patching_effects(
    m_clean: Float[np.ndarray, " n"], m_corrupted: Float[np.ndarray, " n"], m_patched: Float[np.ndarray, "n LH"]
) -> PatchingEffects:
    """Effects and standard errors from per-prompt metrics: clean ``[n]``, corrupted ``[n]`` and with each
    head patched ``[n, L*H]`` (prompts may come from several calls of :func:`metrics_with_heads_replaced`)."""
    m_clean = np.asarray(m_clean, np.float64)
    m_corrupted = np.asarray(m_corrupted, np.float64)
    m_patched = np.asarray(m_patched, np.float64)
    n = m_clean.shape[0]
    if m_corrupted.shape != (n,) or m_patched.ndim != 2 or m_patched.shape[0] != n:
        raise ValueError(
            f"per-prompt metrics disagree: clean {m_clean.shape}, corrupted {m_corrupted.shape}, "
            f"patched {m_patched.shape}; expected [n], [n] and [n, n_heads]"
        )
    if n < 2:
        raise ValueError("a standard error needs at least 2 prompts")
    gap = m_clean.mean() - m_corrupted.mean()
    if abs(gap) < 1e-12:
        raise ValueError("clean and corrupted prompts give the same mean metric: nothing to attribute to heads")
    drop = (m_clean[:, None] - m_patched) / gap  # [n, L*H]
    return PatchingEffects(
        effect=drop.mean(axis=0),
        stderr=drop.std(axis=0, ddof=1) / np.sqrt(n),
        n_prompts=n,
        metric_clean=float(m_clean.mean()),
        metric_corrupted=float(m_corrupted.mean()),
    )


def _encode(tokenizer, prompts: list[str], pad_to: int) -> tuple[np.ndarray, np.ndarray]:
    ids, lengths = pad_sequences([tokenizer.encode(p) for p in prompts], tokenizer.pad_id, pad_to=pad_to)
    return ids, lengths


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
    at a time (:func:`metrics_with_heads_replaced` with :func:`single_head_masks`, ``heads_per_batch`` heads
    per forward); score = normalised effect ``(m_clean - m_patched) / (m_clean - m_corrupted)`` of the mean
    task metric ``m`` (1 = the head alone carries the whole effect; negative = patching it helps).

    The heads go through ``heads_per_call`` at a time (one compiled shape; the last call is padded with
    empty masks), so ``progress=True`` can show a progress bar. For per-prompt effects with standard
    errors on many prompts, see :func:`patching_effects`."""
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
                metrics_with_heads_replaced(
                    model, clean, lengths, correct, incorrect, m, source, task.metric, heads_per_batch
                )
            ).mean(axis=1)
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
