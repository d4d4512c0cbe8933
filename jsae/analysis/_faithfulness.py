"""Faithfulness of a head ranking: keep the top-k heads, ablate every other head, measure what survives.

For a ranking of the ``L*H`` heads and a grid of ``k``, the circuit ``S_k`` is the top-k heads. Every
head outside ``S_k`` has its ``result`` replaced by an ablation value (the corrupted run's activation,
"patch from corrupted", or the head's mean activation, "mean ablation"), at every position, and

    recovered(k) = (m(S_k) - m(S_0)) / (m(S_all) - m(S_0))

is the fraction of the clean task metric ``m`` (mean over prompts) the circuit keeps: 0 with every head
ablated, 1 with none (the clean run). The area under the curve (over ``k / (L*H)``, trapezoids on the grid)
and the smallest ``k`` that recovers a fraction (0.8 in the literature, e.g. the MIB benchmark) summarise
it. A ranking's upper reference is activation patching's own ranking; ``random`` is the floor.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax.numpy as jnp
import numpy as np
from jaxtyping import Float, Int

from jsae.analysis.circuits import metrics_with_heads_replaced
from jsae.tasks import Metric


@dataclass(frozen=True)
class FaithfulnessCurve:
    """recovered ``[K]`` at the circuit sizes ``ks [K]``; ``metric [K]`` the raw mean task metric;
    ``metric_clean`` = m(all heads kept), ``metric_ablated`` = m(no head kept)."""

    ks: np.ndarray
    recovered: np.ndarray
    metric: np.ndarray
    metric_clean: float
    metric_ablated: float
    n_heads: int

    @property
    def area(self) -> float:
        """Area under ``recovered`` over ``k / n_heads`` in [0, 1] (trapezoids between grid points)."""
        x = self.ks / self.n_heads
        y = self.recovered
        return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2))

    def smallest_k(self, fraction: float = 0.8) -> int | None:
        """The smallest grid ``k`` whose circuit recovers at least ``fraction`` (None if none does)."""
        hit = np.flatnonzero(self.recovered >= fraction)
        return int(self.ks[hit[0]]) if hit.size else None


def log_grid(n_heads: int, n_points: int = 16) -> np.ndarray:
    """``0`` and about ``n_points`` circuit sizes from 1 to ``n_heads``, evenly spaced in log k."""
    if n_heads < 1 or n_points < 2:
        raise ValueError(f"need n_heads >= 1 and n_points >= 2, got {n_heads} and {n_points}")
    ks = np.unique(np.round(np.geomspace(1, n_heads, n_points)).astype(int))
    return np.concatenate([[0], ks])


def ablation_masks(scores: Float[np.ndarray, " LH"], ks: Int[np.ndarray, " K"], n_layers: int) -> np.ndarray:
    """``[K, L, H]`` float32 masks, 1 on the heads *outside* the top-``k`` of ``scores`` (ties: lower index
    first, so a ranking is deterministic)."""
    scores = np.asarray(scores, np.float64).reshape(-1)
    n = scores.size
    ks = np.asarray(ks, int)
    if n % n_layers:
        raise ValueError(f"{n} head scores do not split into {n_layers} layers")
    if ks.ndim != 1 or ks.size == 0 or ks.min() < 0 or ks.max() > n:
        raise ValueError(f"ks must be circuit sizes in 0..{n}, got {ks.tolist()}")
    if not np.all(np.isfinite(scores)):
        raise ValueError("head scores must be finite to rank the heads")
    rank = np.empty(n, int)
    rank[np.argsort(-scores, kind="stable")] = np.arange(n)
    masks = (rank[None, :] >= ks[:, None]).astype(np.float32)  # ablate every head ranked k or later
    return masks.reshape(len(ks), n_layers, n // n_layers)


def faithfulness_curve(
    model,
    tokens: Int[np.ndarray, "B T"],
    lengths: Int[np.ndarray, " B"],
    correct: Int[np.ndarray, "B A"],
    incorrect: Int[np.ndarray, "B A2"],
    metric: Metric,
    scores: Float[np.ndarray, " LH"],
    value: Float[np.ndarray, "L ..."],
    ks: Int[np.ndarray, " K"] | None = None,
    *,
    masks_per_batch: int = 4,
) -> FaithfulnessCurve:
    """The faithfulness curve of the ranking ``scores [L*H]`` (row ``l*H + h``) on the clean prompts
    ``tokens``; ``value`` is the ablation (module docstring). ``ks`` defaults to :func:`log_grid`; 0 and
    ``L*H`` are always evaluated (they define the normalisation)."""
    cfg = model.cfg
    n = cfg.n_layers * cfg.n_heads
    if np.asarray(scores).size != n:
        raise ValueError(f"scores must have one entry per head ({n}), got {np.asarray(scores).size}")
    ks = log_grid(n) if ks is None else np.asarray(ks, int)
    ks = np.unique(np.concatenate([[0, n], ks]))
    masks = ablation_masks(scores, ks, cfg.n_layers)
    m = np.asarray(
        metrics_with_heads_replaced(
            model,
            jnp.asarray(tokens),
            jnp.asarray(lengths),
            jnp.asarray(correct),
            jnp.asarray(incorrect),
            jnp.asarray(masks),
            jnp.asarray(value),
            metric,
            masks_per_batch,
        ),
        np.float64,
    ).mean(axis=1)
    m_none, m_all = float(m[0]), float(m[-1])
    if abs(m_all - m_none) < 1e-12:
        raise ValueError(
            "ablating every head does not change the task metric, so no fraction can be recovered; "
            "check the prompts (the model must do the task) and the ablation value"
        )
    return FaithfulnessCurve(ks, (m - m_none) / (m_all - m_none), m, m_all, m_none, n)
