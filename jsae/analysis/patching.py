"""Activation patching as array programs: task metrics with chosen heads replaced, per prompt.

One compiled program evaluates ``K`` head masks on ``B`` prompts (``lax.map`` over the masks, a few of them
vectorised per forward). Activation patching of every head is the identity matrix of masks with the
corrupted run's cache as the value; a faithfulness curve is the complements of top-k sets
(:mod:`jsae.analysis.faithfulness`). Per-prompt metrics give each head's effect a standard error, so a
reference built from many prompts says which heads are certain.
"""

from __future__ import annotations

from dataclasses import dataclass

import equinox as eqx
import jax
import numpy as np
from jaxtyping import Array, Float, Int

from jsae.models import HookSpec, Replace, forward
from jsae.tasks import task_metric
from jsae.tasks.base import Metric


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
