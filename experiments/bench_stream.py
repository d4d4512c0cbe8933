"""Benchmark script: see jsae/bench/stream.py (also `jsae bench stream`). Run from the repository root:

python experiments/bench_stream.py            # -> results/bench_stream.json
"""

from jsae.bench.stream import main

if __name__ == "__main__":
    main()
