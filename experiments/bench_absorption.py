"""Per-SAE absorption evaluation: the old float64 host path against the stacked jnp one, side by side.

    flock -x /tmp/jsae-cpu.lock python experiments/bench_absorption.py

SmolLM2-135M, layer 3, the experiment's probe data (3000 train / 1000 test words) and metric settings
(k-sparse probing k <= 10, 2 IG candidates per letter, 4 IG steps), on a few quickly trained ReLU SAEs of
width 1152. Old: ``tests/absorption_reference.evaluate_sae`` per SAE (as ``experiments/absorption_smollm2.py``
ran it). New: one ``absorption_run`` over the stack (first a warm-up call, so compilation is not timed,
as the old path's compilations were shared by its SAEs too). Writes results/bench_absorption.json.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from jsae.runtime import prepare_process

prepare_process()

import jax
import numpy as np

from jsae.analysis.absorption_run import (
    AbsorptionConfig,
    absorption_run,
    prepare_probe_data,
    train_relu_sweep,
    training_activations,
)
from jsae.bench import machine
from jsae.io.run import write_json
from jsae.models import load
from jsae.sae import concat
from jsae.tasks.first_letter import answer_token_ids

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from absorption_reference import evaluate_sae

LAYER, SPARSITY, WIDTH = 3, [1.0, 4.0, 16.0], 1152


def main() -> None:
    model, tok, _ = load("smollm2-135m")
    data = prepare_probe_data(model, tok, LAYER, n_train=3000, n_test=1000, seed=0)
    answer_ids = answer_token_ids(tok)
    acts = training_activations(model, tok, LAYER, max_tokens=30_000)
    saes = [e["sae"] for e in train_relu_sweep(acts, [WIDTH], SPARSITY, steps=300, batch=256, lr=1e-3, seed=0)]
    cfg = AbsorptionConfig()

    old, old_s = [], []
    for sae in saes:
        t0 = time.perf_counter()
        old.append(evaluate_sae(sae, data, model, LAYER, answer_ids))
        old_s.append(time.perf_counter() - t0)
        print(f"old: {old_s[-1]:.1f} s")
    stack = concat(saes)
    t0 = time.perf_counter()
    absorption_run(stack, data, model=model, layer=LAYER, answer_ids=answer_ids, cfg=cfg)
    first_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    new = absorption_run(stack, data, model=model, layer=LAYER, answer_ids=answer_ids, cfg=cfg)
    new_s = (time.perf_counter() - t0) / len(saes)
    ratio = float(np.mean(old_s[1:] or old_s)) / new_s
    keys = ("absorption_fraction", "full_absorption", "paper_absorption_rate", "mean_split_latents", "n_letters")
    diff = {k: float(np.max(np.abs([new.summary[k][i] - old[i][k] for i in range(len(saes))]))) for k in keys}
    print(f"old {np.mean(old_s):.1f} s/SAE (first {old_s[0]:.1f}), new {new_s:.1f} s/SAE; ratio {ratio:.1f}x")
    print(f"new first call (with compilation) {first_s / len(saes):.1f} s/SAE; max |new - old| per summary: {diff}")
    write_json(
        ROOT / "results" / "bench_absorption.json",
        {
            "setting": f"smollm2-135m layer {LAYER}, 3000/1000 words, {len(saes)} ReLU SAEs width {WIDTH}, "
            "2 IG candidates per letter, 4 IG steps",
            "devices": f"{jax.device_count()} x {jax.devices()[0].platform}",
            "machine": machine(),
            "old_seconds_per_sae": old_s,
            "new_seconds_per_sae": new_s,
            "new_first_call_seconds_per_sae": first_s / len(saes),
            "ratio_old_over_new": ratio,
            "max_abs_summary_difference": diff,
            "old_summary": [{k: o[k] for k in keys} for o in old],
            "new_summary": [{k: float(new.summary[k][i]) for k in keys} for i in range(len(saes))],
        },
    )


if __name__ == "__main__":
    main()
