"""Circuit discovery on SmolLM2-135M (270 heads): discrete SAE codes vs attribution patching vs random,
each graded against head-level activation patching (the causal reference; SmolLM2 has no published
circuit). Tasks: IOI and greater-than.

    python experiments/circuits_smollm2.py            # -> results/circuits_smollm2.json + .png

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

from jsae.runtime import prepare_process  # noqa: E402

prepare_process()  # one CPU device per core, persistent compilation cache

from jsae.analysis.circuits import (  # noqa: E402
    DISCOVERY_METHODS,
    activation_patching,
    compare_methods,
    head_names,
    plot_roc,
    ranking_scores,
    roc_auc,
)
from jsae.models import load  # noqa: E402
from jsae.rundir import to_jsonable  # noqa: E402
from jsae.tasks import greater_than, ioi  # noqa: E402

N_PROMPTS = 200
N_REFERENCE = 12
OUT = Path(__file__).resolve().parent.parent / "results"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--reference-repeat",
        action="store_true",
        help="also grade activation patching on 12 other prompts against the reference",
    )
    args = ap.parse_args()
    t0 = time.perf_counter()
    model, tok, _ = load("smollm2-135m")
    results, details = {}, {}
    for name, gen in (("ioi", ioi), ("greater_than", greater_than)):
        print(f"{name}:")
        task, reference_task = gen(tok, N_PROMPTS, seed=0), gen(tok, N_REFERENCE, seed=1)
        res = compare_methods(
            model,
            tok,
            task,
            reference_task,
            methods=DISCOVERY_METHODS,
            key=jax.random.key(0),
            equal_prompts_method="sae_per_head_paired",
        )
        details[name] = res.pop("_details")
        results[name] = res
        if args.reference_repeat:
            again = activation_patching(model, tok, gen(tok, N_REFERENCE, seed=2))
            reference = np.isin(head_names(model.cfg.n_layers, model.cfg.n_heads), details[name]["reference_heads"])
            res["reference_repeat"] = {
                "n_prompts": N_REFERENCE,
                "seed": 2,
                "seconds": again.seconds,
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
    payload = {
        **results,
        "settings": {
            "model": "smollm2-135m",
            "n_prompts": N_PROMPTS,
            "n_reference_prompts": N_REFERENCE,
            "details": details,
            "total_seconds": time.perf_counter() - t0,
        },
    }
    (OUT / "circuits_smollm2.json").write_text(json.dumps(to_jsonable(payload), indent=1))
    print(f"wrote {OUT / 'circuits_smollm2.json'} in {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
