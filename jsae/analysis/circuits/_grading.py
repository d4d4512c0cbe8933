"""Grading head scores against a reference circuit: ROC AUC and curve, precision/recall/F1 at k and at the
best threshold."""

from __future__ import annotations

import numpy as np


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
