"""Feature absorption of jsae-trained SAEs on SmolLM2-135M (first-letter task), end to end on CPU.

    python experiments/absorption_smollm2.py      # no arguments; times in docs/BENCHMARKS.md and the JSON
    python experiments/absorption_smollm2.py --smoke   # checks that it runs: 300/100 words, 2 tiny SAEs,
                                                       # output to a temporary folder (no findings)

1. Setup (once): load SmolLM2-135M; first-letter ICL prompts for 3000 train / 1000 test words; residual
   stream (resid_post) of layer 3 at the word token; 26-way probe and per-letter F1.
2. Training text: the Python reference manual shipped in the standard library (``pydoc_data.topics``,
   ~465k characters, 120k-token budget -> ~112k tokens after dropping each window's first token), layer-3
   residuals; ReLU-L1 SAEs of widths 1152 and 2304 (2x, 4x d_model), three L1 coefficients each, one
   vmapped stack per width.
3. Per SAE: k-sparse probing (mean-difference selection, k <= 10, tau_fs = 0.03), SAEBench's absorption
   fraction and full-absorption rate over all probe true positives of the letters with probe F1 >= 0.6,
   and the paper's IG-based rate on 2 random candidates per letter (4 IG steps).

Writes results/absorption_smollm2.json (per SAE: width, l0, absorption_fraction, full_absorption,
paper_absorption_rate, n_letters, seconds = this SAE's share of its stack's evaluation time; plus setup and
training times)
and results/absorption_smollm2_vs_l0.png, results/absorption_smollm2_per_letter.png.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import jax

from jsae.runtime import prepare_process

prepare_process()  # one CPU device per core, persistent compilation cache


from jsae.analysis import (
    AbsorptionConfig,
    evaluate_saes,
    plot_absorption,
    prepare_probe_data,
    train_relu_sweep,
    training_activations,
)
from jsae.io import write_json
from jsae.models import load
from jsae.tasks.first_letter import answer_token_ids

LAYER = 3
WIDTHS = [1152, 2304]
SPARSITY = [1.0, 4.0, 16.0]
STEPS, BATCH, LR = 1000, 256, 1e-3
TEXT_TOKENS = 120_000
N_TRAIN, N_TEST = 3000, 1000
PAPER_CANDIDATES, IG_STEPS = 2, 4
OUT = Path(__file__).resolve().parents[1] / "results"
SMOKE = {"widths": [64], "steps": 20, "text_tokens": 2048, "n_train": 300, "n_test": 100}


def main(argv: list[str] | None = None) -> Path:
    """Run the experiment (``argv``: ``[]`` or ``["--smoke"]``, default ``sys.argv``); returns the JSON written."""
    import argparse

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="check that it runs: tiny sizes, a temporary folder")
    smoke = ap.parse_args(argv).smoke
    size = SMOKE if smoke else {"widths": WIDTHS, "steps": STEPS, "text_tokens": TEXT_TOKENS}
    size = {"n_train": N_TRAIN, "n_test": N_TEST, **size}
    out = Path(tempfile.mkdtemp(prefix="jsae-absorption-smoke-")) if smoke else OUT
    t0 = time.perf_counter()
    model, tok, _ = load("smollm2-135m")
    assert tok is not None  # SmolLM2 ships its tokenizer
    data = prepare_probe_data(model, tok, LAYER, n_train=size["n_train"], n_test=size["n_test"], seed=0)
    answer_ids = answer_token_ids(tok)
    setup_s = time.perf_counter() - t0
    print(
        f"setup {setup_s:.1f} s: {len(data.train_letters)} train / {len(data.test_letters)} test words; "
        f"{int((data.probe_f1 >= 0.6).sum())}/26 letters with probe F1 >= 0.6 (mean {data.probe_f1.mean():.3f})"
    )

    t1 = time.perf_counter()
    acts = training_activations(model, tok, LAYER, max_tokens=size["text_tokens"])
    harvest_s = time.perf_counter() - t1
    saes = train_relu_sweep(acts, size["widths"], SPARSITY, steps=size["steps"], batch=BATCH, lr=LR, seed=0)
    train_s = time.perf_counter() - t1 - harvest_s
    print(f"harvested {len(acts)} training tokens in {harvest_s:.1f} s; trained {len(saes)} SAEs in {train_s:.1f} s")

    rows, full = [], []
    cfg = AbsorptionConfig(paper_candidates=PAPER_CANDIDATES, ig_steps=IG_STEPS)
    for entry, r in zip(saes, evaluate_saes(saes, data, model, LAYER, answer_ids, cfg)):
        train_share = entry["train_seconds"]
        row = {
            "width": r["width"],
            "l0": r["l0"],
            "absorption_fraction": r["absorption_fraction"],
            "full_absorption": r["full_absorption"],
            "paper_absorption_rate": r["paper_absorption_rate"],
            "n_letters": r["n_letters"],
            "seconds": r["seconds"],
            "sparsity_coef": entry["sparsity"],
            "mean_split_latents": r["mean_split_latents"],
            "train_seconds": train_share,
            "explained_variance_train": entry["train_metrics"]["explained_variance"],
        }
        rows.append(row)
        full.append({**r, **row})
        print(
            f"  width {row['width']:5d} coef {entry['sparsity']:4.1f}  L0 {row['l0']:7.1f}  "
            f"fraction {row['absorption_fraction']:.3f}  full {row['full_absorption']:.3f}  "
            f"paper {row['paper_absorption_rate']:.3f}  letters {row['n_letters']}  {row['seconds']:.1f} s"
        )
    total = time.perf_counter() - t0
    out.mkdir(exist_ok=True)
    write_json(
        out / "absorption_smollm2.json",
        {
            "model": "smollm2-135m",
            "smoke": smoke,
            "layer": LAYER,
            "setup_seconds": setup_s,
            "harvest_seconds": harvest_s,
            "train_seconds": train_s,
            "total_seconds": total,
            "n_training_tokens": len(acts),
            "training_text": "pydoc_data.topics (Python reference manual in the stdlib)",
            "probe_f1": data.probe_f1,
            "devices": f"{jax.device_count()} x {jax.devices()[0].platform}",
            "saes": rows,
            "per_letter": [
                {"width": f["width"], "sparsity_coef": f["sparsity_coef"], "per_letter": f["per_letter"]} for f in full
            ],
        },
    )
    with tempfile.TemporaryDirectory() as tmp:
        for p in plot_absorption(full, Path(tmp)):
            shutil.copy(p, out / f"absorption_smollm2_{p.stem.removeprefix('absorption_')}.png")
    print(f"total {total:.1f} s; wrote {out / 'absorption_smollm2.json'}")
    return out / "absorption_smollm2.json"


if __name__ == "__main__":
    main()
