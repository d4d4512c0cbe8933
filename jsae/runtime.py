"""Process set-up shared by the CLI, the experiments, the benchmarks and the tests.

- one JAX CPU device per core (:func:`jsae.train.use_cpu_cores`): stacks of SAEs train on every core;
- JAX's persistent compilation cache: XLA compile time on a CPU is real for a 30-layer model (seconds
  per forward shape); with the cache on, a second run loads its programs from disk.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax


def default_cache_dir() -> Path:
    """``$JSAE_JAX_CACHE``, else ``~/.cache/jsae/jax-compilation``."""
    return Path(os.environ.get("JSAE_JAX_CACHE", Path.home() / ".cache" / "jsae" / "jax-compilation"))


def enable_compilation_cache(path: str | Path | None = None, min_compile_seconds: float = 0.0) -> Path:
    """Cache every program that took at least ``min_compile_seconds`` to compile under ``path``
    (default :func:`default_cache_dir`); returns the directory.

    The default 0 caches the tiny programs too: a first ``train`` call in a process compiles about 90
    small ones (set-up, padding, metrics; 2 s on 2 cores), which load from the cache in a fraction of that.
    """
    path = Path(path) if path is not None else default_cache_dir()
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", min_compile_seconds)
    return path


def prepare_process() -> None:
    """One CPU device per core (kept as it is when JAX is already running in this process, e.g. when
    the CLI's ``main`` is called from Python) and the persistent compilation cache."""
    from jsae.train.sharding import use_cpu_cores

    try:
        use_cpu_cores()
    except RuntimeError:
        pass
    enable_compilation_cache()
