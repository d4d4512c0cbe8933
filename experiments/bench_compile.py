"""Benchmark: compile time of one SmolLM2-135M forward (2 x 24 tokens), jsae's equinox core vs the same model
as penzai layers (``jsae.models.to_penzai``, unrolled blocks, with and without jsae's hook points).

    python experiments/bench_compile.py          # -> results/bench_compile.json
    python experiments/bench_compile.py --smoke  # checks that it runs: 2 layers, 1 rep, JSON in a temporary folder

Each figure is ``jax.jit(f).lower(...).compile()`` with the persistent compilation cache off, the weights
passed as arguments (not closed over), the first and the best of ``--reps`` fresh jits (the first includes tracing,
which later
repetitions of jsae's inner ``filter_jit`` may reuse). penzai's ``LayerStack`` form is not
measured here (``to_penzai`` builds unrolled blocks, which its hook points need).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np


def main(argv: list[str] | None = None) -> Path:
    """Run the benchmark (``argv``: its command line, default ``sys.argv``); returns the JSON file written."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", default="results/bench_compile.json")
    ap.add_argument(
        "--smoke", action="store_true", help="check that it runs: SmolLM2's first 2 layers, 1 rep, a temporary folder"
    )
    args = ap.parse_args(argv)
    if args.smoke:
        args.reps = 1
        args.out = str(Path(tempfile.mkdtemp(prefix="jsae-bench-compile-smoke-")) / "bench_compile.json")
    cache_was_on = jax.config.jax_enable_compilation_cache  # pyright: ignore[reportAttributeAccessIssue]  # a flag attribute jax defines at run time
    jax.config.update("jax_enable_compilation_cache", False)
    try:
        return measure(args)
    finally:  # in-process callers (the smoke test) get their cache back
        jax.config.update("jax_enable_compilation_cache", cache_was_on)


def measure(args: argparse.Namespace) -> Path:
    from penzai import pz

    from jsae.bench import machine
    from jsae.io import write_json
    from jsae.models import forward, layer_range, load, penzai_logits, to_penzai

    model, _, _ = load("smollm2-135m")
    if args.smoke:
        model = layer_range(model, 0, 2)
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 1000, (2, 24)), jnp.int32)

    def compile_s(f, *a) -> dict:
        times = []
        for _ in range(args.reps):
            t = time.perf_counter()
            jax.jit(lambda *x: f(*x)).lower(*a).compile()  # a fresh function each time
            times.append(time.perf_counter() - t)
        # the first includes tracing; later ones may reuse jsae's inner filter_jit trace
        return {"first": times[0], "best": min(times)}

    res = {"jsae": compile_s(lambda m, t: forward(m, t)[0], model, tokens)}
    for name, hooks in (("penzai_unrolled_with_hook_points", True), ("penzai_unrolled", False)):
        unbound, params = pz.unbind_params(to_penzai(model, hook_points=hooks), freeze=True)
        res[name] = compile_s(lambda ps, t: penzai_logits(pz.bind_variables(unbound, ps), t), params, tokens)  # noqa: B023  (used in this iteration)
    out = {"compile_seconds": res, "tokens_shape": list(tokens.shape), "smoke": args.smoke, "machine": machine()}
    print(json.dumps(out["compile_seconds"], indent=2))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, out)
    return Path(args.out)


if __name__ == "__main__":
    main()
