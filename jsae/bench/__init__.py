"""Benchmarks that print ratios measured side by side in one run (``jsae bench``, ``experiments/bench_*.py``).

- :mod:`jsae.bench.train`: N SAEs in one vmapped program vs a loop of jitted steps vs PyTorch, and the
  machine's float32 matmul peak.
- :mod:`jsae.bench.models`: SmolLM2-135M forward tokens/s, jsae vs transformers, and harvest throughput.
- :mod:`jsae.bench.evals`: spliced-CE evaluation of N SAEs, vectorised vs one at a time.
"""
