"""Text -> model -> N SAEs, streamed on the device: the forward, the shuffle buffer and the SAE update are one
jitted program per batch of contexts, and the host sends only token ids.

One *exchange* reads a batch of ``batch_contexts`` contexts (``R = batch_contexts * context_size`` text
tokens), captures every SAE input in one forward, swaps the ``R`` new rows into the shuffle buffer
(:mod:`jsae.activations.buffer`) and trains the stack on the ``R`` rows that came out, ``R / batch_size``
optimizer steps. The first ``K / R`` exchanges only fill the buffer (``K`` = buffer tokens); at the end
the buffer is drained, so every token read is trained on exactly once and a run of T tokens takes
``T / batch_size`` steps. Memory is the buffer's, never the token count's.

The SAE axis is sharded over the mesh exactly as in :func:`jsae.train.train` (``shard_map``, no
communication); the contexts of a batch are split over the same devices for the forward. Checkpoints
(every ``cfg.checkpoint_every`` steps, between exchanges) hold the training state, the buffer and the
reader's position, so a killed run resumes bit-identically.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm.auto import tqdm

from jsae.activations.buffer import drain, exchange, exchange_key
from jsae.activations.capture import capture_rows, model_for
from jsae.activations.points import HookInput, input_width
from jsae.models.transformer import Transformer
from jsae.sae import registry
from jsae.sae.base import SAE, normalisation_scale
from jsae.sae.stack import n_saes
from jsae.train.checkpoint import Checkpointer
from jsae.train.config import TrainConfig
from jsae.train.loop import TrainResult, record_chunk, sae_group_for, train_result
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
from jsae.train.step import TrainState, init_state, run_chunk

from .contexts import ContextBatches


@dataclass(frozen=True)
class StreamPlan:
    """How a run of ``tokens`` text tokens splits into exchanges and steps."""

    rows_per_exchange: int  # R: text tokens per batch of contexts
    buffer_tokens: int  # K (0: no shuffling)
    exchanges: int  # batches of contexts read in all
    fill_exchanges: int  # of which only fill the buffer
    steps_per_exchange: int
    drain_steps: int

    @property
    def steps(self) -> int:
        return (self.exchanges - self.fill_exchanges) * self.steps_per_exchange + self.drain_steps

    @property
    def tokens(self) -> int:
        return self.exchanges * self.rows_per_exchange


def plan(tokens: int, contexts: ContextBatches, batch_size: int, buffer_tokens: int) -> StreamPlan:
    """The exchanges of a run; one clear error for sizes that do not divide.

    ``tokens`` is rounded up to whole batches of contexts and ``buffer_tokens`` to whole exchanges."""
    rows = contexts.batch_contexts * contexts.context_size
    if rows % batch_size:
        good = [b for b in (256, 512, 1024, 2048, 4096) if rows % b == 0]
        raise ValueError(
            f"a batch of {contexts.batch_contexts} contexts x {contexts.context_size} tokens = {rows} "
            f"tokens is not a multiple of the SAE batch size {batch_size}; choose a batch size "
            f"that divides it ({', '.join(map(str, good)) or 'e.g. a divisor of ' + str(rows)}) or change "
            "the number of contexts per batch"
        )
    if tokens < 1:
        raise ValueError(f"tokens must be positive, got {tokens}")
    fill = -(-buffer_tokens // rows) if buffer_tokens > 0 else 0
    exchanges = max(-(-tokens // rows), fill + 1)
    return StreamPlan(rows, fill * rows, exchanges, fill, rows // batch_size, fill * rows // batch_size)


def _programs(
    inputs,
    skip,
    cfg: TrainConfig,
    pl: StreamPlan,
    mesh,
    n_pad: int,
    group: int,
    buffer_dtype,
    shuffle: bool,
    fused: bool,
):
    """The programs of a run: ``fill(buffer, model, tokens, offset)``, ``step(carry, model, hp, start, tokens,
    key)`` (exchange + train) and ``finish(carry, hp, start, key)`` (drain + train).

    ``fused``: the forward runs inside the training program with the contexts split over the mesh (GPU/TPU).
    Otherwise (CPU, where one device's large matmuls already use every core and a batch split over
    per-core devices runs at half speed) the forward is its own program on the first device and its
    rows move device-to-device into the SAE-sharded layout; the host still sees only token ids.
    """
    sae_axis, whole = P(AXIS), P()
    B = cfg.batch_size
    by_sae = NamedSharding(mesh, sae_axis)

    def rows_of(model, tokens):
        return pad_leading(capture_rows(model, tokens, inputs, skip), n_pad)

    def train_on(state, hp, start, rows, n_steps):
        def local(state, hp, start, rows):
            def batch_at(i, own, g):
                return jax.lax.dynamic_slice_in_dim(own, i * B, B, axis=1).astype(jnp.float32)

            return run_chunk(state, hp, start, n_steps, batch_at, cfg, group, sae_data=rows)

        return jax.shard_map(
            local,
            mesh=mesh,
            in_specs=(sae_axis, sae_axis, whole, sae_axis),
            out_specs=(sae_axis, P(None, AXIS)),
            check_vma=False,
        )(state, hp, start, rows)

    def update(carry, hp, start, new, key):
        state, buffer = carry
        new = jax.lax.with_sharding_constraint(new, by_sae)
        if shuffle:
            buffer, out = exchange(buffer, new, key)
        else:
            out = new
        state, metrics = train_on(state, hp, start, out, pl.steps_per_exchange)
        return (state, buffer), metrics

    def put(buffer, new, offset):
        new = jax.lax.with_sharding_constraint(new, by_sae).astype(buffer_dtype)
        return jax.lax.dynamic_update_slice_in_dim(buffer, new, offset, axis=1)

    @functools.partial(jax.jit, donate_argnums=0)
    def finish(carry, hp, start, key):
        state, buffer = carry
        return train_on(state, hp, start, drain(buffer, key), pl.drain_steps)

    if fused:
        fill = jax.jit(
            lambda buffer, model, tokens, offset: put(buffer, rows_of(model, tokens), offset), donate_argnums=0
        )
        step = jax.jit(
            lambda carry, model, hp, start, tokens, key: update(carry, hp, start, rows_of(model, tokens), key),
            donate_argnums=0,
        )
        return fill, step, finish

    rows_jit = jax.jit(rows_of)
    put_jit = jax.jit(put, donate_argnums=0)
    update_jit = jax.jit(update, donate_argnums=0)

    def fill(buffer, model, tokens, offset):
        return put_jit(buffer, jax.device_put(rows_jit(model, tokens), by_sae), offset)

    def step(carry, model, hp, start, tokens, key):
        return update_jit(carry, hp, start, jax.device_put(rows_jit(model, tokens), by_sae), key)

    return fill, step, finish


def _device_tokens(tokens: np.ndarray, mesh, fused: bool) -> jax.Array:
    """A batch of contexts: split over the mesh's devices (fused, when it divides; one host's share per
    process) or whole on the first device."""
    if not fused:
        return jax.device_put(jnp.asarray(tokens, jnp.int32), mesh.devices.flat[0])
    spec = P(AXIS) if tokens.shape[0] % mesh.devices.size == 0 else P()
    sharding = NamedSharding(mesh, spec)
    if jax.process_count() > 1:
        return jax.make_array_from_process_local_data(sharding, tokens)
    return jax.device_put(jnp.asarray(tokens, jnp.int32), sharding)


def train_on_model(
    model: Transformer,
    contexts: ContextBatches,
    inputs: tuple[HookInput, ...],
    sae: SAE | Callable[[jax.Array], SAE],
    cfg: TrainConfig,
    *,
    tokens: int,
    buffer_tokens: int = 16384,
    buffer_dtype=jnp.float32,
    checkpoint_dir: str | None = None,
    mesh: jax.sharding.Mesh | None = None,
    progress: bool = True,
    on_exchange: Callable[[int], None] | None = None,
    fused: bool | None = None,
) -> TrainResult:
    """Train a stack of N SAEs (``N = len(inputs)``) on ``tokens`` text tokens streamed through ``model``.

    Args:
      model: a jsae Transformer (the forward stops after the deepest layer the inputs read).
      contexts: batches of token contexts (``jsae.data.ContextStream`` or :class:`ArrayContexts`).
      inputs: what each SAE reads (:func:`jsae.activations.parse_inputs`).
      sae: the stack, or ``init(sample [N, n, d]) -> stack`` called on the filled buffer (for a
        data-dependent ``b_dec`` such as the geometric median).
      cfg: the TrainConfig; ``steps`` and ``chunk_steps`` are set from the plan (:func:`plan`), and
        ``normalise_activations`` takes its scale from the filled buffer (or the first exchange).
      tokens: text tokens to train on (rounded up to whole batches of contexts).
      buffer_tokens: shuffle-buffer size per SAE input (0: no shuffling, batches in stream order).
      buffer_dtype: ``jnp.float32`` or ``jnp.bfloat16`` (halves the buffer; the SAEs still see float32).
      checkpoint_dir: save there every ``cfg.checkpoint_every`` steps (rounded to whole exchanges) and at
        the end; a directory holding this run's checkpoint resumes it bit-identically.
      on_exchange: called with the exchange index after each one (tests use it to kill a run).
      fused: run the forward inside the training program, contexts split over the mesh (default: on
        GPU/TPU; on CPU the forward runs on one device, see ``_programs``).

    Returns the same :class:`jsae.train.TrainResult` as ``train`` (history per exchange).
    """
    n = len(inputs)
    pl = plan(tokens, contexts, cfg.batch_size, buffer_tokens)
    every = -(-cfg.checkpoint_every // pl.steps_per_exchange) if cfg.checkpoint_every else 0
    cfg = dataclasses.replace(
        cfg, steps=pl.steps, chunk_steps=pl.steps_per_exchange, checkpoint_every=every * pl.steps_per_exchange
    )
    shuffle = pl.buffer_tokens > 0
    run_model = model_for(model, inputs)
    if mesh is None:
        hint_cpu_cores(n)
        mesh = sae_mesh()
    n_pad = padded_size(n, mesh)
    fused = jax.default_backend() != "cpu" if fused is None else fused
    run_model = replicate(run_model, mesh) if fused else jax.device_put(run_model, mesh.devices.flat[0])
    d_in = input_width(run_model.cfg, inputs[0].point)
    skip = contexts.bos_positions
    key = jax.random.key(cfg.seed)

    # the template of what a checkpoint holds: training state and buffer
    template_sae = sae if isinstance(sae, SAE) else jax.eval_shape(sae, jnp.zeros((n, 8, d_in)))
    hp_np = cfg.per_sae(n, registry.of(template_sae))
    ckpt = Checkpointer(checkpoint_dir) if checkpoint_dir is not None else None
    arch = type(template_sae).__name__
    restored = None
    if ckpt is not None and ckpt.latest_step() is not None:
        if not isinstance(sae, SAE):
            sae = _abstract_stack(template_sae)
        template = (
            init_state(sae, cfg, jnp.asarray(hp_np["lr"]), jnp.ones((n,))),
            jax.ShapeDtypeStruct((n, max(pl.buffer_tokens, 1), d_in), buffer_dtype),
        )
        restored = ckpt.restore(template, cfg, arch, n)
    fill, step_fn, finish = _programs(
        inputs,
        skip,
        cfg,
        pl,
        mesh,
        n_pad,
        sae_group_for(cfg, n_pad // mesh.devices.size, d_in, template_sae.d_sae, mesh),
        buffer_dtype,
        shuffle,
        fused,
    )
    hp = shard_leading(pad_leading({k: jnp.asarray(v) for k, v in hp_np.items()}, n_pad), mesh)

    history: dict[str, list] = {}
    t0 = time.perf_counter()
    bar = tqdm(total=pl.tokens, unit="tok", unit_scale=True, disable=not progress, dynamic_ncols=True, desc=f"{n} SAEs")
    try:
        if restored is not None:
            step, (state, buffer) = restored
            assert ckpt is not None  # something was restored, so there is a checkpointer
            meta = ckpt.read_meta(step)["extra"]
            exchange_index, reader = meta["exchange"], contexts.iterator(meta["reader"])
            sample = None  # the restored state needs no first rows
            state = shard_leading(pad_leading(state, n_pad), mesh)
            buffer = shard_leading(pad_leading(jnp.asarray(buffer), n_pad), mesh)
            bar.update(exchange_index * pl.rows_per_exchange)
        else:
            step, exchange_index, reader = 0, 0, contexts.iterator()
            buffer = shard_leading(jnp.zeros((n_pad, max(pl.buffer_tokens, 1), d_in), buffer_dtype), mesh)
            for i in range(pl.fill_exchanges):
                buffer = fill(
                    buffer, run_model, _device_tokens(_next(reader, i), mesh, fused), i * pl.rows_per_exchange
                )
                bar.update(pl.rows_per_exchange)
            exchange_index = pl.fill_exchanges
            sample = buffer[:n] if shuffle else None
            state = None  # built once the first rows are known (scales, data-dependent init)
        resumed_from = step
        t_start = time.perf_counter()
        tokens_this_call = 0
        while exchange_index < pl.exchanges:
            batch = _device_tokens(_next(reader, exchange_index), mesh, fused)
            if state is None:
                if sample is None:  # no buffer: the first exchange's rows decide scales and init
                    sample = capture_rows(run_model, batch, inputs, skip)
                state = _initial_state(sae, sample, cfg, hp_np, n_pad, mesh)
                sample = None  # drop the first rows: not needed again
            t = time.perf_counter()
            (state, buffer), metrics = step_fn(
                (state, buffer), run_model, hp, jnp.asarray(step, jnp.int32), batch, exchange_key(key, exchange_index)
            )
            step, _ = record_chunk(history, metrics, step, pl.steps_per_exchange, n)
            exchange_index += 1
            tokens_this_call += pl.rows_per_exchange
            _progress(bar, history, pl.rows_per_exchange, time.perf_counter() - t, n)
            if (
                ckpt is not None
                and every
                and exchange_index < pl.exchanges
                and (exchange_index - pl.fill_exchanges) % every == 0
            ):
                ckpt.save(
                    step,
                    (take_leading(state, n), take_leading(buffer, n)),
                    cfg,
                    arch,
                    n,
                    extra={"exchange": exchange_index, "reader": _reader_state(reader)},
                )
            if on_exchange is not None:
                on_exchange(exchange_index)
        if pl.drain_steps and step < pl.steps:
            state, metrics = finish((state, buffer), hp, jnp.asarray(step, jnp.int32), exchange_key(key, pl.exchanges))
            step, _ = record_chunk(history, metrics, step, pl.drain_steps, n)
        final = take_leading(state, n)
        if ckpt is not None and step > resumed_from:
            ckpt.save(
                step,
                (final, take_leading(buffer, n)),
                cfg,
                arch,
                n,
                extra={"exchange": exchange_index, "reader": _reader_state(reader)},
            )
    finally:
        bar.close()
        if ckpt is not None:
            ckpt.close()
    seconds = time.perf_counter() - t0
    rate = tokens_this_call / max(time.perf_counter() - t_start, 1e-9)
    return train_result(final, history, cfg, step, resumed_from, seconds, rate)


def _abstract_stack(abstract: SAE) -> SAE:
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), abstract)


def _initial_state(sae, sample, cfg: TrainConfig, hp_np, n_pad: int, mesh) -> TrainState:
    n = len(hp_np["lr"])
    sample = jnp.asarray(sample[:n, :8192], jnp.float32)
    if not isinstance(sae, SAE):
        sae = sae(sample)
    if n_saes(sae) != n:
        raise ValueError(f"the stack holds {n_saes(sae)} SAEs but {n} inputs were given; build one SAE per input")
    scales = jax.vmap(normalisation_scale)(sample) if cfg.normalise_activations else jnp.ones((n,))
    state = init_state(sae, cfg, jnp.asarray(hp_np["lr"]), scales)
    return shard_leading(pad_leading(jax.tree.map(jnp.array, state), n_pad), mesh)


def _reader_state(reader: Iterator[np.ndarray]) -> dict:
    """The reader's position, for a checkpoint (the iterators of ``ContextBatches`` have ``get_state()``)."""
    get_state = getattr(reader, "get_state", None)
    if get_state is None:
        raise TypeError(
            f"cannot checkpoint the stream: its context iterator ({type(reader).__name__}) has no get_state()"
        )
    return get_state()


def _next(reader, index: int) -> np.ndarray:
    try:
        return np.asarray(next(reader), np.int32)
    except StopIteration:
        raise ValueError(
            f"the text ran out after {index} batches of contexts; give more text, ask for fewer "
            "tokens, or let the reader repeat the text"
        ) from None


def _progress(bar, history: dict, rows: int, seconds: float, n: int) -> None:
    rate = rows / max(seconds, 1e-9)
    bar.update(rows)
    bar.set_postfix_str(
        f"model tok/s {rate:,.0f} | SAE-tok/s {n * rate:,.0f} | L0 {history['l0'][-1].mean():.1f} | "
        f"EV {history['explained_variance'][-1].mean():.3f}"
    )
