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
    python experiments/circuits_smollm2.py --smoke    # checks that it runs: IOI, 8 + 2 prompts, 5-step SAEs,
                                                      # output to a temporary folder (no findings)

--reference-repeat also patches every head on 12 more prompts (seed 2) and grades that second
activation-patching ranking against the reference (key "reference_repeat"): the AUC a perfect method
could expect, given that the reference itself comes from 12 prompts.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

from jsae.runtime import prepare_process

prepare_process()  # one CPU device per core, persistent compilation cache

from jsae.analysis.circuits import (
    DISCOVERY_METHODS,
    SAECodeConfig,
    activation_patching,
    head_names,
    plot_roc,
    ranking_scores,
    roc_auc,
    run_comparison,
)
from jsae.io import write_json
from jsae.models import load
from jsae.tasks import docstring, greater_than, ioi

TASKS = {"ioi": ioi, "greater_than": greater_than, "docstring": docstring}
N_PROMPTS = 200
N_REFERENCE = 12
OUT = Path(__file__).resolve().parent.parent / "results"
SMOKE_PROMPTS, SMOKE_REFERENCE = 8, 2
SMOKE_SAE = SAECodeConfig(epochs=5, per_head_epochs=5, ensemble_l1=(0.02,), ensemble_seeds=1)


def main(argv: list[str] | None = None) -> Path:
    """Run the experiment (``argv``: its command line, default ``sys.argv``); returns the JSON file written."""
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
    ap.add_argument(
        "--smoke",
        action="store_true",
        help="check that it runs: IOI only (unless --tasks), 8 + 2 prompts, 5-step SAEs, a temporary folder",
    )
    args = ap.parse_args(argv)
    out_dir, n_prompts, n_reference, sae_config = OUT, N_PROMPTS, N_REFERENCE, SAECodeConfig()
    if args.smoke:
        out_dir = Path(tempfile.mkdtemp(prefix="jsae-circuits-smollm2-smoke-"))
        n_prompts, n_reference, sae_config = SMOKE_PROMPTS, SMOKE_REFERENCE, SMOKE_SAE
        if argv is None or "--tasks" not in argv:
            args.tasks = ["ioi"]
    t0 = time.perf_counter()
    model, tok, _ = load("smollm2-135m")
    results, details = {}, {}
    old_path = out_dir / "circuits_smollm2.json"
    if set(args.tasks) != set(TASKS) and old_path.is_file():
        old = json.loads(old_path.read_text())
        for name in TASKS:
            if name not in args.tasks and name in old:
                results[name], details[name] = old[name], old["settings"]["details"][name]
    for name in args.tasks:
        gen = TASKS[name]
        print(f"{name}:")
        task, reference_task = gen(tok, n_prompts, seed=0), gen(tok, n_reference, seed=1)
        res = run_comparison(
            model,
            tok,
            task,
            reference_task,
            DISCOVERY_METHODS,
            key=jax.random.key(0),
            sae_config=sae_config,
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
            again = activation_patching(model, tok, gen(tok, n_reference, seed=2))
            again_seconds = time.perf_counter() - t1
            reference = np.isin(head_names(model.cfg.n_layers, model.cfg.n_heads), details[name]["reference_heads"])
            res["reference_repeat"] = {
                "n_prompts": n_reference,
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
    out_dir.mkdir(exist_ok=True)
    plot_roc(
        [{**results[t], "_details": details[t]} for t in results],
        out_dir / "circuits_smollm2.png",
        "SmolLM2-135M: head rankings vs activation patching",
    )
    results = {name: results[name] for name in TASKS if name in results}
    payload = {
        **results,
        "settings": {
            "model": "smollm2-135m",
            "n_prompts": n_prompts,
            "n_reference_prompts": n_reference,
            "smoke": args.smoke,
            "details": details,
            "total_seconds": time.perf_counter() - t0,
            "tasks_run": list(args.tasks),
        },
    }
    write_json(old_path, payload)
    print(f"wrote {old_path} in {time.perf_counter() - t0:.0f} s")
    return old_path


if __name__ == "__main__":
    main()
