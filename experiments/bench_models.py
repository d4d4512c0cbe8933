"""Benchmark script: see jsae/bench/models.py (also `jsae bench models`). Run from the repository root:

python experiments/bench_models.py            # -> results/bench_models.json
"""

from jsae.bench.models import main

if __name__ == "__main__":
    main()
