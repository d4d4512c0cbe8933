"""Circuit discovery on SmolLM2-135M (270 heads): discrete SAE codes vs attribution patching vs random,
each graded against head-level activation patching (the causal reference; SmolLM2 has no published
circuit). Tasks: IOI, greater-than and docstring.

    python experiments/circuits_smollm2.py            # -> results/circuits_smollm2.json + .png
    python experiments/circuits_smollm2.py --tasks docstring   # rerun one task, keep the others' results

Settings: 200 clean + 200 corrupted prompts for discovery (positives = clean prompts the model gets
right); activation patching of every head on 12 other prompts (a different seed); reference circuit =
the 27 heads (10%) of largest |normalised patching effect|; attribution patching on 32 prompts.
Speed at equal prompt counts: sae_per_head_paired is also run (harvest + train + score) on the 12
reference prompts themselves and timed against activation patching of every head on those prompts
(key "speed_at_equal_prompts" per task). activation_difference is the no-SAE diagnostic (how far a
score built only from which heads change between clean and corrupted prompts gets).

    python experiments/circuits_smollm2.py --reference-repeat   # + how reproducible the reference is

--reference-repeat also patches every head on 12 more prompts (seed 2) and grades that second
activation-patching ranking against the reference (key "reference_repeat"): the AUC a perfect method
could expect, given that the reference itself comes from 12 prompts.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax
import numpy as np

from jsae.runtime import prepare_process

prepare_process()  # one CPU device per core, persistent compilation cache

from jsae.analysis.circuits import (
    DISCOVERY_METHODS,
    METHODS,
    SAECodeConfig,
    activation_patching,
    compare_methods,
    discover,
    harvest_task,
    head_names,
    ranking_scores,
    reference_mask,
    roc_auc,
    roc_curve,
    run_methods,
)
from jsae.models import load
from jsae.rundir import to_jsonable
from jsae.tasks import docstring, greater_than, ioi

TASKS = {"ioi": ioi, "greater_than": greater_than, "docstring": docstring}
N_PROMPTS = 200
N_REFERENCE = 12
OUT = Path(__file__).resolve().parent.parent / "results"


def run_comparison(
    model,
    tok,
    task,
    reference_task,
    methods,
    *,
    key,
    sae_config,
    reference_heads,
    reference_k,
    point,
    positions,
    equal_prompts_method,
    progress=True,
    log=print,
) -> dict:
    """Every method on ``task`` (timed), activation patching on ``reference_task``, graded against the
    reference; returns the JSON record (``"_details"`` holds the per-method evaluation)."""
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--reference-repeat",
        action="store_true",
        help="also grade activation patching on 12 other prompts against the reference",
    )
    ap.add_argument(
        "--tasks",
        nargs="+",
        choices=tuple(TASKS),
        default=tuple(TASKS),
        help="tasks to run (default: all); the results of the others are kept from the existing JSON",
    )
    args = ap.parse_args()
    t0 = time.perf_counter()
    model, tok, _ = load("smollm2-135m")
    results, details = {}, {}
    old_path = OUT / "circuits_smollm2.json"
    if set(args.tasks) != set(TASKS) and old_path.is_file():
        old = json.loads(old_path.read_text())
        for name in TASKS:
            if name not in args.tasks and name in old:
                results[name], details[name] = old[name], old["settings"]["details"][name]
    for name in args.tasks:
        gen = TASKS[name]
        print(f"{name}:")
        task, reference_task = gen(tok, N_PROMPTS, seed=0), gen(tok, N_REFERENCE, seed=1)
        res = run_comparison(
            model,
            tok,
            task,
            reference_task,
            DISCOVERY_METHODS,
            key=jax.random.key(0),
            sae_config=SAECodeConfig(),
            reference_heads=None,
            reference_k=None,
            point="result",
            positions="mean",
            equal_prompts_method="sae_per_head_paired",
            progress=False,
        )
        details[name] = res.pop("_details")
        results[name] = res
        if args.reference_repeat:
            t1 = time.perf_counter()
            again = activation_patching(model, tok, gen(tok, N_REFERENCE, seed=2))
            again_seconds = time.perf_counter() - t1
            reference = np.isin(head_names(model.cfg.n_layers, model.cfg.n_heads), details[name]["reference_heads"])
            res["reference_repeat"] = {
                "n_prompts": N_REFERENCE,
                "seed": 2,
                "seconds": again_seconds,
                "auc": roc_auc(ranking_scores(again), reference),
            }
            print(
                f"  activation patching on 12 other prompts vs the reference: AUC {res['reference_repeat']['auc']:.3f}"
            )
        for method, m in res["methods"].items():
            ev = details[name]["evaluation"][method]
            print(
                f"  {method:<22s} AUC {m['auc']:.3f}  P/R/F1@k {ev['at_k']['precision']:.2f}/"
                f"{ev['at_k']['recall']:.2f}/{ev['at_k']['f1']:.2f}  {m['seconds']:6.1f} s"
            )
    OUT.mkdir(exist_ok=True)
    plot_roc(
        [{**results[t], "_details": details[t]} for t in results],
        OUT / "circuits_smollm2.png",
        "SmolLM2-135M: head rankings vs activation patching",
    )
    results = {name: results[name] for name in TASKS if name in results}
    payload = {
        **results,
        "settings": {
            "model": "smollm2-135m",
            "n_prompts": N_PROMPTS,
            "n_reference_prompts": N_REFERENCE,
            "details": details,
            "total_seconds": time.perf_counter() - t0,
            "tasks_run": list(args.tasks),
        },
    }
    (OUT / "circuits_smollm2.json").write_text(json.dumps(to_jsonable(payload), indent=1))
    print(f"wrote {OUT / 'circuits_smollm2.json'} in {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
