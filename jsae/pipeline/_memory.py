"""A memory estimate of a streaming run, checked before the run starts.

The estimate adds what the run keeps alive at once: the model's weights, the forward's largest
intermediates for one batch of contexts, the shuffle buffer, the SAE stack's parameters with their
gradients and two Adam moments, and one step's activations of every SAE. It is an estimate (XLA may
fuse or keep more); it exists to stop a run that cannot fit before it spends minutes compiling, with
a message that says what to lower.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np

from jsae.models import ModelConfig
from jsae.train import free_device_bytes

GB = 1 << 30


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per component of a streaming run (all on one device, or the host for CPU runs)."""

    model: int
    forward: int
    buffer: int
    saes: int
    step: int

    @property
    def total(self) -> int:
        return self.model + self.forward + self.buffer + self.saes + self.step

    def describe(self) -> str:
        parts = {
            "model": self.model,
            "forward": self.forward,
            "buffer": self.buffer,
            "SAE state": self.saes,
            "SAE step": self.step,
        }
        return ", ".join(f"{k} {v / GB:.2f} GB" for k, v in parts.items())


def estimate(
    cfg: ModelConfig,
    *,
    n_params: int,
    n_saes: int,
    d_in: int,
    d_sae: int,
    batch_size: int,
    buffer_tokens: int,
    batch_contexts: int,
    context_len: int,
    buffer_itemsize: int = 4,
    captured_per_layer: int | None = None,
) -> MemoryEstimate:
    """Memory of a run; ``captured_per_layer`` is the captured floats per token and layer (default: all heads'
    ``z``, ``H * d_head``)."""
    tokens = batch_contexts * context_len
    captured = captured_per_layer if captured_per_layer is not None else cfg.n_heads * cfg.d_head
    per_layer = (
        tokens * (4 * cfg.d_model + 3 * cfg.d_mlp + 2 * cfg.n_heads * cfg.d_head)
        + batch_contexts * cfg.n_heads * context_len * context_len * 2
    )
    forward = 4 * (per_layer + cfg.n_layers * tokens * captured)
    sae_params = 2 * d_in * d_sae + d_sae + d_in
    return MemoryEstimate(
        model=4 * n_params,
        forward=forward,
        buffer=n_saes * buffer_tokens * d_in * buffer_itemsize + 4 * n_saes * tokens * d_in * 2,
        saes=4 * 4 * n_saes * sae_params,
        step=4 * n_saes * batch_size * (3 * d_sae + 2 * d_in),
    )


def available_bytes(device: Any = None) -> int | None:
    """Memory the run may use: the accelerator's limit (``memory_stats()``), or the host's available RAM
    for CPU devices (Linux ``/proc/meminfo``); None when unknown."""
    device = device if device is not None else jax.devices()[0]
    if device.platform != "cpu":
        return free_device_bytes(device)
    try:
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
        return int(info["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        pages = os.sysconf("SC_AVPHYS_PAGES") if hasattr(os, "sysconf") else None
        return int(pages) * os.sysconf("SC_PAGE_SIZE") if pages else None


def check_fits(est: MemoryEstimate, available: int | None, *, headroom: float = 0.9) -> None:
    """Raise MemoryError (before anything runs) when the estimate exceeds ``headroom`` of ``available``."""
    if available is None or est.total <= headroom * available:
        return
    biggest = max(
        ("buffer", est.buffer),
        ("forward", est.forward),
        ("SAE state", est.saes),
        ("SAE step", est.step),
        key=lambda kv: kv[1],
    )[0]
    advice = {
        "buffer": "lower --buffer-tokens (or use --buffer-dtype bfloat16)",
        "forward": "lower --batch-contexts or --context",
        "SAE state": "lower --d-sae or select fewer --heads / --layers",
        "SAE step": "lower --batch or --d-sae",
    }[biggest]
    raise MemoryError(
        f"this run needs about {est.total / GB:.1f} GB ({est.describe()}) but only "
        f"{available / GB:.1f} GB are available; the largest part is the {biggest}: {advice}"
    )


def n_params(tree) -> int:
    """Float parameters in a pytree (e.g. a model)."""
    return int(sum(np.size(a) for a in jax.tree.leaves(tree) if hasattr(a, "dtype")))
