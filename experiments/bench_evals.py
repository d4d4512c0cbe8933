"""Benchmark script: see jsae/bench/evals.py (also `jsae bench evals`). Run from the repository root:

python experiments/bench_evals.py            # -> results/bench_evals.json
"""

from jsae.bench.evals import main

if __name__ == "__main__":
    main()
