"""Circuit discovery in seconds, first call included, against activation patching on the same prompts.

    python experiments/circuits_speed.py     # -> results/circuits_speed.json
    python experiments/circuits_speed.py --smoke   # checks that it runs: 4 prompts, one in-process session per
                                                   # method (no fresh processes, no cache settings), a temporary
                                                   # folder; its seconds mean nothing

Each measurement is a fresh Python process per discovery method that does what a user does: load
SmolLM2-135M, build 10 IOI prompts and their corruptions, discover the circuit with one method
(``sae_per_head_paired``: harvest + per-head SAEs + paired codes; or ``activation_difference``), then
run activation patching of all 270 heads on the same 10 prompts, then both once more (warm: compiled in
this process). One process per method, so each method's first call compiles everything it needs.
Processes run in two settings:

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


def child(method: str) -> None:
    """One user session with one discovery method; prints a JSON line of seconds."""
    print("RESULT " + json.dumps(session(method, N_PROMPTS)))


def session(method: str, n_prompts: int) -> dict:
    """Load the model, then discovery and activation patching, first call and warm: their seconds."""
    from jsae.runtime import prepare_process

    prepare_process()
    import jax

    from jsae.analysis.circuits import activation_patching, discover, harvest_task
    from jsae.models import load
    from jsae.tasks import ioi

    model, tok, _ = load("smollm2-135m")
    task = ioi(tok, n_prompts, seed=0)
    out = {}
    for call in ("first", "warm"):
        t0 = time.perf_counter()
        acts = harvest_task(model, tok, task)
        discover(model, tok, task, method, key=jax.random.key(0), activations=acts)
        out[f"{method}_{call}"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        activation_patching(model, tok, task)
        out[f"activation_patching_{call}"] = time.perf_counter() - t0
    from jsae.bench import machine

    out["machine"] = machine()
    return out


def run(cache: str, method: str) -> dict:
    env = {**os.environ, "JSAE_JAX_CACHE": cache}
    cmd = [sys.executable, __file__, "--child", method]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if p.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{p.stderr[-3000:]}")
    line = [x for x in p.stdout.splitlines() if x.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT ") :])


SMOKE_PROMPTS = 4


def main(argv: list[str] | None = None) -> Path:
    """Run the experiment (``argv``: ``[]`` or ``["--smoke"]``, default ``sys.argv``); returns the JSON written."""
    import argparse

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="check that it runs: 4 prompts, in-process, temporary folder")
    smoke = ap.parse_args(argv).smoke
    out_dir = Path(tempfile.mkdtemp(prefix="jsae-circuits-speed-smoke-")) if smoke else OUT
    settings: dict[str, dict[str, dict]] = {"in_process": {}} if smoke else {"empty_cache": {}, "cached": {}}
    for m in METHODS:  # a fresh cache folder per method: its first process compiles everything it needs
        if smoke:
            settings["in_process"][m] = session(m, SMOKE_PROMPTS)
            continue
        with tempfile.TemporaryDirectory() as cache:
            settings["empty_cache"][m] = run(cache, m)
            settings["cached"][m] = run(cache, m)
    table = {}
    for name, per_method in settings.items():
        for call in ("first", "warm"):
            for m in METHODS:
                s = per_method[m]
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
    result = {
        "smoke": smoke,
        "n_prompts": SMOKE_PROMPTS if smoke else N_PROMPTS,
        "task": "ioi",
        "model": "smollm2-135m",
        "machine": next(iter(settings.values()))[METHODS[0]].pop("machine"),
        "runs": settings,
        "table": table,
    }
    from jsae.io.run import write_json

    write_json(out_dir / "circuits_speed.json", result)
    print(f"wrote {out_dir / 'circuits_speed.json'}")
    return out_dir / "circuits_speed.json"


if __name__ == "__main__":
    if "--child" in sys.argv:
        child(sys.argv[sys.argv.index("--child") + 1])
    else:
        main()
