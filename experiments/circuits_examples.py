"""Does circuit discovery need only 5-10 examples (O'Neill & Bui 2024)? AUC against the number of prompts.

    python experiments/circuits_reference.py   # first: the 100-prompt reference
    python experiments/circuits_examples.py    # -> results/circuits_examples.json + .png

For IOI and greater-than on SmolLM2-135M: n = 5, 10, 20, 50, 200 discovery prompts (clean + their
corruptions), drawn from the seed-0 pool of 200 by ``Task.sample(n, seed)`` for 5 seeds (the draws for
growing n are nested under one seed); the seed also keys the SAE training. Methods: the paper's shared
SAE (``sae_shared``), per-head paired codes (``sae_per_head_paired``) and ``activation_difference``
(no SAE). Each ranking is graded by AUC against the 100-prompt activation-patching reference (top 10%
by |effect|), against its heads certain at 2 standard errors, and against the old 12-prompt reference.

    python experiments/circuits_examples.py --methods sae_per_head_paired   # rerun one method

reruns only the named methods and keeps every other method's results from the JSON.

    python experiments/circuits_examples.py --smoke   # checks that it runs: IOI, n = 4, 2 seeds,
                                                      # a temporary folder
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from jsae.runtime import prepare_process

prepare_process()  # one CPU device per core, persistent compilation cache

import jax

from jsae.analysis.circuits import discover, harvest_task, head_names, roc_auc
from jsae.io import write_json
from jsae.models import load
from jsae.plots import line_panels
from jsae.tasks import greater_than, ioi

OUT = Path(__file__).resolve().parent.parent / "results"
TASKS = {"ioi": ioi, "greater_than": greater_than}
SIZES = (5, 10, 20, 50, 200)
SEEDS = (0, 1, 2, 3, 4)
METHODS = ("sae_shared", "sae_per_head_paired", "activation_difference")
POOL_SEED, POOL_N = 0, 200
FULL = {"tasks": tuple(TASKS), "sizes": SIZES, "seeds": SEEDS}
SMOKE = {"tasks": ("ioi",), "sizes": (4,), "seeds": (0, 1)}
SMOKE_METHODS = ("sae_per_head_paired", "activation_difference")  # the shared SAE's 500 steps are not tiny


def masks(name: str, names: list[str]) -> dict[str, np.ndarray]:
    """The three references of ``name`` as ``[L*H]`` bool masks."""
    ref = json.loads((OUT / "circuits_reference.json").read_text())[name]
    old = json.loads((OUT / "circuits_smollm2.json").read_text())["settings"]["details"][name]["reference_heads"]
    out = {}
    for key, heads in (("reference_100", ref["reference_top10"]), ("certain_2se", ref["certain_2se"])):
        m = np.zeros(len(names), bool)
        m[heads] = True
        out[key] = m
    out["reference_12"] = np.isin(np.asarray(names), old)
    return out


def main(argv: list[str] | None = None) -> Path:
    """Run the experiment (``argv`` as on the command line, default ``sys.argv``); returns the JSON written."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS), help="methods to (re)run")
    ap.add_argument("--smoke", action="store_true", help="check that it runs: tiny sizes, a temporary folder")
    args = ap.parse_args(argv)
    methods = SMOKE_METHODS if args.smoke else tuple(args.methods)
    size = SMOKE if args.smoke else FULL
    sizes, seeds = size["sizes"], size["seeds"]
    out_dir = Path(tempfile.mkdtemp(prefix="jsae-circuits-examples-smoke-")) if args.smoke else OUT
    t_start = time.perf_counter()
    model, tok, _ = load("smollm2-135m")
    names = head_names(model.cfg.n_layers, model.cfg.n_heads)
    path = out_dir / "circuits_examples.json"
    kept = json.loads(path.read_text()) if set(methods) != set(METHODS) and not args.smoke else {}
    shown = [m for m in METHODS if m in methods or kept]  # the methods the JSON and the plot hold
    results, panels = {}, {}
    for name in size["tasks"]:
        gen = TASKS[name]
        refs = masks(name, names)
        pool = gen(tok, POOL_N, seed=POOL_SEED)
        runs = {m: {n: [] for n in sizes} for m in methods}
        for seed in seeds:
            for n in sizes:
                task = pool.sample(n, seed)
                t0 = time.perf_counter()
                acts = harvest_task(model, tok, task)
                harvest_s = time.perf_counter() - t0
                for method in methods:
                    t0 = time.perf_counter()
                    found = discover(model, tok, task, method, key=jax.random.key(seed), activations=acts)
                    row = {f"auc_{k}": roc_auc(found.scores, v) for k, v in refs.items()}
                    row.update(seconds=time.perf_counter() - t0 + harvest_s, n_positive=int(acts.positive.sum()))
                    runs[method][n].append(row)
                print(
                    f"{name} seed {seed} n {n:3d}: "
                    + "  ".join(f"{m} {runs[m][n][-1]['auc_reference_100']:.3f}" for m in methods)
                )
        summary = {
            m: {
                str(n): {
                    **{
                        f"{k}_{stat}": float(f([r[k] for r in rows]))
                        for k in ("auc_reference_100", "auc_certain_2se", "auc_reference_12")
                        for stat, f in (("mean", np.mean), ("sd", lambda v: np.std(v, ddof=1)))
                    },
                    "seconds_mean": float(np.mean([r["seconds"] for r in rows])),
                    "runs": rows,
                }
                for n, rows in per_n.items()
            }
            for m, per_n in runs.items()
        }
        results[name] = {m: summary[m] if m in summary else kept[name][m] for m in shown}
        summary = results[name]
        panels[name] = {
            m: (
                np.asarray(sizes, float),
                np.asarray([summary[m][str(n)]["auc_reference_100_mean"] for n in sizes]),
                np.asarray([summary[m][str(n)]["auc_reference_100_sd"] for n in sizes]),
            )
            for m in shown
        }
    results["settings"] = {
        "model": "smollm2-135m",
        "smoke": args.smoke,
        "tasks_run": list(size["tasks"]),
        "sizes": sizes,
        "seeds": seeds,
        "pool": f"seed {POOL_SEED}, {POOL_N} prompts; Task.sample(n, seed)",
        "reference_100": "results/circuits_reference.json: top 10% by |effect| on 100 held-out prompts",
        "certain_2se": "heads with |effect| >= 2 standard errors on those prompts",
        "reference_12": "the 12-prompt reference of results/circuits_smollm2.json",
        "total_seconds": time.perf_counter() - t_start,
        "methods_run": list(methods),
    }
    if kept:
        results["settings"]["kept_from_before"] = {
            "methods": [m for m in METHODS if m not in methods],
            "total_seconds": kept["settings"].get("total_seconds"),
        }
    write_json(path, results)
    line_panels(
        out_dir / "circuits_examples.png",
        panels,
        xlabel="discovery prompts (clean + corrupted pairs)",
        ylabel="AUC vs 100-prompt patching (mean ± sd, 5 seeds)",
        xlog=True,
        hline=0.5,
        title="SmolLM2-135M: how many examples does discovery need?",
    )
    print(f"wrote {path} and .png")
    return path


if __name__ == "__main__":
    main()
