"""Architectures by name, for the CLI and for loading saved SAEs."""

from __future__ import annotations

import importlib

import jax
from jaxtyping import Array, Float, PRNGKeyArray

from jsae.sae.base import SAE
from jsae.sae.stack import stack

ARCHITECTURES = ("relu", "topk", "batchtopk", "jumprelu", "gated", "matryoshka")
USES_K = ("topk", "batchtopk", "matryoshka")


def module(arch: str):
    """The module of an architecture (``jsae.sae.<arch>``), with its ``init``."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown SAE architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}")
    return importlib.import_module(f"jsae.sae.{arch}")


def init_stack(
    arch: str,
    key: PRNGKeyArray,
    n: int,
    d_in: int,
    d_sae: int,
    *,
    k: int | None = None,
    data: Float[Array, "N n d_in"] | Float[Array, "n d_in"] | None = None,
    **cfg,
) -> SAE:
    """N SAEs of the named architecture (``k`` is passed only to the TopK family)."""
    if arch in USES_K:
        if k is None:
            raise ValueError(f"architecture {arch!r} needs k (active latents per token)")
        cfg["k"] = k
    return stack(module(arch).init, jax.random.split(key, n), d_in, d_sae, data=data, **cfg)
