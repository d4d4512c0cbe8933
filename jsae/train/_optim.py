"""The optimizer of a run: any ``optax.GradientTransformation``, with per-SAE hyperparameters.

The trainer takes the transform; it never rebuilds one. Per-SAE values (one learning rate per SAE of
a stack, say) live where optax keeps hyperparameters that change at run time: in the state of an
``optax.inject_hyperparams`` wrapper. The stack's optimizer state is ``jax.vmap(optimizer.init)``
of the stacked parameters, so each of those values is an ``[N]`` array, and ``set_hyperparams``
writes one value per SAE into it.

    opt = optax.chain(optax.clip_by_global_norm(1.0),
                      optax.inject_hyperparams(optax.adamw)(learning_rate=1e-3, weight_decay=1e-4))
    train(sae, data, cfg, optimizer=opt, optimizer_hp={"learning_rate": [1e-3, 3e-3, 1e-2]})
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, Float, PyTree

from jsae.train._config import TrainConfig, per_sae_array
from jsae.train._schedules import lr_multiplier

_INJECTED = (optax.InjectHyperparamsState, optax.InjectStatefulHyperparamsState)


def make_optimizer(cfg: TrainConfig, lr: Float[Array, ""] | float | None = None) -> optax.GradientTransformation:
    """The default optimizer, from the Adam fields of ``cfg``: global-norm clipping (``grad_clip``),
    Adam (``adam_b1``, ``adam_b2``, ``adam_eps``) with its learning rate injected
    (``optax.inject_hyperparams``, so each SAE of a stack holds its own rate in the optimizer state),
    then the warm-up/decay schedule of ``cfg`` as a multiplier of the update.

    ``lr`` is the rate ``init`` stores (default ``cfg.lr``, which must then be one float); ``train``
    and ``init_state`` overwrite it with each SAE's own rate.
    """
    if lr is None:
        if np.ndim(cfg.lr) != 0:
            raise ValueError(
                f"cfg.lr holds {np.size(cfg.lr)} per-SAE rates; pass lr= (the rate `init` stores), "
                "or let init_state / train set each SAE's rate"
            )
        lr = float(np.asarray(cfg.lr))  # a scalar (checked above); asarray types it for float()
    adam = optax.inject_hyperparams(optax.adam)(learning_rate=lr, b1=cfg.adam_b1, b2=cfg.adam_b2, eps=cfg.adam_eps)
    parts = [optax.clip_by_global_norm(cfg.grad_clip)] if cfg.grad_clip else []
    return optax.chain(*parts, adam, optax.scale_by_schedule(lr_multiplier(cfg)))


def _injected(node) -> bool:
    return isinstance(node, _INJECTED)


def injected_names(opt_state: PyTree) -> set[str]:
    """Names of the hyperparameters held (as values, not schedules) in ``inject_hyperparams`` states."""
    names: set[str] = set()
    for node in jax.tree.leaves(opt_state, is_leaf=_injected):
        if _injected(node):
            names |= set(node.hyperparams) - set(getattr(node, "hyperparams_states", {}) or {})
    return names


def set_hyperparams(opt_state: PyTree, values: Mapping[str, Any]) -> PyTree:
    """``opt_state`` with each named hyperparameter of every ``inject_hyperparams`` state set to its value.

    A value is broadcast to the stored one's shape: a scalar for every SAE, or an ``[N]`` array (one
    value per SAE) for a stack's state. A name that no injected state holds raises a ValueError (wrap
    that part of the chain in ``optax.inject_hyperparams``); so does a name injected as a schedule
    (a callable of the step count, recomputed at every update).
    """
    if not values:
        return opt_state
    held = injected_names(opt_state)
    scheduled = set()
    for node in jax.tree.leaves(opt_state, is_leaf=_injected):
        if _injected(node):
            scheduled |= set(getattr(node, "hyperparams_states", {}) or {})
    for name in values:
        if name not in held:
            why = (
                "it is injected as a schedule (a function of the step count): give it a number instead"
                if name in scheduled
                else f"the optimizer's inject_hyperparams states hold {sorted(held) or 'nothing'}; wrap the "
                f"transform that takes {name!r} in optax.inject_hyperparams, e.g. "
                f"optax.inject_hyperparams(optax.adamw)(learning_rate=1e-3)"
            )
            raise ValueError(f"optimizer hyperparameter {name!r} cannot be set per SAE: {why}")

    def put(node):
        if not _injected(node):
            return node
        hps = dict(node.hyperparams)
        for name, v in values.items():
            if name in hps and name not in (getattr(node, "hyperparams_states", {}) or {}):
                old = jnp.asarray(hps[name])
                hps[name] = jnp.broadcast_to(jnp.asarray(v, old.dtype), old.shape)
        return node._replace(hyperparams=hps)

    return jax.tree.map(put, opt_state, is_leaf=_injected)


def hyperparams_of(opt_state: PyTree) -> dict[str, np.ndarray]:
    """Every injected hyperparameter value of ``opt_state`` (``[N]`` for a stack), by name."""
    out = {}
    for node in jax.tree.leaves(opt_state, is_leaf=_injected):
        if _injected(node):
            for name, v in node.hyperparams.items():
                out.setdefault(name, np.asarray(v))
    return out


def per_sae_hyperparams(values: Mapping[str, Any] | None, n: int) -> dict[str, np.ndarray]:
    """``{name: float or N floats}`` as ``{name: float32 [n]}``, with one clear error per bad entry."""
    return {name: per_sae_array(name, v, n) for name, v in (values or {}).items()}
