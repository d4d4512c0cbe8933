"""``jsae bench``: the benchmarks behind docs/BENCHMARKS.md's speed tables, written to a run directory."""

from __future__ import annotations

import importlib
import time

from jsae.io import new_run_dir, write_json

BENCHMARKS = {
    "train": "N SAEs trained in one vmapped program vs a Python loop of jitted steps vs PyTorch",
    "models": "SmolLM2-135M forward tokens/s, jsae vs transformers, and harvest throughput",
    "evals": "spliced-CE evaluation of N SAEs, vectorised vs one at a time",
    "stream": "text -> SmolLM2 -> 270 per-head SAEs: forward alone, streamed training, training from a cache",
}


def register(sub) -> None:
    p = sub.add_parser(
        "bench",
        help="run the benchmarks behind the speed tables of docs/BENCHMARKS.md",
        description="Each benchmark measures jsae and its comparison side by side in one run "
        "and writes JSON to a run directory (or --out). 'all' runs them one after another.",
    )
    which = p.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    for name, text in BENCHMARKS.items():
        q = which.add_parser(name, help=text, description=text)
        importlib.import_module(f"jsae.bench.{name}").add_arguments(q, out=None)
        q.add_argument(
            "--runs", default="runs", help="folder for run directories when --out is not given (default: %(default)s)"
        )
    q = which.add_parser(
        "all",
        help="every benchmark, one after another",
        description="Run " + ", ".join(BENCHMARKS) + " with their defaults, each writing <run dir>/bench_<name>.json.",
    )
    q.add_argument("--runs", default="runs", help="folder for run directories (default: %(default)s)")


def run(args) -> None:
    names = list(BENCHMARKS) if args.benchmark == "all" else [args.benchmark]
    run_dir = None
    for name in names:
        module = importlib.import_module(f"jsae.bench.{name}")
        if args.benchmark == "all":
            import argparse

            parser = argparse.ArgumentParser()
            module.add_arguments(parser, out=None)
            bench_args = parser.parse_args([])
        else:
            bench_args = args
        if getattr(bench_args, "out", None) is None:
            run_dir = run_dir or new_run_dir(args.runs, f"bench-{args.benchmark}")
            bench_args.out = str(run_dir / f"bench_{name}.json")
        print(f"jsae bench {name}: {BENCHMARKS[name]}")
        t0 = time.perf_counter()
        module.run(bench_args)
        print(f"jsae bench {name}: {time.perf_counter() - t0:.0f} s")
    if run_dir is not None:
        write_json(run_dir / "config.json", {"command": "bench", "benchmarks": names})
