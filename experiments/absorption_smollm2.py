"""Feature absorption of jsae-trained SAEs on SmolLM2-135M (first-letter task), end to end on CPU.

    python experiments/absorption_smollm2.py      # no arguments; times in docs/BENCHMARKS.md and the JSON

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

import numpy as np

from jsae.analysis.absorption_run import (
    AbsorptionConfig,
    prepare_probe_data,
    train_relu_sweep,
    training_activations,
)
from jsae.models import load
from jsae.rundir import write_json
from jsae.tasks.first_letter import answer_token_ids

LAYER = 3
WIDTHS = [1152, 2304]
SPARSITY = [1.0, 4.0, 16.0]
STEPS, BATCH, LR = 1000, 256, 1e-3
TEXT_TOKENS = 120_000
N_TRAIN, N_TEST = 3000, 1000
PAPER_CANDIDATES, IG_STEPS = 2, 4
OUT = Path(__file__).resolve().parents[1] / "results"


def evaluate_saes(entries: list[dict], data, model, layer: int, answer_ids, cfg) -> list[dict]:
    """Both metrics for every SAE, one :func:`absorption_run` per stack of same-shaped SAEs; JSON-ready rows
    in the order of ``entries`` (``seconds``: the stack's evaluation time divided by its size)."""
    from jsae.analysis.absorption_run import absorption_run
    from jsae.sae import concat

    groups: dict[tuple, list[int]] = {}
    for i, e in enumerate(entries):
        groups.setdefault((type(e["sae"]).__name__, int(e["sae"].d_sae)), []).append(i)
    rows: list[dict] = [{} for _ in entries]
    for idx in groups.values():
        t0 = time.perf_counter()
        res = absorption_run(
            concat([entries[i]["sae"] for i in idx]), data, model=model, layer=layer, answer_ids=answer_ids, cfg=cfg
        )
        seconds = (time.perf_counter() - t0) / len(idx)
        for j, i in enumerate(idx):
            rows[i] = {
                "width": int(entries[i]["sae"].d_sae),
                "l0": float(res.l0[j]),
                **{k: (int(v[j]) if k == "n_letters" else float(v[j])) for k, v in res.summary.items()},
                "seconds": seconds,
                "k_sparse_f1": res.k_sparse_f1[j],
                "per_letter": res.per_letter(j),
            }
    return rows


def plot_results(results: list[dict], run: Path) -> list[Path]:
    """absorption vs L0 (coloured by width) and per-letter absorption fraction, as PNGs."""
    from jsae.plots import figure, save
    from jsae.tasks.first_letter import LETTERS

    fig, axes = figure(13, 4, ncols=3)
    widths = sorted({r["width"] for r in results})
    for metric, ax in zip(("absorption_fraction", "full_absorption", "paper_absorption_rate"), axes):
        for w in widths:
            rs = sorted((r for r in results if r["width"] == w), key=lambda r: r["l0"])
            ax.plot([r["l0"] for r in rs], [r[metric] for r in rs], "o-", label=f"width {w}")
        ax.set_xscale("log")
        ax.set_xlabel("L0 on first-letter tokens")
        ax.set_ylabel(metric.replace("_", " "))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("feature absorption vs sparsity and width")
    paths = [save(fig, run / "absorption_vs_l0.png", dpi=110)]

    fig, ax = figure(12, 4)
    bw = 0.8 / max(1, len(results))
    for i, r in enumerate(results):
        vals = [row["absorption_fraction"] for row in r["per_letter"]]
        ax.bar(np.arange(26) + i * bw, np.nan_to_num(vals), bw, label=f"w{r['width']} L0 {r['l0']:.0f}")
    ax.set_xticks(np.arange(26) + 0.4 - bw / 2, list(LETTERS))
    ax.set_ylabel("absorption fraction (SAEBench)")
    ax.set_title("absorption per first letter (letters with probe F1 < threshold are blank)")
    ax.legend(fontsize=7, ncol=3)
    paths.append(save(fig, run / "absorption_per_letter.png", dpi=110))
    return paths


def main() -> None:
    t0 = time.perf_counter()
    model, tok, _ = load("smollm2-135m")
    data = prepare_probe_data(model, tok, LAYER, n_train=N_TRAIN, n_test=N_TEST, seed=0)
    answer_ids = answer_token_ids(tok)
    setup_s = time.perf_counter() - t0
    print(
        f"setup {setup_s:.1f} s: {len(data.train_letters)} train / {len(data.test_letters)} test words; "
        f"{int((data.probe_f1 >= 0.6).sum())}/26 letters with probe F1 >= 0.6 (mean {data.probe_f1.mean():.3f})"
    )

    t1 = time.perf_counter()
    acts = training_activations(model, tok, LAYER, max_tokens=TEXT_TOKENS)
    harvest_s = time.perf_counter() - t1
    saes = train_relu_sweep(acts, WIDTHS, SPARSITY, steps=STEPS, batch=BATCH, lr=LR, seed=0)
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
    OUT.mkdir(exist_ok=True)
    write_json(
        OUT / "absorption_smollm2.json",
        {
            "model": "smollm2-135m",
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
        for p in plot_results(full, Path(tmp)):
            shutil.copy(p, OUT / f"absorption_smollm2_{p.stem.removeprefix('absorption_')}.png")
    print(f"total {total:.1f} s; wrote {OUT / 'absorption_smollm2.json'}")


if __name__ == "__main__":
    main()
