"""Assemble a :class:`Transformer` from per-layer numpy weights in jsae's layout."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np

from ._config import ModelConfig
from ._errors import ModelError
from ._transformer import Blocks, Transformer

BLOCK_FIELDS = tuple(Blocks.__dataclass_fields__)


def make_transformer(
    cfg: ModelConfig,
    embed: np.ndarray,
    layers: list[dict[str, np.ndarray]],
    ln_f_w: np.ndarray,
    ln_f_b: np.ndarray | None = None,
    W_U: np.ndarray | None = None,
    pos_embed: np.ndarray | None = None,
    dtype: Any = None,
) -> Transformer:
    """Stack ``layers`` (dicts keyed by :class:`Blocks` field names, jsae layout) into a model.

    ``dtype``: the matrices' dtype (``W_*``, embeddings, unembedding; default float32); the rest is float32.
    """
    mat = np.float32 if dtype is None else check_dtype(dtype)

    def stack(name: str) -> Any:  # None where the architecture has no such weight (Blocks says which)
        vals = [lay[name] for lay in layers if lay.get(name) is not None]
        if not vals:
            return None
        if len(vals) != len(layers):
            raise ModelError(f"{name} is present in {len(vals)} of {len(layers)} layers; a model has it in all or none")
        return jnp.asarray(np.stack(vals).astype(mat if name.startswith("W_") else np.float32))

    def opt(a: np.ndarray | None, dt: Any = np.float32) -> Any:
        return None if a is None else jnp.asarray(np.asarray(a).astype(dt))

    blocks = Blocks(**{f: stack(f) for f in BLOCK_FIELDS})
    return Transformer(
        cfg=cfg,
        embed=opt(embed, mat),
        pos_embed=opt(pos_embed, mat),
        blocks=blocks,
        ln_f_w=opt(ln_f_w),
        ln_f_b=opt(ln_f_b),
        W_U=None if cfg.tied_embeddings else opt(W_U, mat),
    )


def flat_params(model: Transformer) -> dict[str, np.ndarray]:
    """All arrays of a model as ``{name: numpy}`` (for the on-disk cache)."""
    out = {}
    for name in ("embed", "pos_embed", "ln_f_w", "ln_f_b", "W_U"):
        v = getattr(model, name)
        if v is not None:
            out[name] = np.asarray(v)
    for f in BLOCK_FIELDS:
        v = getattr(model.blocks, f)
        if v is not None:
            out["blocks." + f] = np.asarray(v)
    return out


def from_flat_params(cfg: ModelConfig, flat: dict[str, np.ndarray]) -> Transformer:
    """Inverse of :func:`flat_params`."""

    def g(k: str) -> Any:  # None: a weight this architecture does not have
        return jnp.asarray(flat[k]) if k in flat else None

    blocks = Blocks(**{f: g("blocks." + f) for f in BLOCK_FIELDS})
    return Transformer(
        cfg=cfg,
        embed=g("embed"),
        pos_embed=g("pos_embed"),
        blocks=blocks,
        ln_f_w=g("ln_f_w"),
        ln_f_b=g("ln_f_b"),
        W_U=g("W_U"),
    )


def check_dtype(dtype: Any) -> np.dtype:
    """``dtype`` as a numpy dtype when it is a floating type (bfloat16, float16, float32)."""
    try:
        dt = jnp.dtype(dtype)
    except TypeError as e:
        raise ModelError(f"dtype {dtype!r} is not a dtype; pass e.g. jnp.bfloat16 or jnp.float32") from e
    if not jnp.issubdtype(dt, jnp.floating):
        raise ModelError(f"dtype must be a floating type such as jnp.bfloat16 or jnp.float32, got {dt}")
    return dt


def cast_weights(model: Transformer, dtype: Any) -> Transformer:
    """The model with its matrices (``embed``, ``pos_embed``, ``W_U`` and every ``W_*`` block weight) in
    ``dtype``; norms and biases stay float32 (Gemma's ``1 + w`` would lose its low bits in bfloat16)."""
    import dataclasses

    dtype = check_dtype(dtype)

    def cast(a: Any) -> Any:
        return None if a is None else a.astype(dtype)

    blocks = dataclasses.replace(
        model.blocks, **{f: cast(getattr(model.blocks, f)) for f in BLOCK_FIELDS if f.startswith("W_")}
    )
    return dataclasses.replace(
        model, embed=cast(model.embed), pos_embed=cast(model.pos_embed), W_U=cast(model.W_U), blocks=blocks
    )
