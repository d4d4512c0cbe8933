"""Process set-up shared by the CLI, the experiments, the benchmarks and the tests.

- one JAX CPU device per core (:func:`use_cpu_cores`, also exported as ``jsae.train.use_cpu_cores``):
  stacks of SAEs train on every core;
- JAX's persistent compilation cache: XLA compile time on a CPU is real for a 30-layer model (seconds
  per forward shape); with the cache on, a second run loads its programs from disk.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax


def cpu_cores() -> int:
    """The CPU cores this process may run on (its affinity mask, not the host's total)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def use_cpu_cores(n: int | None = None) -> int:
    """Give JAX's CPU backend one device per core (``n`` devices); returns the CPU device count.

    XLA:CPU computes the batched matmuls of a stack of small SAEs on one thread. With one device per
    core, ``train`` gives each device its own slice of the stack (a ``shard_map`` with no communication:
    the SAEs are independent) and every core works (``experiments/bench_train.py`` measures by how
    much). Large matmuls (model forwards) still use every core from one device. On a GPU/TPU
    machine this only changes the (unused) CPU backend.

    Call it right after ``import jax``, before JAX computes anything (the CLI does). When the count was
    set already (``XLA_FLAGS=--xla_force_host_platform_device_count=...`` or ``jax_num_cpu_devices``),
    that setting stands and nothing changes.
    """
    n = cpu_cores() if n is None else int(n)
    if n < 1:
        raise ValueError(f"use_cpu_cores needs n >= 1, got {n}")
    already = (
        "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", "") or jax.config.jax_num_cpu_devices >= 0  # pyright: ignore[reportAttributeAccessIssue]  # set at runtime
    )
    if not already:
        if _backends_started():
            raise RuntimeError(
                "use_cpu_cores() must run before JAX computes anything (the CPU device count is fixed when "
                "JAX starts): call it right after `import jax`, or set "
                f"XLA_FLAGS=--xla_force_host_platform_device_count={n} before starting Python"
            )
        jax.config.update("jax_num_cpu_devices", n)
    return len(jax.devices("cpu"))


def _backends_started() -> bool:
    """Whether JAX has started its backends (after that the CPU device count is fixed).

    The one private JAX import in jsae, kept here: JAX has no public query for this. If a JAX release
    moves it, assume not started (``jax_num_cpu_devices`` then raises its own error if it is too late).
    """
    try:
        from jax._src import xla_bridge  # pyright: ignore[reportPrivateImportUsage]  # no public equivalent
    except ImportError:
        return False
    return bool(xla_bridge.backends_are_initialized())


def default_cache_dir() -> Path:
    """``$JSAE_JAX_CACHE``, else ``~/.cache/jsae/jax-compilation``."""
    return Path(os.environ.get("JSAE_JAX_CACHE", Path.home() / ".cache" / "jsae" / "jax-compilation"))


def enable_compilation_cache(path: str | Path | None = None, min_compile_seconds: float = 0.0) -> Path:
    """Cache every program that took at least ``min_compile_seconds`` to compile under ``path``
    (default :func:`default_cache_dir`); returns the directory.

    The default 0 caches the tiny programs too: a first ``train`` call in a process compiles about 90
    small ones (set-up, padding, metrics), which then load from the cache instead of compiling again.
    """
    path = Path(path) if path is not None else default_cache_dir()
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", min_compile_seconds)
    return path


def prepare_process() -> None:
    """One CPU device per core (kept as it is when JAX is already running in this process, e.g. when
    the CLI's ``main`` is called from Python) and the persistent compilation cache."""
    try:
        use_cpu_cores()
    except RuntimeError:
        pass
    enable_compilation_cache()
