"""The engine: the one host loop. Jit-compiled chunks of scanned steps, with progress, checks and
checkpoints between, over any source of batches (``jsae.train._source``).

``train(sae_stack, source, cfg)`` is the one trainer for every architecture, any number of SAEs and every
source: arrays, iterators, the model stream and the activation cache.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import PartitionSpec as P
from tqdm.auto import tqdm

from jsae.sae import SAE, n_saes, normalisation_scale, registry
from jsae.train._checkpoint import Checkpointer, CheckpointError
from jsae.train._config import TrainConfig
from jsae.train._grouping import free_device_bytes, group_size
from jsae.train._optim import hyperparams_of, per_sae_hyperparams
from jsae.train._precision import resolve_compute_dtype
from jsae.train._sharding import AXIS, hint_cpu_cores, pad_leading, padded_size, sae_mesh, shard_leading, take_leading
from jsae.train._source import Feed, Source, as_source
from jsae.train._step import LossFn, TrainState, init_state, run_chunk


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


@functools.cache
def _chunk_program(
    static_cfg_json: str,
    group: int,
    mesh: jax.sharding.Mesh,
    optimizer: optax.GradientTransformation | None,
    loss_fn: LossFn | None,
    compute_dtype: str | None = None,
):
    """The jitted chunk of a configuration: ``program(state, carry, hp, start, inputs, feed=, n_steps=)
    -> (state, carry, metrics [n_steps, N])``. The source's ``feed`` produces the rows (and its new
    device state ``carry``) on the whole mesh; then ``n_steps`` steps run under ``lax.scan``.

    The matmuls run in ``compute_dtype``, else ``cfg.compute_dtype``, else the default of the mesh's
    devices (bfloat16 on TPU, float32 elsewhere; ``jsae.train._precision``).

    The steps are a ``shard_map`` over the mesh's ``"sae"`` axis: every device trains its own slice of
    the stack with no communication at all (the SAEs are independent), so the per-device program is
    exactly the single-device one on ``N / devices`` SAEs. (Under automatic partitioning the per-step
    ``any(dead)`` of ``make_stack_step`` would become an all-reduce every step.)
    """
    cfg = TrainConfig.from_json(json.loads(static_cfg_json))
    sae_axis, whole = P(AXIS), P()
    dtype = resolve_compute_dtype(compute_dtype or cfg.compute_dtype, mesh.devices.flat[0].platform)
    how: dict[str, Any] = dict(optimizer=optimizer, loss_fn=loss_fn, compute_dtype=dtype.name)

    @functools.partial(jax.jit, static_argnames=("feed", "n_steps"), donate_argnums=(0, 1))
    def program(state, carry, hp, start, inputs, *, feed: Feed, n_steps: int):
        carry, per_sae, shared = feed.produce(carry, inputs, start, n_steps)

        def local(state, hp, start, per_sae, shared):
            def batch_at(i, own, g):
                return feed.batch_at(i, own, shared, g)

            return run_chunk(state, hp, start, n_steps, batch_at, cfg, group, sae_data=per_sae, **how)

        state, metrics = jax.shard_map(
            local,
            mesh=mesh,
            in_specs=(sae_axis, sae_axis, whole, sae_axis, whole),
            out_specs=(sae_axis, P(None, AXIS)),  # metrics [n_steps, N]
            check_vma=False,
        )(state, hp, start, per_sae, shared)
        return state, carry, metrics

    return program


def _static_json(cfg: TrainConfig) -> str:
    static = dataclasses.replace(cfg, lr=0.0, sparsity_coef=0.0, aux_coef=0.0, extra_hp={}, seed=0, checkpoint_every=0)
    return json.dumps(static.to_json(), sort_keys=True)


def train(
    sae: SAE | Callable[[jax.Array], SAE],
    data: Any,
    cfg: TrainConfig,
    *,
    checkpoint_dir: str | None = None,
    mesh: jax.sharding.Mesh | None = None,
    progress: bool = True,
    optimizer: optax.GradientTransformation | None = None,
    optimizer_hp: dict[str, Any] | None = None,
    loss_fn: LossFn | None = None,
    compute_dtype: str | None = None,
    on_chunk: Callable[[int], None] | None = None,
) -> TrainResult:
    """Train a stack of N SAEs at once: the one host loop, for every source of batches.

    Args:
      sae: a stack from ``jsae.sae.stack`` (N >= 1; any architecture), or ``init(sample [N, n, d]) ->
        stack`` called on the source's first rows (for a data-dependent ``b_dec``).
      data: a source (``jsae.train.Source``: ``jsae.pipeline.ModelSource`` streams text through a
        model, ``jsae.pipeline.CacheSource`` reads an activation cache), or ``[N, T, d_in]`` (different
        data per SAE), ``[T, d_in]`` (shared), or an iterable of batches ``[N, B, d_in]`` / ``[B, d_in]``
        (pass a zero-argument callable returning a fresh iterable so a resumed run can skip the batches
        already used).
      cfg: the TrainConfig (per-SAE hyperparameters as floats or length-N lists). With
        ``normalise_activations`` each SAE's inputs are scaled by a factor from the source's first rows
        during training, and the factor is folded back into the returned SAEs.
      checkpoint_dir: save here every ``cfg.checkpoint_every`` steps and at the end; if it already
        holds this run's checkpoint, training resumes from it and ends bit-identical to an
        uninterrupted run. A source that cannot resume (a one-shot iterator) is refused at once.
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
        architecture's own loss (see ``jsae.train._step``); ``hp`` holds ``cfg``'s per-SAE values.
      compute_dtype: the matmuls' dtype, ``"float32"`` or ``"bfloat16"`` (default ``cfg.compute_dtype``).
      on_chunk: called with the step after each chunk (and its checkpoint).

    Raises:
      ValueError: bad shapes, hyperparameter lengths or NaN/inf data, with what to do.
      TrainingDiverged: a loss became NaN/inf (names the SAE and step; the last good checkpoint stays).
      CheckpointError: a foreign, corrupt or mismatched checkpoint directory.
    """
    source = as_source(data)
    cfg = source.plan(cfg)
    if compute_dtype is not None:
        resolve_compute_dtype(compute_dtype)  # one clear error for a bad name, before compute
    if checkpoint_dir is not None and not source.checkpointable:
        raise ValueError(
            f"a run on a one-shot iterator ({type(getattr(source, 'batches', source)).__name__}) cannot be "
            "checkpointed: it cannot be rewound on resume. Pass a zero-argument callable returning a fresh "
            "iterable (e.g. lambda: iter(batches)), or no checkpoint_dir"
        )
    if isinstance(sae, SAE):
        n, d_in, template = n_saes(sae), sae.d_in, sae
    else:
        if source.n_inputs is None or source.d_in is None:
            raise ValueError(
                "an init function needs a source that knows its inputs' number and width (per-SAE arrays, "
                "a model stream, a cache); build the stack yourself for shared or iterator data"
            )
        n, d_in = source.n_inputs, source.d_in
        template = jax.eval_shape(sae, jax.ShapeDtypeStruct((n, 8, d_in), jnp.float32))
    arch = type(template).__name__
    hp_np = cfg.per_sae(n, registry.of(template))
    if optimizer is not None and np.ndim(cfg.lr) and "learning_rate" not in (optimizer_hp or {}):
        warnings.warn(
            "cfg.lr holds per-SAE rates, but a run with its own optimizer does not read cfg.lr: pass "
            "optimizer_hp={'learning_rate': cfg.lr} (with optax.inject_hyperparams in the chain)",
            UserWarning,
            stacklevel=2,
        )
    opt_hp = {k: jnp.asarray(v) for k, v in per_sae_hyperparams(optimizer_hp, n).items()}

    def initial_state(stack: SAE, scales) -> TrainState:
        return init_state(stack, cfg, jnp.asarray(hp_np["lr"]), jnp.asarray(scales), optimizer, opt_hp)

    if mesh is None:
        hint_cpu_cores(n)
        mesh = sae_mesh()
    n_pad = padded_size(n, mesh)
    ckpt = Checkpointer(checkpoint_dir) if checkpoint_dir is not None else None
    start, restored, resume = 0, None, None
    if ckpt is not None and ckpt.latest_step() is not None:
        base = template if isinstance(sae, SAE) else jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), template)
        fresh = initial_state(base, np.ones((n,), np.float32))  # the structure to restore, and its hyperparameters
        start, restored = ckpt.restore((fresh, source.carry_template(n)), cfg, arch, n) or (0, None)
        assert restored is not None  # latest_step() said there is one
        _check_same_hyperparams(fresh, restored[0], ckpt.directory)
        resume = {**ckpt.read_meta(start)["extra"].get("source", {}), "step": start}
    tokens_read = source.open(n, d_in, n_pad, mesh, cfg, resume)  # refuses bad data before the bar starts

    history: dict[str, list] = {}
    t0 = time.perf_counter()
    total = source.total_tokens(cfg) or None
    bar = tqdm(total=total, initial=tokens_read, unit="tok", unit_scale=True, disable=not progress, dynamic_ncols=True)
    bar.set_description(f"{n} SAEs")
    step = start
    try:
        if restored is not None:
            state, carry = restored
        else:
            carry, sample = source.warm_up(bar.update)
            state = _first_state(sae, sample, cfg, n, initial_state)
        # a private copy: the chunks donate their input buffers, which must not be the caller's arrays
        state = shard_leading(pad_leading(jax.tree.map(jnp.array, state), n_pad), mesh)
        if carry is not None:
            carry = shard_leading(pad_leading(jax.tree.map(jnp.asarray, carry), n_pad), mesh)
        hp = shard_leading(pad_leading({k: jnp.asarray(v) for k, v in hp_np.items()}, n_pad), mesh)
        d_sae = state.sae.b_enc.shape[-1]
        group = sae_group_for(cfg, n_pad // mesh.devices.size, d_in, d_sae, mesh)  # after placing: reads free memory
        program = _chunk_program(_static_json(cfg), group, mesh, optimizer, loss_fn, compute_dtype)
        t_loop, tokens = time.perf_counter(), 0
        while step < cfg.steps:
            chunk = source.next_chunk(step, min(cfg.chunk_steps, cfg.steps - step))
            t_chunk = time.perf_counter()
            state, carry, metrics = program(
                state, carry, hp, jnp.asarray(step, jnp.int32), chunk.inputs, feed=chunk.feed, n_steps=chunk.n_steps
            )
            step, metrics = _record_chunk(history, metrics, step, chunk.n_steps, n)
            tokens += chunk.tokens
            _progress(bar, metrics, chunk.tokens, time.perf_counter() - t_chunk, n)
            if ckpt is not None and step < cfg.steps and cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
                _save(ckpt, step, state, carry, n, cfg, arch, source)
            if on_chunk is not None:
                on_chunk(step)
        rate = tokens / max(time.perf_counter() - t_loop, 1e-9)
        final = take_leading(state, n)
        if ckpt is not None and step > start:
            _save(ckpt, step, state, carry, n, cfg, arch, source)
    finally:
        bar.close()
        if ckpt is not None:
            ckpt.close()
    return _result(final, history, cfg, step, start, time.perf_counter() - t0, rate)


def _first_state(sae, sample, cfg: TrainConfig, n: int, initial_state) -> TrainState:
    """The state of a fresh run: the stack (an init function is called on the first rows) and each SAE's
    input scale (``normalisation_scale`` of its first rows with ``normalise_activations``, else 1).
    ``sample``: ``[N, n, d]``, or ``[1, n, d]`` for data all SAEs share."""
    if sample is not None:
        sample = jnp.asarray(sample[:n, :8192], jnp.float32)  # sliced where it lives (a buffer stays on the device)
    if not isinstance(sae, SAE):
        assert sample is not None, "a source that knows its inputs hands over its first rows"
        sae = sae(sample)
        if n_saes(sae) != n:
            raise ValueError(f"the stack holds {n_saes(sae)} SAEs but {n} inputs were given; build one SAE per input")
    if not cfg.normalise_activations:
        scales = np.ones((n,), np.float32)
    elif sample is None:
        raise ValueError(
            "normalise_activations needs a source that hands over its first rows (arrays, a model stream, "
            "a cache); scale an iterator's batches yourself"
        )
    else:
        scales = np.broadcast_to(
            host_array(jax.vmap(normalisation_scale)(sample)).astype(np.float32), (n,)
        )  # [1]: shared
    return initial_state(sae, scales)


def _save(ckpt: Checkpointer, step: int, state, carry, n: int, cfg, arch: str, source: Source) -> None:
    held = (take_leading(state, n), None if carry is None else take_leading(carry, n))
    ckpt.save(step, held, cfg, arch, n, extra={"source": source.state()})


def _progress(bar, metrics: dict, tokens: int, seconds: float, n: int) -> None:
    rate = tokens / max(seconds, 1e-9)
    bar.update(tokens)
    bar.set_postfix_str(
        f"tok/s {rate:,.0f} | SAE-tok/s {n * rate:,.0f} | L0 {metrics['l0'].mean():.1f} | "
        f"EV {metrics['explained_variance'].mean():.3f}"
    )


def sae_group_for(cfg: TrainConfig, n_local: int, d_in: int, d_sae: int, mesh: jax.sharding.Mesh) -> int:
    """SAEs per group for the ``n_local`` SAEs each device holds: ``cfg.sae_group`` when set (it must
    divide ``n_local``), else the device's policy (``jsae.train.group_size``: the CPU cache rule,
    all at once on GPU/TPU unless the device's free memory says to split)."""
    if cfg.sae_group:
        if n_local % cfg.sae_group:
            raise ValueError(f"sae_group={cfg.sae_group} must divide the {n_local} SAEs held per device")
        return cfg.sae_group
    device = mesh.devices.flat[0]
    return group_size(device.platform, n_local, cfg.batch_size, d_in, d_sae, free_bytes=free_device_bytes(device))


def _record_chunk(history: dict[str, list], metrics: dict, step: int, n_steps: int, n: int) -> tuple[int, dict]:
    """Append a chunk's metrics (``{name: [n_steps, N_padded]}``) to ``history`` as their mean over the
    chunk's steps for the ``n`` real SAEs, after checking the loss is finite; returns the step after the
    chunk and the metrics as host arrays ``[n_steps, n]``."""
    metrics = {k: host_array(v)[:, :n] for k, v in metrics.items()}
    _check_finite(metrics["loss"], step)
    step += n_steps
    for k, v in metrics.items():
        history.setdefault(k, []).append(v.mean(axis=0))
    history.setdefault("step", []).append(step)
    return step, metrics


def host_array(a) -> np.ndarray:
    """``a`` as a NumPy array on this host; an array spread over several processes (multi-host) is
    gathered from all of them first (every process must call this at the same point)."""
    if isinstance(a, jax.Array) and not a.is_fully_addressable:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(a, tiled=True))
    return np.asarray(a)


def _result(
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
