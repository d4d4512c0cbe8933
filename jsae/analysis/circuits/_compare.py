"""Grading several methods against one reference, and the whole comparison workflow (``jsae circuits`` and
``experiments/circuits_smollm2.py``)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import jax
import numpy as np

from jsae.analysis.circuits._baselines import activation_patching
from jsae.analysis.circuits._codes import SAECodeConfig
from jsae.analysis.circuits._grading import evaluate, roc_auc, roc_curve, top_k_mask
from jsae.analysis.circuits._ground_truth import head_names
from jsae.analysis.circuits._harvest import TaskActivations, harvest_task
from jsae.analysis.circuits._methods import METHODS, discover
from jsae.analysis.circuits._scores import HeadScores
from jsae.models.hooks import Reduce
from jsae.tasks import Task

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


def run_comparison(
    model,
    tok,
    task: Task,
    reference_task: Task,
    methods: Sequence[str],
    *,
    key,
    sae_config: SAECodeConfig = SAECodeConfig(),
    reference_heads: tuple[np.ndarray, str] | None = None,
    reference_k: int | None = None,
    point: str = "result",
    positions: Reduce = "mean",
    equal_prompts_method: str | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict:
    """The circuit comparison of ``jsae circuits`` and ``experiments/circuits_smollm2.py``: every method on
    ``task`` (timed, the harvest counted in each activation method's time), activation patching of every
    head on ``reference_task``, all graded against the reference; returns the JSON record (``"_details"``
    holds the per-method evaluation).

    reference_heads: ``(mask [H], name)`` of a given circuit (e.g. a published one), or None for the
      ``reference_k`` (default 10% of the heads) heads of largest activation-patching ``|effect|``.
    equal_prompts_method: also run this method on ``reference_task`` itself and time it against activation
      patching on the same prompts (``"speed_at_equal_prompts"``); None to skip.
    log: where the progress lines go (``print``; ``lambda s: None`` for none).
    """
    cfg = model.cfg
    names = head_names(cfg.n_layers, cfg.n_heads)
    patching = reference_heads is None or "activation_patching" in methods
    same, same_seconds = None, 0.0
    if equal_prompts_method is not None and patching:
        # first, so that it pays for its compilations as activation patching pays for its own
        t0 = time.perf_counter()
        same = discover(
            model,
            tok,
            reference_task,
            equal_prompts_method,
            key=key,
            sae_config=sae_config,
            point=point,
            positions=positions,
        )
        same_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    acts = harvest_task(model, tok, task, point=point, positions=positions, progress=progress)
    harvest_seconds = time.perf_counter() - t0
    log(
        f"  harvested {acts.acts.shape[1]} prompts x {len(names)} heads in {harvest_seconds:.1f} s "
        f"(model accuracy {acts.accuracy:.2f})"
    )
    found, seconds = {}, {}
    t0 = time.perf_counter()
    others = [m for m in methods if m != "activation_patching"]
    for method, f in run_methods(model, tok, task, others, key=key, activations=acts, sae_config=sae_config):
        found[method] = f
        # discovery time includes the harvest
        seconds[method] = time.perf_counter() - t0 + (harvest_seconds if METHODS[method].needs_activations else 0.0)
        log(f"  {method:<22s} {seconds[method]:7.1f} s")
        t0 = time.perf_counter()
    if patching:
        t0 = time.perf_counter()
        found["activation_patching"] = activation_patching(model, tok, reference_task, progress=progress)
        seconds["activation_patching"] = time.perf_counter() - t0
        log(f"  {'activation_patching':<22s} {seconds['activation_patching']:7.1f} s ({len(reference_task)} prompts)")
    if reference_heads is None:
        mask = reference_mask(found["activation_patching"], reference_k or max(1, round(0.1 * len(names))))
        reference_name = "activation_patching"
    else:
        mask, reference_name = reference_heads
    graded = compare_methods(found, mask, reference_name)
    k = int(mask.sum())
    out = {
        "task": task.name,
        "n_pos": int(acts.positive.sum()),
        "n_neg": int((~acts.positive).sum()),
        "model_accuracy": acts.accuracy,
        "methods": {
            m: {
                "auc": graded.auc[m],
                "seconds": seconds[m],
                "top_heads": [names[i] for i in graded.top_heads(m)],
                "scores": {names[i]: float(f.scores[i]) for i in range(len(names))},
            }
            for m, f in found.items()
        },
        "reference": reference_name,
    }
    if same is not None:
        ap = seconds["activation_patching"]
        out["speed_at_equal_prompts"] = {
            "n_prompts": len(reference_task),
            "method": equal_prompts_method,
            "sae_seconds": same_seconds,
            "activation_patching_seconds": ap,
            "speedup": ap / same_seconds,
            "sae_auc": roc_auc(same.scores, mask),
        }
        log(
            f"  equal prompts ({len(reference_task)} clean + corrupted): {equal_prompts_method} {same_seconds:.1f} s "
            f"vs activation patching {ap:.1f} s ({ap / same_seconds:.1f}x)"
        )
    out["_details"] = {
        "reference_k": k,
        "reference_prompts": len(reference_task) if reference_task else 0,
        "task_note": task.note,
        "reference_heads": [names[i] for i in np.flatnonzero(mask)],
        "evaluation": graded.evaluation,
        "method_details": {m: f.info for m, f in found.items()},
    }
    return out


def plot_roc(results: list[dict], path, title: str = "") -> None:
    """ROC curves of every method, one panel per task record of :func:`run_comparison`."""
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
