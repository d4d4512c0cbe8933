"""Spread a stack over devices: a 1-D mesh whose one axis, "sae", shards the leading SAE axis.

The same program runs on one CPU, 8 TPU cores or many hosts. Multi-host: call
``jax.distributed.initialize()`` on every host before building the mesh (``jax.devices()`` then lists
all hosts' devices); each host runs the same script and the mesh spans them. A stack whose N does not
divide the device count is padded with copies of its last SAE (and that SAE's data) and the copies are
dropped again before results are returned or checkpointed.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jsae.runtime import cpu_cores

__all__ = ["AXIS", "PerformanceWarning", "cpu_cores", "hint_cpu_cores", "sae_mesh"]

AXIS = "sae"


class PerformanceWarning(UserWarning):
    """A setting leaves speed on the table (the message says what to change)."""


def sae_mesh(devices=None) -> Mesh:
    """A mesh over ``devices`` (default: all) with the single axis ``"sae"``."""
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), (AXIS,))


def padded_size(n: int, mesh: Mesh) -> int:
    d = mesh.devices.size
    return -(-n // d) * d


def pad_leading(tree, n_to: int):
    """Pad every leaf's leading axis to ``n_to`` by repeating its last entry."""

    def pad(a):
        a = jnp.asarray(a)
        extra = n_to - a.shape[0]
        if extra == 0:
            return a
        return jnp.concatenate([a, jnp.repeat(a[-1:], extra, axis=0)], axis=0)

    return jax.tree.map(pad, tree)


def take_leading(tree, n: int):
    """The first n entries of every leaf's leading axis (undo ``pad_leading``)."""
    return jax.tree.map(lambda a: a[:n], tree)


def shard_leading(tree, mesh: Mesh):
    """Place every leaf with its leading axis split over the mesh's ``"sae"`` axis."""
    return jax.device_put(tree, NamedSharding(mesh, P(AXIS)))


def replicate(tree, mesh: Mesh):
    return jax.device_put(tree, NamedSharding(mesh, P()))


def hint_cpu_cores(n_saes: int) -> None:
    """Warn (once per call site) when a stack trains on one CPU device although more cores are there."""
    if n_saes > 1 and jax.default_backend() == "cpu" and jax.device_count() == 1 and cpu_cores() > 1:
        import warnings

        warnings.warn(
            f"training {n_saes} SAEs on 1 CPU device of a {cpu_cores()}-core machine: XLA:CPU runs a stack's "
            "small matmuls on one core. Call jsae.train.use_cpu_cores() right after `import jax` (or set "
            f"XLA_FLAGS=--xla_force_host_platform_device_count={cpu_cores()}) to train a slice on every core",
            PerformanceWarning,
            stacklevel=3,
        )
