"""Per-head activations of a task's clean and corrupted prompts: what the activation methods score."""

from __future__ import annotations

from dataclasses import dataclass

import jax
import numpy as np

from jsae.models import harvest
from jsae.models.hooks import Reduce
from jsae.tasks import Task, predicts_correctly, task_metric


@dataclass
class TaskActivations:
    """Per-head activations of a task's prompts, labelled positive/negative.

    acts: ``[H, n, d]`` (rows: the clean prompts the model gets right, then every corrupted prompt).
    positive: ``[n]`` bool. accuracy: fraction of clean prompts the model gets right.
    clean_metric: ``[n_clean]`` task metric on the clean prompts.
    pair: ``[n_pos]`` for each positive row ``i`` (rows ``0 .. n_pos-1``), the row of its own corrupted
      prompt, so ``(i, pair[i])`` is a clean/corrupted pair (used by the ``*_paired`` scores).
    point: the hook point the rows come from, ``"result"`` or ``"z"``.
    """

    acts: np.ndarray
    positive: np.ndarray
    accuracy: float
    clean_metric: np.ndarray
    pair: np.ndarray | None = None
    point: str = "result"


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
    """Run clean and corrupted prompts once (:func:`jsae.models.harvest`): last-position logits (who
    is right) and per-head ``point`` activations reduced over ``positions`` (``"mean"`` or ``"last"``).
    Positives are the clean prompts the model predicts correctly; negatives are all corrupted prompts."""
    if point not in ("result", "z"):
        raise ValueError(f"point must be 'result' or 'z', got {point!r}")
    if positions not in ("mean", "last"):
        raise ValueError(f"positions must be 'mean' or 'last', got {positions!r}")
    prompts = task.clean + task.corrupted
    n = len(prompts)
    acts, logits_last = harvest(
        model,
        [tokenizer.encode(p) for p in prompts],
        point=point,
        positions=positions,
        last_logits=True,
        batch_size=batch_size,
        progress=progress,
        desc=f"harvest {point} ({n} prompts)",
    )  # [L*H, n, d], [n, V]
    n_clean = len(task)
    correct = predicts_correctly(logits_last[:n_clean], task.correct)
    metric = np.asarray(_task_metric(logits_last[:n_clean], task.correct, task.incorrect, task.metric))
    right = np.flatnonzero(correct)
    keep = np.concatenate([right, n_clean + np.arange(n_clean)])
    positive = np.concatenate([np.ones(len(right), bool), np.zeros(n_clean, bool)])
    pair = len(right) + right  # the corrupted row of each kept clean prompt
    return TaskActivations(acts[:, keep], positive, float(correct.mean()), metric, pair, point)
