"""The host loop: jit-compiled chunks of scanned steps, with progress, checks and checkpoints between.

``train(sae_stack, data, cfg)`` is the one trainer for every architecture and any number of SAEs.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import time
import warnings
from dataclasses import dataclass
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import PartitionSpec as P
from tqdm.auto import tqdm

from jsae.sae import registry
from jsae.sae.base import SAE, normalisation_scale
from jsae.sae.stack import n_saes
from jsae.train import data as data_mod
from jsae.train.checkpoint import Checkpointer, CheckpointError
from jsae.train.config import TrainConfig
from jsae.train.grouping import free_device_bytes, group_size
from jsae.train.optim import hyperparams_of, per_sae_hyperparams
from jsae.train.precision import resolve_compute_dtype
from jsae.train.sharding import (
    AXIS,
    hint_cpu_cores,
    pad_leading,
    padded_size,
    replicate,
    sae_mesh,
    shard_leading,
    take_leading,
)
from jsae.train.step import LossFn, TrainState, init_state, run_chunk


class TrainingDiverged(FloatingPointError):
    """A loss became NaN or inf; the message names the SAE and the step. Checkpoints stay as they were."""


@dataclass
class TrainResult:
    """What ``train`` returns.

    Attributes:
      sae: the trained stack [N, ...] (activation normalisation folded back into the weights).
      metrics: per-SAE means over the last chunk, each an array [N] (loss, recon, l0, mse,
        explained_variance, dead_fraction and the architecture's own terms).
      history: per-SAE means of every chunk, each an array [n_chunks, N], with ``history["step"]``
        [n_chunks] the step at each chunk's end.
      state: the final TrainState (optimizer state, firing statistics, input scales).
      steps: steps trained in total; resumed_from: the step restored from a checkpoint (or 0).
      seconds: wall time of this call; tokens_per_s: tokens per SAE per second in this call.
    """

    sae: SAE
    metrics: dict[str, np.ndarray]
    history: dict[str, np.ndarray]
    state: TrainState
    steps: int
    resumed_from: int
    seconds: float
    tokens_per_s: float


def _is_array(data) -> bool:
    return hasattr(data, "shape") and hasattr(data, "dtype")


def _input_scales(data, n: int, normalise: bool) -> np.ndarray:
    if not normalise:
        return np.ones((n,), np.float32)
    sample = jnp.asarray(data_mod.sample_rows(data))
    if sample.ndim == 3:
        return np.asarray(jax.vmap(normalisation_scale)(sample), np.float32)
    return np.full((n,), float(normalisation_scale(sample)), np.float32)


@functools.cache
def _chunk_fns(
    static_cfg_json: str,
    group: int,
    mesh: jax.sharding.Mesh,
    shared_data: bool,
    optimizer: optax.GradientTransformation | None,
    loss_fn: LossFn | None,
    compute_dtype: str | None = None,
):
    """Jitted chunk functions for one static configuration, optimizer and loss (per-SAE values travel
    as arrays; the optimizer's per-SAE hyperparameters live in its state).

    The matmuls run in ``compute_dtype``, else ``cfg.compute_dtype``, else the default of the mesh's
    devices (bfloat16 on TPU, float32 elsewhere; ``jsae.train.precision``).

    Each chunk is a ``shard_map`` over the mesh's ``"sae"`` axis: every device trains its own slice of
    the stack with no communication at all (the SAEs are independent), so the per-device program is
    exactly the single-device one on ``N / devices`` SAEs. (Under automatic partitioning the per-step
    ``any(dead)`` of ``stack_step`` would become an all-reduce every step.)
    """
    cfg = TrainConfig.from_json(json.loads(static_cfg_json))
    sae_axis, whole = P(AXIS), P()
    data_spec = whole if shared_data else sae_axis
    metrics_spec = P(None, AXIS)  # [n_steps, N]
    dtype = resolve_compute_dtype(compute_dtype or cfg.compute_dtype, mesh.devices.flat[0].platform)
    how: dict[str, Any] = dict(optimizer=optimizer, loss_fn=loss_fn, compute_dtype=dtype.name)

    @functools.partial(jax.jit, static_argnames=("n_steps", "batch"), donate_argnums=0)
    def from_array(state, hp, start, data, key, *, n_steps, batch):
        def local(state, hp, start, data, key):
            rows = data_mod.chunk_indices(key, start, n_steps, batch, data.shape[-2])
            if shared_data:
                return run_chunk(
                    state,
                    hp,
                    start,
                    n_steps,
                    lambda i, _, g: data_mod.gather_batch(data, rows[i], g),
                    cfg,
                    group,
                    **how,
                )
            return run_chunk(
                state,
                hp,
                start,
                n_steps,
                lambda i, own, g: data_mod.gather_batch(own, rows[i], g),
                cfg,
                group,
                sae_data=data,
                **how,
            )

        return jax.shard_map(
            local,
            mesh=mesh,
            in_specs=(sae_axis, sae_axis, whole, data_spec, whole),
            out_specs=(sae_axis, metrics_spec),
            check_vma=False,
        )(state, hp, start, data, key)

    @functools.partial(jax.jit, donate_argnums=0)
    def from_batches(state, hp, start, xs):
        def local(state, hp, start, xs):
            # [steps, N, B, d] -> [N, steps, B, d], so each group of SAEs carries its own batches
            return run_chunk(
                state,
                hp,
                start,
                xs.shape[0],
                lambda i, own, g: own[:, i].astype(jnp.float32),
                cfg,
                group,
                sae_data=xs.swapaxes(0, 1),
                **how,
            )

        return jax.shard_map(
            local,
            mesh=mesh,
            in_specs=(sae_axis, sae_axis, whole, P(None, AXIS)),
            out_specs=(sae_axis, metrics_spec),
            check_vma=False,
        )(state, hp, start, xs)

    return from_array, from_batches


def _static_json(cfg: TrainConfig) -> str:
    static = dataclasses.replace(cfg, lr=0.0, sparsity_coef=0.0, aux_coef=0.0, extra_hp={}, seed=0, checkpoint_every=0)
    return json.dumps(static.to_json(), sort_keys=True)


def train(
    sae: SAE,
    data: Any,
    cfg: TrainConfig,
    *,
    checkpoint_dir: str | None = None,
    mesh: jax.sharding.Mesh | None = None,
    progress: bool = True,
    optimizer: optax.GradientTransformation | None = None,
    optimizer_hp: dict[str, Any] | None = None,
    loss_fn: LossFn | None = None,
    input_scale: Any = None,
) -> TrainResult:
    """Train a stack of N SAEs at once.

    Args:
      sae: a stack from ``jsae.sae.stack`` (N >= 1; any architecture).
      data: ``[N, T, d_in]`` (different data per SAE), ``[T, d_in]`` (shared), or an iterable of batches
        ``[N, B, d_in]`` / ``[B, d_in]`` (pass a zero-argument callable returning a fresh iterable so a
        resumed run can skip the batches already used).
      cfg: the TrainConfig (per-SAE hyperparameters as floats or length-N lists).
      checkpoint_dir: save here every ``cfg.checkpoint_every`` steps and at the end; if it already
        holds this run's checkpoint, training resumes from it and ends bit-identical to an
        uninterrupted run.
      mesh: device mesh with axis "sae" (default: all devices); the SAE axis is sharded over it.
      progress: show a progress bar (tokens/s per SAE and summed over the stack).
      optimizer: any ``optax.GradientTransformation`` (default: Adam from ``cfg``, see
        ``jsae.train.make_optimizer``; then ``cfg.lr`` is each SAE's learning rate). A run given its
        own optimizer does not read ``cfg``'s optimizer fields (``lr``, ``lr_*``, ``adam_*``,
        ``grad_clip``): its schedules and clipping belong in the chain.
      optimizer_hp: per-SAE values of the optimizer's hyperparameters, name -> a float or N floats,
        written into the state of every ``optax.inject_hyperparams`` part of the chain that holds
        that name (e.g. ``{"learning_rate": [1e-3, 3e-3], "weight_decay": 1e-4}``).
      loss_fn: ``loss_fn(sae, x, hp, dead) -> (total, (metrics, f))`` to train on instead of the
        architecture's own loss (see ``jsae.train.step``); ``hp`` holds ``cfg``'s per-SAE values.
      input_scale: ``[N]`` factors the step multiplies each SAE's batches by, for iterator data whose
        scales are known (e.g. ``jsae.pipeline.train_from_cache``); the trained SAEs then read scaled
        inputs (fold them back with ``fold_scale``). Arrays use ``cfg.normalise_activations`` instead.

    Raises:
      ValueError: bad shapes, hyperparameter lengths or NaN/inf data, with what to do.
      TrainingDiverged: a loss became NaN/inf (names the SAE and step; the last good checkpoint stays).
      CheckpointError: a foreign, corrupt or mismatched checkpoint directory.
    """
    n = n_saes(sae)
    hp_np = cfg.per_sae(n, registry.of(sae))
    is_array = _is_array(data)
    if is_array:
        data_mod.check_array(data, n, sae.d_in, cfg.batch_size)
        data = jnp.asarray(data, jnp.float32)
    scales = _input_scales(data, n, cfg.normalise_activations) if is_array else np.ones((n,), np.float32)
    if cfg.normalise_activations and not is_array:
        raise ValueError("normalise_activations needs array data; scale an iterator's batches yourself")
    if input_scale is not None:
        if is_array or cfg.normalise_activations:
            raise ValueError(
                "input_scale is for iterator data without normalise_activations; arrays get their "
                "scales from cfg.normalise_activations"
            )
        scales = np.broadcast_to(np.asarray(input_scale, np.float32), (n,)).copy()
    if optimizer is not None and np.ndim(cfg.lr) and "learning_rate" not in (optimizer_hp or {}):
        warnings.warn(
            "cfg.lr holds per-SAE rates, but a run with its own optimizer does not read cfg.lr: pass "
            "optimizer_hp={'learning_rate': cfg.lr} (with optax.inject_hyperparams in the chain)",
            UserWarning,
            stacklevel=2,
        )
    opt_hp = {k: jnp.asarray(v) for k, v in per_sae_hyperparams(optimizer_hp, n).items()}
    state = init_state(sae, cfg, jnp.asarray(hp_np["lr"]), jnp.asarray(scales), optimizer, opt_hp)

    ckpt = Checkpointer(checkpoint_dir) if checkpoint_dir is not None else None
    start = 0
    if ckpt is not None:
        restored = ckpt.restore(state, cfg, type(sae).__name__, n)
        if restored is not None:
            _check_same_hyperparams(state, restored[1], ckpt.directory)
            start, state = restored

    if mesh is None:
        hint_cpu_cores(n)
        mesh = sae_mesh()
    n_pad = padded_size(n, mesh)
    # a private copy: the chunks donate their input buffers, which must not be the caller's arrays
    state = shard_leading(pad_leading(jax.tree.map(jnp.array, state), n_pad), mesh)
    hp = shard_leading(pad_leading({k: jnp.asarray(v) for k, v in hp_np.items()}, n_pad), mesh)
    n_local = n_pad // mesh.devices.size
    key = jax.random.key(cfg.seed)
    if is_array:
        data = shard_leading(pad_leading(data, n_pad), mesh) if data.ndim == 3 else replicate(data, mesh)
        batches = None
    else:
        batches = data_mod.iterator_from(data, start)
    group = sae_group_for(cfg, n_local, sae.d_in, sae.d_sae, mesh)  # after the data is placed: reads free memory
    from_array, from_batches = _chunk_fns(
        _static_json(cfg), group, mesh, is_array and data.ndim == 2, optimizer, loss_fn
    )

    history: dict[str, list] = {}
    t0 = time.perf_counter()
    step = start
    bar = tqdm(total=cfg.steps, initial=start, unit="step", disable=not progress, dynamic_ncols=True)
    tokens = 0
    try:
        while step < cfg.steps:
            n_steps = min(cfg.chunk_steps, cfg.steps - step)
            t_chunk = time.perf_counter()
            if is_array:
                state, metrics = from_array(
                    state, hp, jnp.asarray(step, jnp.int32), data, key, n_steps=n_steps, batch=cfg.batch_size
                )
                batch = cfg.batch_size
            else:
                assert batches is not None  # not an array: an iterator of batches
                xs = data_mod.next_chunk(batches, n_steps, n, sae.d_in, step)
                batch = xs.shape[2]
                if n_pad > n:  # on the host: the chunk goes to each device once, already split
                    xs = np.concatenate([xs, np.repeat(xs[:, -1:], n_pad - n, axis=1)], axis=1)
                xs = jax.device_put(xs, jax.sharding.NamedSharding(mesh, P(None, AXIS)))
                state, metrics = from_batches(state, hp, jnp.asarray(step, jnp.int32), xs)
            step, metrics = record_chunk(history, metrics, step, n_steps, n)
            tokens += n_steps * batch
            dt = max(time.perf_counter() - t_chunk, 1e-9)
            bar.update(n_steps)
            bar.set_postfix_str(
                f"tok/s {n_steps * batch / dt:,.0f} | SAE-tok/s {n * n_steps * batch / dt:,.0f} | "
                f"L0 {metrics['l0'].mean():.1f} | EV {metrics['explained_variance'].mean():.3f}"
            )
            if ckpt is not None and step < cfg.steps and cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
                ckpt.save(step, take_leading(state, n), cfg, type(sae).__name__, n)
        final = take_leading(state, n)
        if ckpt is not None and step > start:
            ckpt.save(step, final, cfg, type(sae).__name__, n)
    finally:
        bar.close()
        if ckpt is not None:
            ckpt.close()
    seconds = time.perf_counter() - t0
    return train_result(final, history, cfg, step, start, seconds, tokens / max(seconds, 1e-9))


def sae_group_for(cfg: TrainConfig, n_local: int, d_in: int, d_sae: int, mesh: jax.sharding.Mesh) -> int:
    """SAEs per group for the ``n_local`` SAEs each device holds: ``cfg.sae_group`` when set (it must
    divide ``n_local``), else the device's policy (``jsae.train.grouping.group_size``: the CPU cache rule,
    all at once on GPU/TPU unless the device's free memory says to split)."""
    if cfg.sae_group:
        if n_local % cfg.sae_group:
            raise ValueError(f"sae_group={cfg.sae_group} must divide the {n_local} SAEs held per device")
        return cfg.sae_group
    device = mesh.devices.flat[0]
    return group_size(device.platform, n_local, cfg.batch_size, d_in, d_sae, free_bytes=free_device_bytes(device))


def record_chunk(history: dict[str, list], metrics: dict, step: int, n_steps: int, n: int) -> tuple[int, dict]:
    """Append a chunk's metrics (``{name: [n_steps, N_padded]}``) to ``history`` as their mean over the
    chunk's steps for the ``n`` real SAEs, after checking the loss is finite; returns the step after the
    chunk and the metrics as host arrays ``[n_steps, n]``."""
    metrics = {k: np.asarray(v)[:, :n] for k, v in metrics.items()}
    _check_finite(metrics["loss"], step)
    step += n_steps
    for k, v in metrics.items():
        history.setdefault(k, []).append(v.mean(axis=0))
    history.setdefault("step", []).append(step)
    return step, metrics


def train_result(
    final: TrainState,
    history: dict[str, list],
    cfg: TrainConfig,
    step: int,
    start: int,
    seconds: float,
    tokens_per_s: float,
) -> TrainResult:
    """The ``TrainResult`` of a finished run: the stack with its input scale folded back (when activations
    were normalised), the history stacked per metric and the last values."""
    trained = final.sae
    if cfg.normalise_activations:
        trained = eqx.filter_vmap(lambda s, c: s.fold_scale(c))(trained, final.input_scale)
    hist = {k: np.stack(v) for k, v in history.items()}
    last = {k: v[-1] for k, v in hist.items() if k != "step"}
    return TrainResult(trained, last, hist, final, step, start, seconds, tokens_per_s)


def _check_same_hyperparams(template: TrainState, restored: TrainState, where) -> None:
    """A resumed run must use the optimizer hyperparameters its checkpoint was trained with."""
    ours, theirs = hyperparams_of(template.opt_state), hyperparams_of(restored.opt_state)
    diff = {
        k: (theirs.get(k), v)
        for k, v in ours.items()
        if k not in theirs or np.shape(theirs[k]) != np.shape(v) or not np.array_equal(theirs[k], v)
    }
    if diff:
        name, (a, b) = next(iter(diff.items()))
        raise CheckpointError(
            f"checkpoint in {where} was trained with other optimizer hyperparameters ({name}: checkpoint "
            f"{np.asarray(a).tolist()} vs now {np.asarray(b).tolist()}); resume with the same optimizer_hp or pass "
            "a new checkpoint directory"
        )


def _check_finite(loss: np.ndarray, start: int) -> None:
    """Stop at the first non-finite loss, naming the SAE index and the step."""
    bad = ~np.isfinite(loss)
    if bad.any():
        i, sae = np.argwhere(bad)[0]
        raise TrainingDiverged(
            f"SAE {sae} produced a non-finite loss ({loss[i, sae]}) at step {start + i}; training stopped and "
            "the last good checkpoint was kept. Lower its learning rate, check its data, or enable grad_clip."
        )
