"""Where the engine's batches come from: the *source* protocol, and the sources for arrays and iterators.

``jsae.train.train`` is the one host loop; everything that differs between in-memory arrays, an iterator
of batches, the model stream (``jsae.pipeline.ModelSource``) and the activation cache is a source. A source

- fixes the run's steps and chunks where it must (``plan``), and says whether it can be checkpointed;
- is opened on the mesh (``open``): it places its data, checks it and reads ahead, so a bad input is
  refused before the progress bar starts; a resumed run passes the checkpoint's source state (with
  ``"step"``, the step it resumes at); it returns the tokens already read (the bar's start);
- hands over the first rows (``warm_up``) for a data-dependent initialisation and the normalisation
  scales, together with its device state (a shuffle buffer, or None);
- gives the engine one :class:`Chunk` at a time: how many steps, a pure :class:`Feed` (what the
  engine's jitted chunk program calls to produce the rows its steps read) and the device arrays the
  feed reads (not donated);
- reports its position (``state``, JSON) for the checkpoint; its device state is checkpointed by the
  engine next to the training state.

The engine owns the optimizer, the loss, the precision, the grouping, the checkpoints, the progress bar,
the NaN checks, the scale folding and the result.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol, runtime_checkable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from jaxtyping import Array, Float, Int, PyTree

from jsae.train import _data as data_mod
from jsae.train._config import TrainConfig
from jsae.train._sharding import AXIS, pad_leading, replicate, shard_leading


class Feed(Protocol):
    """The device half of a source: pure, hashable (a jit static argument; a frozen dataclass).

    ``produce`` runs inside the engine's jitted chunk, on the whole mesh (global view): it returns the
    source's new device state, the rows with a leading (padded) SAE axis that the steps read
    (``per_sae``, sharded over the mesh's ``"sae"`` axis, or None) and replicated arrays (``shared``).
    ``batch_at(i, own, shared, g)`` is the ``[g, B, d_in]`` batch of the chunk's step ``i`` for a group of
    ``g`` SAEs whose slice of ``per_sae`` is ``own``, on one device.
    """

    def produce(
        self, carry: PyTree, inputs: PyTree, start: Int[Array, ""], n_steps: int
    ) -> tuple[PyTree, Any, Any]: ...

    def batch_at(self, i: Int[Array, ""], own: Any, shared: Any, g: int) -> Float[Array, "g B d_in"]: ...


class Chunk(NamedTuple):
    """One chunk of steps as a source hands it to the engine."""

    n_steps: int
    feed: Feed
    inputs: PyTree  # device arrays the feed reads (not donated)
    tokens: int  # tokens read for this chunk (the progress bar's unit)


@runtime_checkable
class Source(Protocol):
    """What ``jsae.train.train`` consumes. ``n_inputs`` (None: the stack's size) and ``d_in`` (None: the
    stack's) are what the source serves; ``checkpointable``: a run on it can resume from a checkpoint."""

    n_inputs: int | None
    d_in: int | None
    checkpointable: bool

    def plan(self, cfg: TrainConfig) -> TrainConfig: ...

    def open(
        self, n: int, d_in: int, n_pad: int, mesh: jax.sharding.Mesh, cfg: TrainConfig, resume: dict | None
    ) -> int: ...

    def warm_up(self, advance: Callable[[int], object]) -> tuple[PyTree, np.ndarray | None]:
        """The device state to start from and the first rows ``[N or 1, n, d_in]`` (None: not known)."""
        ...

    def carry_template(self, n: int) -> PyTree: ...

    def next_chunk(self, step: int, n_steps: int) -> Chunk: ...

    def total_tokens(self, cfg: TrainConfig) -> int: ...

    def state(self) -> dict: ...


@dataclass(frozen=True)
class ArrayFeed:
    """Batches drawn from device-resident data by the step (shuffled epochs, ``data.chunk_indices``)."""

    shared_data: bool
    batch: int
    n_tokens: int

    def produce(self, carry, inputs, start, n_steps):
        data, key = inputs
        rows = data_mod.chunk_indices(key, start, n_steps, self.batch, self.n_tokens)
        if self.shared_data:
            return carry, None, (data, rows)
        return carry, data, rows

    def batch_at(self, i, own, shared, g):
        if self.shared_data:
            data, rows = shared
            return data_mod.gather_batch(data, rows[i], g)
        return data_mod.gather_batch(own, shared[i], g)


class ArraySource:
    """In-memory activations: ``[N, T, d_in]`` (one slice per SAE) or ``[T, d_in]`` (shared by all).

    Each epoch is a fresh permutation of the rows, a pure function of ``cfg.seed`` and the step, so a
    resumed run draws exactly the batches of an uninterrupted one. Scales come from the first rows."""

    checkpointable = True

    def __init__(self, data):
        self.raw = data
        self.n_inputs = data.shape[0] if np.ndim(data) == 3 else None
        self.d_in = int(data.shape[-1]) if np.ndim(data) in (2, 3) else None
        self._feed: ArrayFeed | None = None
        self._inputs = None

    def plan(self, cfg: TrainConfig) -> TrainConfig:
        return cfg

    def open(self, n, d_in, n_pad, mesh, cfg, resume):
        data_mod.check_array(self.raw, n, d_in, cfg.batch_size)
        data = jnp.asarray(self.raw, jnp.float32)
        self._sample = data_mod.sample_rows(data)
        data = shard_leading(pad_leading(data, n_pad), mesh) if data.ndim == 3 else replicate(data, mesh)
        self._feed = ArrayFeed(data.ndim == 2, cfg.batch_size, int(data.shape[-2]))
        self._inputs = (data, jax.random.key(cfg.seed))
        self._batch, self._n = cfg.batch_size, n
        return int((resume or {}).get("step", 0)) * cfg.batch_size

    def warm_up(self, advance):
        sample = self._sample
        return None, sample[None] if sample.ndim == 2 else sample  # shared data: one input, [1, n, d]

    def carry_template(self, n):
        return None

    def next_chunk(self, step, n_steps):
        assert self._feed is not None, "open the source first"
        return Chunk(n_steps, self._feed, self._inputs, n_steps * self._batch)

    def total_tokens(self, cfg):
        return cfg.steps * cfg.batch_size

    def state(self):
        return {}


@dataclass(frozen=True)
class BatchFeed:
    """Batches the host stacked, ``[N, steps, B, d]`` on the device (sharded by SAE)."""

    def produce(self, carry, inputs, start, n_steps):
        return carry, inputs, None

    def batch_at(self, i, own, shared, g):
        return own[:, i].astype(jnp.float32)


Batches = Iterable[np.ndarray] | Callable[[], Iterable[np.ndarray]]


class IteratorSource:
    """Batches ``[N, B, d_in]`` or ``[B, d_in]`` from an iterable, or from a zero-argument callable that
    returns a fresh one (then a resumed run skips the batches already used; a callable that takes
    ``start_step=`` starts there itself). A one-shot iterable cannot be resumed, so a run on one refuses
    a checkpoint directory. ``sample``: ``[N, n, d_in]`` rows for the normalisation scales and a
    data-dependent initialisation (e.g. a cache's first chunk); without it ``normalise_activations``
    is refused.

    ``prefetch`` (default on): while the device trains on a chunk, a background thread reads, checks and
    places the next one, so the host's work (a cache's reads and shuffle, the NaN checks, the copy to the
    device) overlaps the steps instead of running between them. It reads only the batches the run will
    use (never past ``cfg.steps``), in the same order, so results are the same with it on or off; the
    cost is one more chunk held in memory."""

    def __init__(
        self,
        batches: Batches,
        *,
        sample: np.ndarray | None = None,
        d_in: int | None = None,
        prefetch: bool = True,
    ):
        self.batches = batches
        self.sample = sample
        self.n_inputs = None if sample is None else int(sample.shape[0])
        self.d_in = d_in if d_in is not None else (None if sample is None else int(sample.shape[-1]))
        self.checkpointable: bool = bool(callable(batches))
        self.prefetch = prefetch
        self._it: Iterator[np.ndarray] | None = None
        self._ahead: _Ahead | None = None

    def plan(self, cfg: TrainConfig) -> TrainConfig:
        return cfg

    def open(self, n, d_in, n_pad, mesh, cfg, resume):
        start = int((resume or {}).get("step", 0))
        self._it = data_mod.iterator_from(self.batches, start)
        self._n, self._d_in, self._n_pad, self._mesh = n, d_in, n_pad, mesh
        self._steps, self._chunk_steps, self._ahead = cfg.steps, cfg.chunk_steps, None
        return 0

    def warm_up(self, advance):
        return None, self.sample

    def carry_template(self, n):
        return None

    def next_chunk(self, step, n_steps):
        assert self._it is not None, "open the source first"
        ahead, self._ahead = self._ahead, None
        if ahead is not None and (ahead.step, ahead.n_steps) == (step, n_steps):
            xs = ahead.result()
        else:
            if ahead is not None:  # asked for another chunk than the one read ahead: not the engine's order
                raise RuntimeError(
                    f"IteratorSource read ahead steps {ahead.step}.. ({ahead.n_steps}) but was asked for {step}.. "
                    f"({n_steps}); ask for chunks in order, or pass prefetch=False"
                )
            xs = self._read(step, n_steps)
        after = step + n_steps
        if self.prefetch and after < self._steps:
            self._ahead = _Ahead(self._read, after, min(self._chunk_steps, self._steps - after))
        return Chunk(n_steps, BatchFeed(), xs, n_steps * xs.shape[2])

    def _read(self, step: int, n_steps: int) -> jax.Array:
        """The batches of steps ``step .. step + n_steps - 1``, checked, padded and placed by SAE."""
        assert self._it is not None, "open the source first"
        xs = data_mod.next_chunk(self._it, n_steps, self._n, self._d_in, step)  # [N, steps, B, d]
        if self._n_pad > self._n:  # on the host: the chunk goes to each device once, already split
            xs = np.concatenate([xs, np.repeat(xs[-1:], self._n_pad - self._n, axis=0)], axis=0)
        return jax.device_put(xs, NamedSharding(self._mesh, P(AXIS)))

    def total_tokens(self, cfg):
        return 0  # unknown until the batches arrive

    def state(self):
        return {}


class _Ahead:
    """``read(step, n_steps)`` running on a daemon thread; ``result()`` waits for it and re-raises its error
    (a bad batch is reported when the engine asks for that chunk, as without prefetching)."""

    def __init__(self, read: Callable[[int, int], jax.Array], step: int, n_steps: int):
        self.step, self.n_steps = step, n_steps
        self._value: jax.Array | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(read,), daemon=True)
        self._thread.start()

    def _run(self, read) -> None:
        try:
            self._value = read(self.step, self.n_steps)
        except BaseException as e:  # noqa: BLE001 - handed to the engine's thread by result()
            self._error = e

    def result(self) -> jax.Array:
        self._thread.join()
        if self._error is not None:
            raise self._error
        assert self._value is not None
        return self._value


def as_source(data: Any) -> Source:
    """``data`` as a source: a source as it is, an array as an :class:`ArraySource`, anything else (an
    iterable or a callable returning one) as an :class:`IteratorSource`."""
    if isinstance(data, Source):
        return data
    if hasattr(data, "shape") and hasattr(data, "dtype"):
        return ArraySource(data)
    if not callable(data) and not isinstance(data, Iterable):
        raise TypeError(
            f"cannot train on a {type(data).__name__}: give an array [T, d_in] or [N, T, d_in], an iterable "
            "of batches, a callable returning one, or a source (jsae.train.Source)"
        )
    return IteratorSource(data)  # pyright: ignore[reportArgumentType]  # an iterable or a callable, checked above
