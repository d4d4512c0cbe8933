"""Learning-rate and sparsity-coefficient schedules (multipliers in [0, 1] of the step count)."""

from __future__ import annotations

import jax.numpy as jnp
import optax

from jsae.train._config import TrainConfig


def lr_multiplier(cfg: TrainConfig) -> optax.Schedule:
    """Linear warm-up from 0, constant, then linear or cosine decay to 0 from ``lr_decay_start * steps``."""
    warm = max(cfg.lr_warmup_steps, 0)
    decay_start = max(int(cfg.lr_decay_start * cfg.steps), warm)
    decay_len = max(cfg.steps - decay_start, 1)
    parts = [optax.linear_schedule(0.0, 1.0, warm)] if warm else []
    boundaries = [warm] if warm else []
    if cfg.lr_decay == "constant":
        parts.append(optax.constant_schedule(1.0))
    else:
        parts.append(optax.constant_schedule(1.0))
        boundaries.append(decay_start)
        decay = (
            optax.linear_schedule(1.0, 0.0, decay_len)
            if cfg.lr_decay == "linear"
            else optax.cosine_decay_schedule(1.0, decay_len)
        )
        parts.append(decay)
    return optax.join_schedules(parts, boundaries) if boundaries else parts[0]


def sparsity_multiplier(cfg: TrainConfig, step) -> jnp.ndarray:
    """Linear warm-up of the sparsity coefficient over ``sparsity_warmup_steps`` (1 afterwards)."""
    if cfg.sparsity_warmup_steps <= 0:
        return jnp.ones(())
    return jnp.minimum(1.0, (step + 1) / cfg.sparsity_warmup_steps)
