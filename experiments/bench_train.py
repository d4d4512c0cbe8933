"""Benchmark script: see jsae/bench/train.py (also `jsae bench train`). Run from the repository root:

python experiments/bench_train.py            # -> results/bench_train.json
"""

from jsae.bench.train import main

if __name__ == "__main__":
    main()
