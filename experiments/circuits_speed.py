"""Circuit discovery in seconds, first call included, against activation patching on the same prompts.

    python experiments/circuits_speed.py     # -> results/circuits_speed.json
    python experiments/circuits_speed.py --methods sae_per_head_paired --settings empty_cache --out /tmp/x
                                             # one method, one setting, elsewhere (e.g. on a busy machine)
    python experiments/circuits_speed.py --smoke   # checks that it runs: 4 prompts, one in-process session per
                                                   # method (no fresh processes, no cache settings), a temporary
                                                   # folder; its seconds mean nothing

Each measurement is a fresh Python process per discovery method that does what a user does: load
SmolLM2-135M, build 10 IOI prompts and their corruptions, discover the circuit with one method, then
run activation patching of all 270 heads on the same 10 prompts, then both once more (warm: compiled in
this process). Methods: ``sae_per_head_paired`` (harvest + per-head SAEs + paired codes),
``sae_stack_paired`` (the default of ``discover``: harvest + 5 seeds x 270 per-head SAEs as one stack,
top-2 codes, paired changes averaged over seeds) and ``activation_difference`` (no SAE). One process per
method, so each method's first call compiles everything it needs. Processes run in two settings:

- ``empty_cache``: JAX's persistent compilation cache points at a new, empty folder (a first run ever;
  the process checks that it starts empty);
- ``cached``: the same folder again, filled by the run before (every later run on the machine).

The speed-up is activation patching's seconds over discovery's, per setting, first call and warm. Each
first call also records what JAX spent in it: tracing, lowering and XLA compilation (seconds summed
over programs, and the number of programs compiled or loaded from the cache).
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
METHODS = ("sae_per_head_paired", "sae_stack_paired", "activation_difference")
SETTINGS = ("empty_cache", "cached")
JAX_EVENTS = {  # what a first call spends in JAX, summed over programs
    "/jax/core/compile/jaxpr_trace_duration": "trace",
    "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower",
    "/jax/core/compile/backend_compile_duration": "compile",
}


def child(method: str, expect_empty: bool) -> None:
    """One user session with one discovery method; prints a JSON line of seconds."""
    print("RESULT " + json.dumps(session(method, N_PROMPTS, expect_empty)))


def discover_once(model, tok, task, method: str) -> None:
    """Harvest and discovery by ``method``, as a user calls them."""
    import jax

    from jsae.analysis.circuits import discover, harvest_task

    acts = harvest_task(model, tok, task)
    discover(model, tok, task, method, key=jax.random.key(0), activations=acts)


def session(method: str, n_prompts: int, expect_empty: bool = False) -> dict:
    """Load the model, then discovery and activation patching, first call and warm: their seconds, and
    JAX's tracing, lowering and compile seconds in the first discovery call."""
    from jsae.runtime import default_cache_dir, prepare_process

    cache = default_cache_dir()
    cache_files = sum(1 for f in cache.rglob("*") if f.is_file()) if cache.exists() else 0
    if expect_empty and cache_files:
        raise SystemExit(f"the compilation cache {cache} should start empty but holds {cache_files} files")
    prepare_process()
    import jax.monitoring

    from jsae.analysis.circuits import activation_patching
    from jsae.models import load
    from jsae.tasks import ioi

    spent: dict[str, float] = {}

    def record(event: str, duration_secs: float, **_) -> None:
        if event in JAX_EVENTS:
            spent[JAX_EVENTS[event]] = spent.get(JAX_EVENTS[event], 0.0) + duration_secs
            if event.endswith("jaxpr_to_mlir_module_duration"):
                spent["programs"] = spent.get("programs", 0) + 1

    model, tok, _ = load("smollm2-135m")
    task = ioi(tok, n_prompts, seed=0)
    out: dict = {"cache_files_at_start": cache_files}
    for call in ("first", "warm"):
        spent.clear()
        jax.monitoring.register_event_duration_secs_listener(record)
        t0 = time.perf_counter()
        discover_once(model, tok, task, method)
        out[f"{method}_{call}"] = time.perf_counter() - t0
        jax.monitoring.unregister_event_duration_listener(record)
        out[f"{method}_{call}_jax_seconds"] = dict(spent)
        t0 = time.perf_counter()
        activation_patching(model, tok, task)
        out[f"activation_patching_{call}"] = time.perf_counter() - t0
    from jsae.bench import machine

    out["machine"] = machine()
    return out


def run(cache: str, method: str, expect_empty: bool) -> dict:
    env = {**os.environ, "JSAE_JAX_CACHE": cache}
    cmd = [sys.executable, __file__, "--child", method] + (["--expect-empty"] if expect_empty else [])
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if p.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{p.stderr[-3000:]}")
    line = [x for x in p.stdout.splitlines() if x.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT ") :])


SMOKE_PROMPTS = 4


def main(argv: list[str] | None = None) -> Path:
    """Run the experiment (``argv`` as on the command line, default ``sys.argv``); returns the JSON written."""
    import argparse

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="check that it runs: 4 prompts, in-process, temporary folder")
    ap.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS), help="discovery methods to time")
    ap.add_argument("--settings", nargs="+", choices=SETTINGS, default=list(SETTINGS), help="cache settings to run")
    ap.add_argument("--out", type=Path, default=None, help="folder for the JSON (default: results/)")
    args = ap.parse_args(argv)
    smoke, methods = args.smoke, tuple(args.methods)
    out_dir = Path(tempfile.mkdtemp(prefix="jsae-circuits-speed-smoke-")) if smoke else args.out or OUT
    names = ("in_process",) if smoke else tuple(s for s in SETTINGS if s in args.settings)
    settings: dict[str, dict[str, dict]] = {name: {} for name in names}
    for m in methods:  # a fresh cache folder per method: its first process compiles everything it needs
        if smoke:
            settings["in_process"][m] = session(m, SMOKE_PROMPTS)
            continue
        with tempfile.TemporaryDirectory(prefix="jsae-circuits-speed-cache-") as cache:
            if "empty_cache" in settings:
                settings["empty_cache"][m] = run(cache, m, expect_empty=True)
            if "cached" in settings:
                if "empty_cache" not in settings:  # fill the cache first, untimed
                    run(cache, m, expect_empty=True)
                settings["cached"][m] = run(cache, m, expect_empty=False)
    table = {}
    for name, per_method in settings.items():
        for call in ("first", "warm"):
            for m in methods:
                s = per_method[m]
                ratio = s[f"activation_patching_{call}"] / s[f"{m}_{call}"]
                table[f"{name}/{call}/{m}"] = {
                    "discovery_seconds": s[f"{m}_{call}"],
                    "activation_patching_seconds": s[f"activation_patching_{call}"],
                    "speedup": ratio,
                    "jax_seconds": s[f"{m}_{call}_jax_seconds"],
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
        "machine": next(iter(settings.values()))[methods[0]].pop("machine"),
        "runs": settings,
        "table": table,
    }
    from jsae.io import write_json

    write_json(out_dir / "circuits_speed.json", result)
    print(f"wrote {out_dir / 'circuits_speed.json'}")
    return out_dir / "circuits_speed.json"


if __name__ == "__main__":
    if "--child" in sys.argv:
        child(sys.argv[sys.argv.index("--child") + 1], "--expect-empty" in sys.argv)
    else:
        main()
