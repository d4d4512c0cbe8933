"""Pure training steps: one SAE's step, built from a loss and an optimizer (``make_step``); the stack's
step (``make_stack_step``); a scanned chunk of steps for a whole stack (``run_chunk``, what the engine
and ``jsae.train.fit`` run).

Everything here is a pure function of its arguments. ``make_step(optimizer, loss_fn)`` gives the
step of one SAE, ``step(state, x, hp) -> (state, metrics)``, to ``jit``, ``vmap``, ``scan`` or
``grad`` through; ``jax.vmap`` of it is a stack's step (params, optimizer state, batch and
hyperparameters all carry the leading SAE axis). ``make_stack_step`` is that vmapped step with one
saving only a stack can make (AuxK skipped while no latent of the stack is dead), and is what the
trainer runs.

A loss function has the signature of ``SAE.loss`` with the SAE first,
``loss_fn(sae, x [B, d_in], hp, dead [d_sae] | None) -> (total, (metrics, f [B, d_sae]))``, so a
research loss can add a term to an architecture's own:

    def loss_fn(sae, x, hp, dead):
        total, (metrics, f) = sae.loss(x, hp, dead)
        penalty = ...
        return total + hp["my_coef"] * penalty, ({**metrics, "penalty": penalty}, f)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, Bool, Float, Int, PyTree

from jsae.sae import SAE, Hyper, Metrics
from jsae.train._config import TrainConfig
from jsae.train._optim import make_optimizer, set_hyperparams
from jsae.train._precision import compute_view, resolve_compute_dtype
from jsae.train._schedules import sparsity_multiplier

LossFn = Callable[
    [SAE, Float[Array, "B d_in"], Hyper, Bool[Array, " d_sae"] | None],
    tuple[Float[Array, ""], tuple[Metrics, Float[Array, "B d_sae"]]],
]
Step = Callable[["TrainState", Float[Array, "B d_in"], Hyper], tuple["TrainState", Metrics]]


class TrainState(NamedTuple):
    """The whole training state of a stack; every leaf has the leading SAE axis [N, ...] (for the
    state of one SAE, as ``make_step`` takes it, the same without that axis)."""

    sae: SAE
    opt_state: PyTree
    tokens_since_fired: Int[Array, "N d_sae"]
    input_scale: Float[Array, " N"]


def sae_loss(sae: SAE, x: Float[Array, "B d_in"], hp: Hyper, dead: Bool[Array, " d_sae"] | None):
    """The architecture's own loss, ``sae.loss(x, hp, dead)``: the default ``loss_fn``."""
    return sae.loss(x, hp, dead)


def trainable(sae: SAE) -> SAE:
    """The arrays the optimizer sees: every floating-point leaf (buffers too; their updates are
    zeroed, see ``SAE.buffers``)."""
    return eqx.filter(sae, eqx.is_inexact_array)


def init_sae_state(
    sae: SAE, optimizer: optax.GradientTransformation, input_scale: Float[Array, ""] | float = 1.0
) -> TrainState:
    """The TrainState of one SAE (no stack axis), for a step from ``make_step``. ``input_scale``
    multiplies every batch (1: raw activations)."""
    return TrainState(
        sae,
        optimizer.init(trainable(sae)),  # pyright: ignore[reportArgumentType]  # an SAE is a pytree; optax's Params alias does not say so
        jnp.zeros(sae.b_enc.shape, jnp.int32),
        jnp.asarray(input_scale, jnp.float32),
    )


def init_state(
    sae: SAE,
    cfg: TrainConfig,
    lr: Float[Array, " N"],
    input_scale: Float[Array, " N"],
    optimizer: optax.GradientTransformation | None = None,
    optimizer_hp: dict[str, Float[Array, " N"]] | None = None,
) -> TrainState:
    """The TrainState of a stack: ``jax.vmap(optimizer.init)`` of its parameters, then each SAE's own
    values of the optimizer's injected hyperparameters (``optimizer_hp``, name -> ``[N]``; see
    ``jsae.train.set_hyperparams``).

    ``optimizer=None`` is the default of ``cfg`` (``make_optimizer``) and ``lr`` its per-SAE learning
    rate (``optimizer_hp["learning_rate"]``); with an optimizer of your own ``lr`` is not read.
    """
    if optimizer is None:
        optimizer = make_optimizer(cfg, 0.0)
        optimizer_hp = {"learning_rate": lr, **(optimizer_hp or {})}
    opt_state = set_hyperparams(jax.vmap(optimizer.init)(trainable(sae)), optimizer_hp or {})  # pyright: ignore[reportArgumentType]  # an SAE is a pytree
    since = jnp.zeros(sae.b_enc.shape, jnp.int32)
    return TrainState(sae, opt_state, since, jnp.asarray(input_scale, jnp.float32))


def loss_hp(hp: Hyper, step: Int[Array, ""], cfg: TrainConfig) -> Hyper:
    """The hyperparameters the loss sees at ``step``: the sparsity coefficient warmed up (``cfg``)."""
    if "sparsity_coef" not in hp:  # an architecture without one (TopK: k sets the sparsity)
        return hp
    return {**hp, "sparsity_coef": hp["sparsity_coef"] * sparsity_multiplier(cfg, step)}


def _grads(sae: SAE, x, hp: Hyper, dead, loss_fn: LossFn, compute_dtype=jnp.float32):
    def loss(s):
        return loss_fn(compute_view(s, compute_dtype), x, hp, dead)

    (_, (metrics, f)), grads = eqx.filter_value_and_grad(loss, has_aux=True)(sae)
    return grads, metrics, f


def _cfg_compute_dtype(cfg: TrainConfig, compute_dtype):
    """``compute_dtype`` if given, else ``cfg.compute_dtype``, else the default backend's default."""
    return resolve_compute_dtype(compute_dtype if compute_dtype is not None else getattr(cfg, "compute_dtype", None))


def _freeze_buffers(sae: SAE, updates: SAE) -> SAE:
    names = type(sae).buffers
    if not names:
        return updates
    return eqx.tree_at(
        lambda u: [getattr(u, k) for k in names], updates, [jnp.zeros_like(getattr(updates, k)) for k in names]
    )


def _apply(
    sae: SAE, opt_state, since, grads: SAE, metrics, f, optimizer: optax.GradientTransformation, dead_after_tokens: int
):
    params = trainable(sae)
    updates, opt_state = optimizer.update(grads, opt_state, params)  # pyright: ignore[reportArgumentType]  # an SAE is a pytree; optax's Params alias does not say so
    sae = eqx.apply_updates(sae, _freeze_buffers(sae, updates))  # pyright: ignore[reportArgumentType]  # optax's Updates alias is a pytree, here an SAE
    sae = sae.constrain().update_buffers(jax.lax.stop_gradient(f))
    fired = jnp.any(f != 0, axis=0)
    since = jnp.where(fired, 0, jnp.minimum(since + f.shape[0], jnp.iinfo(jnp.int32).max // 2))
    metrics = {**metrics, "dead_fraction": jnp.mean(since >= dead_after_tokens)}
    return sae, opt_state, since, metrics


def make_step(
    optimizer: optax.GradientTransformation,
    loss_fn: LossFn | None = None,
    *,
    dead_after_tokens: int = 1_000_000,
    compute_dtype: str | None = None,
) -> Step:
    """The training step of one SAE: ``step(state, x [B, d_in], hp) -> (state, metrics)``.

    The step scales ``x`` by ``state.input_scale``, takes the gradient of ``loss_fn`` (default: the
    architecture's loss) with the mask of latents that have not fired for ``dead_after_tokens``
    tokens, applies ``optimizer``, then the SAE's ``constrain`` and ``update_buffers``, and counts
    firing. ``metrics`` are the loss's plus ``dead_fraction``. ``hp`` (scalars) goes to the loss as
    it is: schedule a coefficient by passing a different value per step. Build the state with
    ``init_sae_state``; ``jax.vmap(step)`` trains a stack.

    ``compute_dtype`` (``"float32"``, ``"bfloat16"``; None: bfloat16 on TPU, float32 elsewhere) is
    the dtype of the loss's matmuls: ``loss_fn`` receives the SAE with ``W_enc`` and ``W_dec`` cast to
    it (``jsae.train._precision``; cast them back for a term that needs float32), while parameters,
    gradients and optimizer state stay float32.
    """
    loss_fn = sae_loss if loss_fn is None else loss_fn
    dtype = resolve_compute_dtype(compute_dtype)

    def step(state: TrainState, x: Float[Array, "B d_in"], hp: Hyper) -> tuple[TrainState, Metrics]:
        x = x * state.input_scale
        dead = state.tokens_since_fired >= dead_after_tokens if type(state.sae).uses_dead_latents else None
        grads, metrics, f = _grads(state.sae, x, hp, dead, loss_fn, dtype)
        sae, opt, since, metrics = _apply(
            state.sae, state.opt_state, state.tokens_since_fired, grads, metrics, f, optimizer, dead_after_tokens
        )
        return TrainState(sae, opt, since, state.input_scale), metrics

    return step


def make_stack_step(
    optimizer: optax.GradientTransformation,
    loss_fn: LossFn | None = None,
    *,
    dead_after_tokens: int = 1_000_000,
    compute_dtype: str | None = None,
) -> Callable[
    [TrainState, Float[Array, "N B d_in"], dict[str, Float[Array, " N"]]],
    tuple[TrainState, dict[str, Float[Array, " N"]]],
]:
    """``make_step`` for a stack (state, batch ``[N, B, d_in]`` and hyperparameters ``[N]``): the same
    values as ``jax.vmap(make_step(...))``, but while no latent of the whole stack is dead the loss
    gets ``dead=None`` and skips dead-latent terms (AuxK's extra top-k, 0 then anyway)."""
    loss_fn = sae_loss if loss_fn is None else loss_fn
    dtype = resolve_compute_dtype(compute_dtype)

    def step(state: TrainState, x, hp):
        x = x * state.input_scale[:, None, None]
        with_dead = jax.vmap(lambda s, xx, h, dd: _grads(s, xx, h, dd, loss_fn, dtype))
        none_dead = jax.vmap(lambda s, xx, h: _grads(s, xx, h, None, loss_fn, dtype))
        if type(state.sae).uses_dead_latents:
            dead = state.tokens_since_fired >= dead_after_tokens
            # an unbatched cond: only the gradients are inside it (a cond that also carried the updated
            # state made XLA copy every parameter at every step)
            grads, metrics, f = jax.lax.cond(
                jnp.any(dead), lambda: with_dead(state.sae, x, hp, dead), lambda: none_dead(state.sae, x, hp)
            )
        else:
            grads, metrics, f = none_dead(state.sae, x, hp)
        apply = jax.vmap(lambda s, o, t, g, mm, ff: _apply(s, o, t, g, mm, ff, optimizer, dead_after_tokens))
        sae, opt, since, metrics = apply(state.sae, state.opt_state, state.tokens_since_fired, grads, metrics, f)
        return TrainState(sae, opt, since, state.input_scale), metrics

    return step


def run_chunk(
    state: TrainState,
    hp: dict[str, Float[Array, " N"]],
    start: Int[Array, ""],
    n_steps: int,
    batch_at: Callable[[Int[Array, ""], PyTree, int], Float[Array, "G B d_in"]],
    cfg: TrainConfig,
    group: int | None = None,
    sae_data: PyTree = None,
    *,
    optimizer: optax.GradientTransformation | None = None,
    loss_fn: LossFn | None = None,
    compute_dtype: str | None = None,
) -> tuple[TrainState, dict[str, Float[Array, "n_steps N"]]]:
    """``n_steps`` steps of the stack under ``lax.scan``, ``group`` SAEs at a time (default: all).

    ``batch_at(i, data, g)`` gives the ``[g, B, d_in]`` batch of the chunk's i-th step for ``g`` SAEs
    whose own slice of ``sae_data`` (leaves with the leading SAE axis, or None) is ``data``.
    ``optimizer`` (default: ``cfg``'s) must be the one the state was made with; ``loss_fn`` (default:
    the architecture's loss) is what the steps differentiate. ``compute_dtype``: the matmuls' dtype
    (None: ``cfg.compute_dtype``, and where that is None too, the default of ``jax.default_backend()``).

    With ``group < N`` the stack is reshaped to [N / group, group, ...] and ``lax.map`` takes the groups
    one after another, each through all ``n_steps`` steps (see ``jsae.train._grouping`` for when that
    pays). The SAEs are independent, so results equal the all-at-once order.
    """
    n = state.input_scale.shape[0]
    group = group or n
    optimizer = make_optimizer(cfg, 0.0) if optimizer is None else optimizer
    stepper = make_stack_step(
        optimizer,
        loss_fn,
        dead_after_tokens=cfg.dead_after_tokens,
        compute_dtype=_cfg_compute_dtype(cfg, compute_dtype).name,
    )

    def steps(state, hp, data):
        g = state.input_scale.shape[0]

        def body(state, i):
            return stepper(state, batch_at(i, data, g), loss_hp(hp, start + i, cfg))

        return jax.lax.scan(body, state, jnp.arange(n_steps))

    if group >= n:
        return steps(state, hp, sae_data)
    split = jax.tree.map(lambda a: a.reshape(n // group, group, *a.shape[1:]), (state, hp, sae_data))
    state, metrics = jax.lax.map(lambda args: steps(*args), split)
    state = jax.tree.map(lambda a: a.reshape(n, *a.shape[2:]), state)
    metrics = jax.tree.map(lambda m: m.swapaxes(0, 1).reshape(n_steps, n), metrics)  # [groups, steps, g] -> [steps, N]
    return state, metrics
