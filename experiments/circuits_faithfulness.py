"""Grade every circuit method against the 100-prompt reference, and draw each ranking's faithfulness curve.

    python experiments/circuits_reference.py     # first: results/circuits_reference.json
    python experiments/circuits_smollm2.py       # and the methods' rankings: results/circuits_smollm2.json
    python experiments/circuits_faithfulness.py  # -> results/circuits_faithfulness.json + .png
    python experiments/circuits_faithfulness.py --smoke  # checks that it runs: IOI, 4 prompts, 3 rankings,
                                                         # 4 circuit sizes, a temporary folder

Grading: each method's ranking (discovered from 200 prompts, seed 0) as an AUC against three references:
the 12-prompt activation patching of circuits_smollm2.json (the old column), the top 10% by |effect| of
the 100-prompt activation patching (seed 3, held out), and the heads whose 100-prompt effect is at least
2 standard errors from 0.

Faithfulness (``jsae.analysis._faithfulness``): on 40 more held-out prompts (seed 4, in neither the
discovery nor the reference set), keep each ranking's top-k heads and patch every other head's ``result``
from the corrupted prompt, for k on a log grid from 0 to 270; report the fraction of the clean metric
recovered, the area under the curve and the smallest k recovering 80%. activation patching's own
100-prompt ranking is the upper reference, ``random`` the floor.
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

import jax.numpy as jnp

from jsae.analysis import faithfulness_curve, log_grid
from jsae.analysis.circuits import head_names, roc_auc
from jsae.io import write_json
from jsae.models import capture, forward, load, pad_sequences
from jsae.plots import line_panels
from jsae.tasks import greater_than, held_out, ioi

OUT = Path(__file__).resolve().parent.parent / "results"
TASKS = {"ioi": ioi, "greater_than": greater_than}
N_FAITHFUL, FAITHFUL_SEED = 40, 4
EXCLUDE = ((0, 200), (3, 400))  # (seed, n) of the discovery pool and of the reference draw
FULL = {"tasks": tuple(TASKS), "n_prompts": N_FAITHFUL, "k_points": 16, "methods": None}
SMOKE = {"tasks": ("ioi",), "n_prompts": 4, "k_points": 3, "methods": ("activation_difference", "random")}


def rankings(methods: dict, names: list[str], reference: dict) -> dict[str, np.ndarray]:
    """Per-method ranking scores in head order (|effect| for the patching methods), plus the 100-prompt
    activation patching ranking."""
    out = {}
    for m, r in methods.items():
        s = np.array([r["scores"][h] for h in names], np.float64)
        out[m] = np.abs(s) if m.endswith("patching") else s
    out["activation_patching_100"] = np.abs(np.asarray(reference["effect"]))
    return out


def main(argv: list[str] | None = None) -> Path:
    """Run the experiment (``argv`` as on the command line, default ``sys.argv``); returns the JSON written."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--plot-only", action="store_true", help="redraw the PNG from the JSON")
    ap.add_argument("--smoke", action="store_true", help="check that it runs: tiny sizes, a temporary folder")
    args = ap.parse_args(argv)
    if args.plot_only:
        plot(json.loads((OUT / "circuits_faithfulness.json").read_text()), OUT)
        return OUT / "circuits_faithfulness.json"
    size = SMOKE if args.smoke else FULL
    out_dir = Path(tempfile.mkdtemp(prefix="jsae-circuits-faithfulness-smoke-")) if args.smoke else OUT
    t_start = time.perf_counter()
    main_results = json.loads((OUT / "circuits_smollm2.json").read_text())
    reference = json.loads((OUT / "circuits_reference.json").read_text())
    model, tok, _ = load("smollm2-135m")
    L, H = model.cfg.n_layers, model.cfg.n_heads
    names = head_names(L, H)
    ks = log_grid(L * H, size["k_points"])
    out = {}
    for name in size["tasks"]:
        gen = TASKS[name]
        ref = reference[name]
        top10 = np.zeros(L * H, bool)
        top10[ref["reference_top10"]] = True
        certain = np.zeros(L * H, bool)
        certain[ref["certain_2se"]] = True
        methods = main_results[name]["methods"]
        if size["methods"] is not None:
            methods = {m: methods[m] for m in size["methods"]}
        ranks = rankings(methods, names, ref)
        grading = {
            m: {
                "auc_reference_12": main_results[name]["methods"][m]["auc"]
                if m in main_results[name]["methods"]
                else None,
                "auc_reference_100": roc_auc(s, top10),
                "auc_certain_2se": roc_auc(s, certain),
            }
            for m, s in ranks.items()
        }
        task = held_out(tok, gen, size["n_prompts"], FAITHFUL_SEED, EXCLUDE)
        clean = [tok.encode(p) for p in task.clean]
        T = max(len(s) for s in clean)
        c, lengths = pad_sequences(clean, tok.pad_id, pad_to=T)
        x, _ = pad_sequences([tok.encode(p) for p in task.corrupted], tok.pad_id, pad_to=T)
        _, cache = forward(model, jnp.asarray(x), hooks=capture("result"), lengths=jnp.asarray(lengths), logits=False)
        source = np.asarray(cache["result"])
        curves = {}
        for m, s in ranks.items():
            t0 = time.perf_counter()
            curve = faithfulness_curve(model, c, lengths, task.correct, task.incorrect, task.metric, s, source, ks)
            curves[m] = {
                "ks": curve.ks.tolist(),
                "recovered": curve.recovered.tolist(),
                "area": curve.area,
                "k_80": curve.smallest_k(0.8),
                "seconds": time.perf_counter() - t0,
            }
            print(
                f"{name} {m:26s} area {curve.area:.3f}  k(80%) {curve.smallest_k(0.8)}  "
                f"AUC ref100 {grading[m]['auc_reference_100']:.3f}  certain {grading[m]['auc_certain_2se']:.3f}"
            )
        out[name] = {
            "grading": grading,
            "faithfulness": curves,
            "metric_clean": curve.metric_clean,
            "metric_all_patched": curve.metric_ablated,
            "n_reference_top10": int(top10.sum()),
            "n_certain_2se": int(certain.sum()),
            "faithfulness_prompts": size["n_prompts"],
        }
    out["settings"] = {
        "model": "smollm2-135m",
        "rankings_from": "results/circuits_smollm2.json (200 discovery prompts, seed 0)",
        "reference_from": "results/circuits_reference.json (100 prompts, seed 3)",
        "smoke": args.smoke,
        "tasks_run": list(size["tasks"]),
        "faithfulness_prompts": f"{size['n_prompts']} held-out prompts, seed {FAITHFUL_SEED}",
        "ablation": "every head outside the top k patched from the corrupted prompt (result, all positions)",
        "ks": ks.tolist(),
        "total_seconds": time.perf_counter() - t_start,
    }
    write_json(out_dir / "circuits_faithfulness.json", out)
    plot(out, out_dir)
    print(f"wrote {out_dir / 'circuits_faithfulness.json'} and .png")
    return out_dir / "circuits_faithfulness.json"


def plot(out: dict, out_dir: Path) -> None:
    panels = {
        name: {m: (np.asarray(v["ks"]), np.asarray(v["recovered"]), None) for m, v in out[name]["faithfulness"].items()}
        for name in TASKS
        if name in out
    }
    line_panels(
        out_dir / "circuits_faithfulness.png",
        panels,
        xlabel="heads kept (k, symlog)",
        ylabel="fraction of clean metric recovered",
        xlog=True,
        hline=0.8,
        title="SmolLM2-135M: faithfulness of each ranking (others patched from corrupted)",
    )


if __name__ == "__main__":
    main()
