"""How many SAEs of a device's slice of the stack one step computes together (the ``group`` of
``run_chunk``): a pure policy of (backend, device memory, shapes), and the one impure helper that
reads a device's memory.

Groups never change results (the SAEs are independent), only speed and peak memory.
"""

from __future__ import annotations

import jax

ACCELERATORS = ("gpu", "cuda", "rocm", "tpu")


def auto_group(n: int, batch: int, d_in: int, d_sae: int, cache_bytes: int = 2 << 20) -> int:
    """The CPU rule: the largest divisor of ``n`` whose working set fits in ``cache_bytes`` (about one
    core's L2 cache), at least 1.

    A step touches, per SAE, its float32 parameters with their gradients and two Adam moments
    (``4 * 2 * d_in * d_sae`` values) and its ``[batch, d_sae]`` activations with their cotangents.
    XLA:CPU computes a device's batched matmuls on one core, whose speed depends on where the operands
    sit: a group that fits in that core's cache stays there through all the steps of a chunk
    (``run_chunk`` runs groups outside, steps inside), while the whole stack at once streams every
    parameter and moment through main memory at every step. A larger group only pays when the
    matmuls are too small to keep the core busy, and then they still fit the cache.
    """
    per_sae = 4 * (4 * 2 * d_in * d_sae + 2 * batch * (d_sae + d_in))
    target = max(1, cache_bytes // per_sae)
    return _largest_divisor_at_most(n, target)


def step_bytes_per_sae(batch: int, d_in: int, d_sae: int) -> int:
    """Bytes one SAE's step needs beyond its resident state (params and optimizer state), in float32:
    the gradients, the optimizer's update and new moments before they replace the old (3 copies of
    the ``2 * d_in * d_sae + d_sae + d_in`` parameters), and the activations with their cotangents
    (pre-activations, latents and their two cotangents ``[batch, d_sae]``; input, reconstruction,
    residual and its cotangent ``[batch, d_in]``)."""
    params = 2 * d_in * d_sae + d_sae + d_in
    return 4 * (3 * params + 4 * batch * (d_sae + d_in))


def group_size(
    backend: str,
    n: int,
    batch: int,
    d_in: int,
    d_sae: int,
    *,
    free_bytes: int | None = None,
    cache_bytes: int = 2 << 20,
    headroom: float = 0.8,
) -> int:
    """SAEs per group for the ``n`` SAEs held by one device (a divisor of ``n``).

    - ``backend == "cpu"``: the cache rule of :func:`auto_group` (``free_bytes`` is not read).
    - GPU and TPU: all ``n`` at once, unless ``n`` SAEs' step working set (:func:`step_bytes_per_sae`)
      exceeds ``headroom * free_bytes``; then the largest divisor of ``n`` that fits (at least 1).
      ``free_bytes=None`` (the device does not report its memory) means all at once.

    Why: a GPU or TPU runs the batched matmuls of all SAEs of a group as one kernel across all its
    cores, and has no small cache to fit; groups under ``lax.map`` run one after another, each kernel
    a fraction of the chip's width, so splitting only pays when the whole slice would not fit in
    device memory. XLA:CPU computes each device's batched matmuls on one core, where fitting a group
    in that core's cache is what counts. ``free_bytes`` is the memory left once the stack's state
    and data are on the device (``free_device_bytes``); ``headroom`` leaves room for XLA's own
    buffers and fragmentation.
    """
    if n < 1:
        raise ValueError(f"group_size needs n >= 1 SAEs, got {n}")
    backend = backend.lower()
    if backend not in ("cpu", *ACCELERATORS):
        raise ValueError(f"unknown backend {backend!r}; expected 'cpu', 'gpu' or 'tpu'")
    if backend == "cpu":
        return auto_group(n, batch, d_in, d_sae, cache_bytes)
    if free_bytes is None:
        return n
    fit = int(headroom * free_bytes) // step_bytes_per_sae(batch, d_in, d_sae)
    return _largest_divisor_at_most(n, max(1, fit))


def free_device_bytes(device: jax.Device) -> int | None:  # pyright: ignore[reportInvalidTypeForm]  # jax defines Device as a variable alias
    """Bytes still free on ``device`` (``memory_stats()``: ``bytes_limit`` (or ``bytes_reservable_limit``)
    minus ``bytes_in_use``), or None where the device does not report them (XLA:CPU)."""
    try:
        stats = device.memory_stats()
    except Exception:  # noqa: BLE001 - backends without memory statistics raise various errors
        return None
    limit = (stats or {}).get("bytes_limit") or (stats or {}).get("bytes_reservable_limit")
    if not limit:
        return None
    return max(0, int(limit) - int(stats.get("bytes_in_use", 0)))


def _largest_divisor_at_most(n: int, target: int) -> int:
    return max(g for g in range(1, n + 1) if n % g == 0 and g <= target)
