"""Benchmarks that print ratios measured side by side in one run (``jsae bench``, ``experiments/bench_*.py``).

- :mod:`jsae.bench.train`: N SAEs in one vmapped program vs a loop of jitted steps vs PyTorch, and the
  machine's float32 matmul peak.
- :mod:`jsae.bench.models`: SmolLM2-135M forward tokens/s, jsae vs transformers, and harvest throughput.
- :mod:`jsae.bench.evals`: spliced-CE evaluation of N SAEs, vectorised vs one at a time.
- :mod:`jsae.bench.stream`: text -> SmolLM2 -> 270 per-head SAEs: the forward alone, streamed training and
  training from an activation cache.
"""

from __future__ import annotations

import os
import platform

# the benchmark programs are public modules, imported by name (``import jsae.bench`` imports none of them)
__all__ = ["machine", "evals", "models", "stream", "train"]  # pyright: ignore[reportUnsupportedDunderAll]


def machine() -> dict:
    """What the figures were measured on: CPU model (development machines differ), cores, backend."""
    import jax

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "devices": jax.device_count(),
        "load_average_1m": os.getloadavg()[0],
    }
