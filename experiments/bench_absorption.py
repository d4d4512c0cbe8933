"""Per-SAE absorption evaluation: the old float64 host path against the stacked jnp one, side by side.

    flock -x /tmp/jsae-cpu.lock python experiments/bench_absorption.py
    python experiments/bench_absorption.py --smoke   # checks that it runs: 100/50 words, 2 SAEs of width 64,
                                                     # a temporary folder; its seconds mean nothing

SmolLM2-135M, layer 3, the experiment's probe data (3000 train / 1000 test words) and metric settings
(k-sparse probing k <= 10, 2 IG candidates per letter, 4 IG steps), on a few quickly trained ReLU SAEs of
width 1152. Old: ``tests/absorption_reference.evaluate_sae`` per SAE (as ``experiments/absorption_smollm2.py``
ran it). New: one ``absorption_run`` over the stack (first a warm-up call, so compilation is not timed,
as the old path's compilations were shared by its SAEs too). Writes results/bench_absorption.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from jsae.runtime import prepare_process

prepare_process()

import jax
import numpy as np

from jsae.analysis import (
    AbsorptionConfig,
    absorption_run,
    prepare_probe_data,
    train_relu_sweep,
    training_activations,
)
from jsae.bench import machine
from jsae.io import write_json
from jsae.models import load
from jsae.sae import concat
from jsae.tasks.first_letter import answer_token_ids

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from absorption_reference import evaluate_sae

LAYER, SPARSITY, WIDTH = 3, [1.0, 4.0, 16.0], 1152
FULL = {"n_train": 3000, "n_test": 1000, "tokens": 30_000, "width": WIDTH, "sparsity": SPARSITY, "steps": 300}
SMOKE = {"n_train": 100, "n_test": 50, "tokens": 2048, "width": 64, "sparsity": [1.0, 4.0], "steps": 20}


def main(argv: list[str] | None = None) -> Path:
    """Run the benchmark (``argv``: ``[]`` or ``["--smoke"]``, default ``sys.argv``); returns the JSON written."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="check that it runs: tiny sizes, a temporary folder")
    smoke = ap.parse_args(argv).smoke
    size = SMOKE if smoke else FULL
    out = Path(tempfile.mkdtemp(prefix="jsae-bench-absorption-smoke-")) if smoke else ROOT / "results"
    model, tok, _ = load("smollm2-135m")
    data = prepare_probe_data(model, tok, LAYER, n_train=size["n_train"], n_test=size["n_test"], seed=0)
    answer_ids = answer_token_ids(tok)
    acts = training_activations(model, tok, LAYER, max_tokens=size["tokens"])
    sweep = train_relu_sweep(acts, [size["width"]], size["sparsity"], steps=size["steps"], batch=256, lr=1e-3, seed=0)
    saes = [e["sae"] for e in sweep]
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
    diff = {k: _max_difference([new.summary[k][i] for i in range(len(saes))], [o[k] for o in old]) for k in keys}
    print(f"old {np.mean(old_s):.1f} s/SAE (first {old_s[0]:.1f}), new {new_s:.1f} s/SAE; ratio {ratio:.1f}x")
    print(f"new first call (with compilation) {first_s / len(saes):.1f} s/SAE; max |new - old| per summary: {diff}")
    write_json(
        out / "bench_absorption.json",
        {
            "smoke": smoke,
            "setting": f"smollm2-135m layer {LAYER}, {size['n_train']}/{size['n_test']} words, {len(saes)} ReLU SAEs "
            f"width {size['width']}, 2 IG candidates per letter, 4 IG steps",
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
    return out / "bench_absorption.json"


def _max_difference(a: list[float], b: list[float]) -> float:
    """max |a - b|, where both NaN (a metric with nothing to measure, e.g. no IG candidate) agree."""
    x, y = np.asarray(a, np.float64), np.asarray(b, np.float64)
    both_nan = np.isnan(x) & np.isnan(y)
    return float(np.max(np.where(both_nan, 0.0, np.abs(x - y))))


if __name__ == "__main__":
    main()
