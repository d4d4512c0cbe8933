"""Circuit discovery in seconds, first call included, against activation patching on the same prompts.

    python experiments/circuits_speed.py     # -> results/circuits_speed.json

Each measurement is a fresh Python process that does what a user does: load SmolLM2-135M, build 10 IOI
prompts and their corruptions, discover the circuit (harvest + per-head SAEs + paired codes; and
``activation_difference``), then run activation patching of all 270 heads on the same 10 prompts, then
both once more (warm: compiled in this process). Processes run in two settings:

- ``empty_cache``: JAX's persistent compilation cache points at an empty folder (a first run ever);
- ``cached``: the same folder again, filled by the run before (every later run on the machine).

The speed-up is activation patching's seconds over discovery's, per setting, first call and warm.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "results"
N_PROMPTS = 10
METHODS = ("sae_per_head_paired", "activation_difference")


def child() -> None:
    """One user session; prints a JSON line of seconds."""
    from jsae.runtime import prepare_process

    prepare_process()
    import jax

    from jsae.analysis.circuits import activation_patching, discover, harvest_task
    from jsae.models import load
    from jsae.tasks import ioi

    model, tok, _ = load("smollm2-135m")
    task = ioi(tok, N_PROMPTS, seed=0)
    out = {}
    for call in ("first", "warm"):
        for method in METHODS:
            t0 = time.perf_counter()
            acts = harvest_task(model, tok, task)
            discover(model, tok, task, method, key=jax.random.key(0), activations=acts)
            out[f"{method}_{call}"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        activation_patching(model, tok, task)
        out[f"activation_patching_{call}"] = time.perf_counter() - t0
    print("RESULT " + json.dumps(out))


def run(cache: str) -> dict:
    env = {**os.environ, "JSAE_JAX_CACHE": cache}
    p = subprocess.run([sys.executable, __file__, "--child"], env=env, capture_output=True, text=True, check=True)
    line = [x for x in p.stdout.splitlines() if x.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT ") :])


def main() -> None:
    with tempfile.TemporaryDirectory() as cache:
        settings = {"empty_cache": run(cache), "cached": run(cache)}
    table = {}
    for name, s in settings.items():
        for call in ("first", "warm"):
            for m in METHODS:
                ratio = s[f"activation_patching_{call}"] / s[f"{m}_{call}"]
                table[f"{name}/{call}/{m}"] = {
                    "discovery_seconds": s[f"{m}_{call}"],
                    "activation_patching_seconds": s[f"activation_patching_{call}"],
                    "speedup": ratio,
                }
                print(
                    f"{name:12s} {call:5s} {m:22s} {s[f'{m}_{call}']:6.2f} s  vs patching "
                    f"{s[f'activation_patching_{call}']:6.1f} s  = {ratio:5.1f}x"
                )
    result = {"n_prompts": N_PROMPTS, "task": "ioi", "model": "smollm2-135m", "runs": settings, "table": table}
    (OUT / "circuits_speed.json").write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {OUT / 'circuits_speed.json'}")


if __name__ == "__main__":
    child() if "--child" in sys.argv else main()
