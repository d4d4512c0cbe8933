"""Text -> model -> N SAEs, streamed on the device: the forward, the shuffle buffer and the SAE update are one
jitted program per batch of contexts, and the host sends only token ids.

One *exchange* reads a batch of ``batch_contexts`` contexts (``R = batch_contexts * context_size`` text
tokens), captures every SAE input in one forward, swaps the ``R`` new rows into the shuffle buffer
(:mod:`jsae.activations._buffer`) and trains the stack on the ``R`` rows that came out, ``R / batch_size``
optimizer steps. The first ``K / R`` exchanges only fill the buffer (``K`` = buffer tokens); at the end
the buffer is drained, so every token read is trained on exactly once and a run of T tokens takes
``T / batch_size`` steps. Memory is the buffer's, never the token count's.

The stream is a source (:class:`ModelSource`) of the one engine, :func:`jsae.train.train`: the SAE axis is
sharded over the mesh as for every source (``shard_map``, no communication); the contexts of a batch are
split over the same devices for the forward. A model sharded over the same mesh
(:func:`jsae.models.shard_model`) stays where it is and runs on the whole batch, each device on its own
heads (ARCHITECTURE.md, "A model over a mesh"). Multi-host (``jax.distributed``): every process reads
its own shard of the text, and an exchange is one batch of contexts from every process, process 0's
first (ARCHITECTURE.md, "Beyond one machine"). Checkpoints (every ``cfg.checkpoint_every`` steps, between
exchanges) hold the training state, the buffer and the reader's position, so a killed run resumes
bit-identically.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jsae.activations import HookInput, capture_rows, drain, exchange, exchange_key, input_width, model_for
from jsae.models import Transformer
from jsae.sae import SAE
from jsae.train import AXIS, Chunk, LossFn, TrainConfig, TrainResult, pad_leading, replicate, train

from ._contexts import ContextBatches


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


def plan(tokens: int, contexts: ContextBatches, batch_size: int, buffer_tokens: int, processes: int = 1) -> StreamPlan:
    """The exchanges of a run; one clear error for sizes that do not divide.

    ``tokens`` is rounded up to whole batches of contexts and ``buffer_tokens`` to whole exchanges. The
    buffer is shrunk to fit the tokens (at most all exchanges but one fill it; one exchange: no
    shuffling), so a run never reads more text than asked for: compare ``buffer_tokens`` of the plan.
    With ``processes`` > 1 (multi-host) every process reads its own batch of contexts per exchange, and
    the sizes count all of them: an exchange is ``processes * batch_contexts * context_size`` tokens."""
    rows = processes * contexts.batch_contexts * contexts.context_size
    if rows % batch_size:
        good = [b for b in (256, 512, 1024, 2048, 4096) if rows % b == 0]
        per = f"{processes} processes x " if processes > 1 else ""
        raise ValueError(
            f"a batch of {per}{contexts.batch_contexts} contexts x {contexts.context_size} tokens = {rows} "
            f"tokens is not a multiple of the SAE batch size {batch_size}; choose a batch size "
            f"that divides it ({', '.join(map(str, good)) or 'e.g. a divisor of ' + str(rows)}) or change "
            "the number of contexts per batch"
        )
    if tokens < 1:
        raise ValueError(f"tokens must be positive, got {tokens}")
    exchanges = -(-tokens // rows)
    fill = -(-buffer_tokens // rows) if buffer_tokens > 0 else 0
    fill = min(fill, exchanges - 1)  # a buffer larger than the text would read more tokens than asked for
    return StreamPlan(rows, fill * rows, exchanges, fill, rows // batch_size, fill * rows // batch_size)


@dataclass(frozen=True)
class StreamFeed:
    """The device half of :class:`ModelSource` (a :class:`jsae.train.Feed`): one exchange, or the drain.

    ``fused``: the chunk's inputs are ``(model, tokens, key)`` and the forward runs inside the engine's
    program with the contexts split over the mesh (GPU/TPU). Otherwise (CPU, where one device's large
    matmuls already use every core and a batch split over per-core devices runs at half speed) the
    forward is its own program on the first device and the inputs are ``(rows, key)``, rows already
    moved device-to-device into the SAE-sharded layout; the host still sees only token ids.
    ``model_sharded``: the weights are spread over the mesh (always fused); every device runs the whole
    batch of contexts on its own heads and hidden units.
    """

    inputs: tuple[HookInput, ...]
    skip: int
    mesh: jax.sharding.Mesh
    n_pad: int
    batch: int
    shuffle: bool
    fused: bool
    drain: bool = False
    model_sharded: bool = False  # the weights are spread over the mesh (shard_model): every device sees all contexts

    def rows(self, model, tokens):
        if self.model_sharded:  # each device runs its own heads and hidden units on the whole batch
            tokens = jax.lax.with_sharding_constraint(tokens, NamedSharding(self.mesh, P()))
        return pad_leading(capture_rows(model, tokens, self.inputs, self.skip), self.n_pad)

    def produce(self, carry, inputs, start, n_steps):
        buffer = carry
        if self.drain:
            (key,) = inputs
            return buffer, drain(buffer, key), None
        if self.fused:
            model, tokens, key = inputs
            new = self.rows(model, tokens)
        else:
            new, key = inputs
        new = jax.lax.with_sharding_constraint(new, NamedSharding(self.mesh, P(AXIS)))
        if not self.shuffle:
            return buffer, new, None
        buffer, out = exchange(buffer, new, key)
        return buffer, out, None

    def batch_at(self, i, own, shared, g):
        return jax.lax.dynamic_slice_in_dim(own, i * self.batch, self.batch, axis=1).astype(jnp.float32)


class ModelSource:
    """Text streamed through a model: a :class:`jsae.train.Source` for ``jsae.train.train``.

    One *exchange* per chunk: a batch of contexts goes through ``model``, its rows are swapped into the
    shuffle buffer and the rows that come out are the chunk's steps; the buffer is filled first and
    drained last (:func:`plan`). The device state is the buffer; the position (exchange, reader state)
    goes into the checkpoint. The text is read ahead for the buffer's fill and the first exchange
    when the run opens, so a text too short for them (or with no tokens at all) is refused before the
    progress bar starts.

    Args: as :func:`train_on_model`.
    """

    checkpointable = True

    def __init__(
        self,
        model: Transformer,
        contexts: ContextBatches,
        inputs: tuple[HookInput, ...],
        *,
        tokens: int,
        batch_size: int,
        buffer_tokens: int = 16384,
        buffer_dtype=jnp.float32,
        fused: bool | None = None,
    ):
        self.model, self.contexts, self.inputs = model, contexts, tuple(inputs)
        self.processes = jax.process_count()
        self.plan_ = plan(tokens, contexts, batch_size, buffer_tokens, self.processes)
        self.batch_size, self.buffer_dtype = batch_size, buffer_dtype
        self.model_sharded = _spread_over_devices(model)
        if fused is False and (self.model_sharded or self.processes > 1):
            why = (
                "its weights are spread over several (shard_model)"
                if self.model_sharded
                else "this is a multi-host run"
            )
            raise ValueError(
                f"fused=False runs the forward on one device, but {why}; leave fused unset: the forward then "
                "runs inside the training program on the whole mesh"
            )
        self.fused = (
            (jax.default_backend() != "cpu" or self.model_sharded or self.processes > 1) if fused is None else fused
        )
        self.n_inputs = len(self.inputs)
        self.d_in = input_width(model.cfg, self.inputs[0].point)
        self.exchange_index = 0
        self.trained_exchange = False  # whether the last chunk was an exchange (not the drain)

    def plan(self, cfg: TrainConfig) -> TrainConfig:
        """``steps`` and ``chunk_steps`` (one exchange) from the plan; checkpoints every whole exchanges."""
        pl = self.plan_
        if cfg.batch_size != self.batch_size:
            raise ValueError(f"the stream was planned for batch size {self.batch_size}, cfg has {cfg.batch_size}")
        every = -(-cfg.checkpoint_every // pl.steps_per_exchange) if cfg.checkpoint_every else 0
        return dataclasses.replace(
            cfg, steps=pl.steps, chunk_steps=pl.steps_per_exchange, checkpoint_every=every * pl.steps_per_exchange
        )

    def open(self, n, d_in, n_pad, mesh, cfg, resume):
        pl = self.plan_
        local = len(mesh.local_devices)
        if self.processes > 1 and self.contexts.batch_contexts % local:
            raise ValueError(
                f"each process reads {self.contexts.batch_contexts} contexts per batch, which do not split over its "
                f"{local} devices of the mesh; give batch_contexts a multiple of {local}"
            )
        run_model = model_for(self.model, self.inputs)
        if self.model_sharded:
            self.run_model = on_sae_mesh(run_model, mesh)
        elif self.fused:
            self.run_model = replicate(run_model, mesh)
        else:
            self.run_model = jax.device_put(run_model, mesh.devices.flat[0])
        self.mesh, self.n, self.n_pad, self.key = mesh, n, n_pad, jax.random.key(cfg.seed)
        self.exchange_index = int(resume["exchange"]) if resume else 0
        self.reader = self.contexts.iterator(self._own_reader_state(resume) if resume else None)
        # read ahead: the buffer's fill and the first exchange (refuses a text too short for them now)
        get_state = getattr(self.reader, "get_state", None)
        self._position = get_state() if get_state is not None else None
        ahead = 1 if resume else pl.fill_exchanges + 1
        ahead = min(ahead, pl.exchanges - self.exchange_index)
        self.pending = [_next(self.reader, self.exchange_index + i) for i in range(ahead)]
        self.feed = StreamFeed(
            self.inputs,
            self.contexts.bos_positions,
            mesh,
            n_pad,
            cfg.batch_size,
            pl.buffer_tokens > 0,
            self.fused,
            model_sharded=self.model_sharded,
        )
        self.drain_feed = dataclasses.replace(self.feed, drain=True)
        return self.exchange_index * pl.rows_per_exchange

    def carry_template(self, n):
        return jax.ShapeDtypeStruct((n, max(self.plan_.buffer_tokens, 1), self.d_in), self.buffer_dtype)

    def warm_up(self, advance):
        """Fill the buffer; the first rows (the filled buffer's, or without a buffer the first exchange's)
        decide the scales and a data-dependent init."""
        pl = self.plan_
        by_sae = NamedSharding(self.mesh, P(AXIS))
        buffer = jax.device_put(jnp.zeros((self.n_pad, max(pl.buffer_tokens, 1), self.d_in), self.buffer_dtype), by_sae)
        put = _put(self.feed, self.buffer_dtype)
        for i in range(pl.fill_exchanges):
            buffer = put(buffer, self.run_model, self._tokens(self._take()), i * pl.rows_per_exchange)
            advance(pl.rows_per_exchange)
        self.exchange_index = pl.fill_exchanges
        if pl.buffer_tokens > 0:
            return buffer, buffer[: self.n, :8192]
        first = _rows_program(self.feed)(self.run_model, self._tokens(self.pending[0]))
        return buffer, first[: self.n, :8192]

    def next_chunk(self, step, n_steps):
        pl = self.plan_
        if self.exchange_index >= pl.exchanges:
            self.trained_exchange = False
            return Chunk(pl.drain_steps, self.drain_feed, (exchange_key(self.key, pl.exchanges),), 0)
        tokens = self._tokens(self._take())
        key = exchange_key(self.key, self.exchange_index)
        if self.fused:
            inputs = (self.run_model, tokens, key)
        else:
            rows = _rows_program(self.feed)(self.run_model, tokens)
            inputs = (jax.device_put(rows, NamedSharding(self.mesh, P(AXIS))), key)
        self.exchange_index += 1
        self.trained_exchange = True
        return Chunk(pl.steps_per_exchange, self.feed, inputs, pl.rows_per_exchange)

    def total_tokens(self, cfg):
        return self.plan_.tokens

    def state(self) -> dict:
        """The position for a checkpoint. Multi-host: every process's reader state, by process index (the
        checkpoint's metadata is written once, so they are gathered; every process calls this together)."""
        position = self._position if self.pending else _reader_state(self.reader)
        if self.processes > 1:
            return {"exchange": self.exchange_index, "readers": _gather_json(position)}
        return {"exchange": self.exchange_index, "reader": position}

    def _own_reader_state(self, resume: dict):
        if "readers" not in resume and self.processes == 1:
            return resume["reader"]
        saved = len(resume["readers"]) if "readers" in resume else 1
        if saved != self.processes:
            raise ValueError(
                f"the checkpoint was written by a run of {saved} processes, this one has {self.processes}: each "
                "process reads its own shard of the text, so resume with the same number of processes"
            )
        return resume["readers"][jax.process_index()]

    def _take(self) -> np.ndarray:
        if self.pending:
            return self.pending.pop(0)
        return _next(self.reader, self.exchange_index)

    def _tokens(self, tokens: np.ndarray) -> jax.Array:
        return _device_tokens(tokens, self.mesh, self.fused)


@functools.cache
def _rows_program(feed: StreamFeed):
    return jax.jit(feed.rows)


@functools.cache
def _put(feed: StreamFeed, buffer_dtype):
    """``put(buffer, model, tokens, offset)``: a batch's rows written into the buffer at ``offset``."""
    by_sae = NamedSharding(feed.mesh, P(AXIS))

    def put(buffer, model, tokens, offset):
        new = jax.lax.with_sharding_constraint(feed.rows(model, tokens), by_sae).astype(buffer_dtype)
        return jax.lax.dynamic_update_slice_in_dim(buffer, new, offset, axis=1)

    if feed.fused:
        return jax.jit(put, donate_argnums=0)
    rows = _rows_program(feed)  # the forward on one device, then its rows move into the SAE-sharded layout

    @functools.partial(jax.jit, donate_argnums=0)
    def put_rows(buffer, new, offset):
        return jax.lax.dynamic_update_slice_in_dim(buffer, new.astype(buffer_dtype), offset, axis=1)

    return lambda buffer, model, tokens, offset: put_rows(buffer, jax.device_put(rows(model, tokens), by_sae), offset)


def _spread_over_devices(model: Transformer) -> bool:
    """Whether any of the model's weights lies on more than one device without being a full copy on each
    (a model placed by :func:`jsae.models.shard_model`)."""
    return any(
        isinstance(a, jax.Array) and len(a.sharding.device_set) > 1 and not a.sharding.is_fully_replicated
        for a in jax.tree.leaves(model)
    )


def on_sae_mesh(model: Transformer, mesh: jax.sharding.Mesh) -> Transformer:
    """A model sharded over a one-axis mesh of the same devices, re-expressed over the training mesh
    ``mesh`` (axis ``"sae"``): each weight keeps its split axis and, where the device order is the same,
    its shards stay where they are (no copy). Refuses a model on other devices or on a mesh of several
    axes."""
    devices = set(mesh.devices.flat)

    def place(a):
        if not isinstance(a, jax.Array):
            return a
        sharding = a.sharding
        if sharding.device_set != devices:
            raise ValueError(
                f"the model's weights lie on {len(sharding.device_set)} devices but the SAEs train on a mesh of "
                f"{len(devices)}; shard the model over the same mesh: "
                "mesh = jsae.train.sae_mesh(); model = jsae.models.shard_model(model, mesh); pass mesh=mesh"
            )
        if sharding.is_fully_replicated:
            return jax.device_put(a, NamedSharding(mesh, P()))
        if not isinstance(sharding, NamedSharding) or len(sharding.mesh.axis_names) != 1:
            raise ValueError(
                f"the model's weights are split by {sharding}; the stream takes a model sharded over a one-axis "
                "mesh (jsae.models.shard_model(model, jsae.train.sae_mesh()))"
            )
        spec = P(*(None if part is None else AXIS for part in sharding.spec))
        return jax.device_put(a, NamedSharding(mesh, spec))

    return jax.tree.map(place, model)


def _device_tokens(tokens: np.ndarray, mesh, fused: bool) -> jax.Array:
    """A batch of contexts: split over the mesh's devices (fused, when it divides) or whole on the first
    device. Multi-host: each process's batch is its share of the global batch ``[processes * B, T]``,
    process 0's contexts first (split over each process's own devices; ``open`` checks they divide)."""
    if not fused:
        return jax.device_put(jnp.asarray(tokens, jnp.int32), mesh.devices.flat[0])
    if jax.process_count() > 1:
        return jax.make_array_from_process_local_data(NamedSharding(mesh, P(AXIS)), np.asarray(tokens, np.int32))
    spec = P(AXIS) if tokens.shape[0] % mesh.devices.size == 0 else P()
    sharding = NamedSharding(mesh, spec)
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
    optimizer: optax.GradientTransformation | None = None,
    optimizer_hp: dict[str, Any] | None = None,
    loss_fn: LossFn | None = None,
    compute_dtype: str | None = None,
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
        GPU/TPU, for a model sharded over the mesh and for multi-host runs; else on CPU the forward
        runs on one device, see :class:`StreamFeed`).
      mesh: the SAE mesh (default: all devices). A model from ``shard_model`` must be sharded over the
        same devices (``shard_model(model, jsae.train.sae_mesh())``); give its inputs head-major so no
        activation moves between devices.
      optimizer, optimizer_hp, loss_fn, compute_dtype: as for ``jsae.train.train``.

    ``train_on_model(model, contexts, inputs, sae, cfg, tokens=T, ...)`` is
    ``train(sae, ModelSource(model, contexts, inputs, tokens=T, batch_size=cfg.batch_size, ...), cfg, ...)``.
    Returns the same :class:`jsae.train.TrainResult` as ``train`` (history per exchange).
    """
    source = ModelSource(
        model,
        contexts,
        inputs,
        tokens=tokens,
        batch_size=cfg.batch_size,
        buffer_tokens=buffer_tokens,
        buffer_dtype=buffer_dtype,
        fused=fused,
    )

    def after_chunk(step: int) -> None:
        if on_exchange is not None and source.trained_exchange:
            on_exchange(source.exchange_index)

    return train(
        sae,
        source,
        cfg,
        checkpoint_dir=checkpoint_dir,
        mesh=mesh,
        progress=progress,
        optimizer=optimizer,
        optimizer_hp=optimizer_hp,
        loss_fn=loss_fn,
        compute_dtype=compute_dtype,
        on_chunk=after_chunk,
    )


def _gather_json(value) -> list:
    """``value`` (JSON) of every process, in process order (a collective: every process calls it)."""
    from jax.experimental import multihost_utils

    data = np.frombuffer(json.dumps(value).encode(), np.uint8)
    sizes = np.asarray(multihost_utils.process_allgather(np.asarray([len(data)], np.int32)))
    padded = np.zeros(int(sizes.max()), np.uint8)
    padded[: len(data)] = data
    every = np.asarray(multihost_utils.process_allgather(padded))
    return [json.loads(bytes(row[:size]).decode()) for row, size in zip(every, sizes.reshape(-1), strict=True)]


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
