"""A whole run as one pure function: ``fit`` = the stack's step (``make_stack_step``) under ``lax.scan``.

``jsae.train.train`` is the host loop (checkpoints, progress, sources of any size); ``fit`` is what
to call inside your own ``jit`` when the data is already on the device and the run is short enough to
be one program (e.g. one SAE per attention head trained full-batch inside a circuit method).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, Float, Int

from jsae.sae import SAE, registry
from jsae.train import _data as data_mod
from jsae.train._config import TrainConfig, per_sae_array
from jsae.train._step import LossFn, TrainState, init_state, run_chunk


def fit(
    sae_or_state: SAE | TrainState,
    data: Float[Array, "N T d_in"] | Float[Array, "T d_in"],
    cfg: TrainConfig,
    *,
    hp: dict[str, Float[Array, " N"]] | None = None,
    optimizer: optax.GradientTransformation | None = None,
    optimizer_hp: dict[str, Any] | None = None,
    loss_fn: LossFn | None = None,
    compute_dtype: str | None = None,
    group: int | None = None,
    start: Int[Array, ""] | int = 0,
    steps: int | None = None,
) -> tuple[TrainState, dict[str, Float[Array, "steps N"]]]:
    """Train a stack of N SAEs for ``steps`` (default ``cfg.steps``) steps on ``data``; pure and jittable.

    Batches are drawn as ``train`` draws them from an array (shuffled epochs from ``cfg.seed``, steps
    ``start .. start + steps - 1``), so ``fit(sae, x, cfg)`` takes the same steps as
    ``train(sae, x, cfg)`` without ``normalise_activations`` (scale ``x`` yourself, or build the state
    with ``input_scale``). Under ``jax.jit`` pass ``cfg``, ``optimizer``, ``loss_fn``, ``compute_dtype``,
    ``group`` and ``steps`` as static arguments (or close over them).

    Args:
      sae_or_state: a stack (its TrainState is built with ``init_state``: ``cfg``'s per-SAE learning
        rates, or ``optimizer`` with ``optimizer_hp``, and input scale 1) or a TrainState to continue.
      data: ``[N, T, d_in]`` (one slice per SAE) or ``[T, d_in]`` (shared); ``T >= cfg.batch_size``.
      cfg: batch size, seed, schedules and (unless ``optimizer`` is given) the optimizer.
      hp: the loss's per-SAE hyperparameters, name -> ``[N]`` (default: ``cfg.per_sae``).
      optimizer, optimizer_hp, loss_fn, compute_dtype: as for ``train``. ``optimizer`` must be the one
        a given state was built with.
      group: SAEs per group (``run_chunk``; default: all at once; ``jsae.train.group_size`` gives the
        device's policy).

    Returns the final TrainState and the metrics of every step, name -> ``[steps, N]``.
    """
    state = sae_or_state if isinstance(sae_or_state, TrainState) else None
    sae = state.sae if state is not None else sae_or_state
    assert isinstance(sae, SAE)
    n = sae.b_enc.shape[0]
    if hp is None:
        hp = {k: jnp.asarray(v) for k, v in cfg.per_sae(n, registry.of(sae)).items()}
    if state is None:
        opt_hp = {k: _per_sae(k, v, n) for k, v in (optimizer_hp or {}).items()}
        state = init_state(sae, cfg, hp["lr"], jnp.ones((n,), jnp.float32), optimizer, opt_hp)
    steps = cfg.steps if steps is None else steps
    data = jnp.asarray(data, jnp.float32)
    start = jnp.asarray(start, jnp.int32)
    rows = data_mod.chunk_indices(jax.random.key(cfg.seed), start, steps, cfg.batch_size, data.shape[-2])
    how: dict[str, Any] = dict(optimizer=optimizer, loss_fn=loss_fn, compute_dtype=compute_dtype)
    if data.ndim == 2:
        return run_chunk(
            state, hp, start, steps, lambda i, _, g: data_mod.gather_batch(data, rows[i], g), cfg, group, **how
        )
    return run_chunk(
        state,
        hp,
        start,
        steps,
        lambda i, own, g: data_mod.gather_batch(own, rows[i], g),
        cfg,
        group,
        sae_data=data,
        **how,
    )


def _per_sae(name: str, value, n: int) -> Float[Array, " N"]:
    """A hyperparameter's ``[N]`` values: a float or N floats (checked), or an array (traced under jit)."""
    if isinstance(value, jax.Array):
        return jnp.broadcast_to(jnp.asarray(value, jnp.float32), (n,))
    return jnp.asarray(per_sae_array(name, value, n))
