"""An on-disk activation cache: one model pass, many SAE trainings (sweeps) read it back.

A cache is a folder::

    cache.json      format, version, shapes, dtype, chunk size, checksum kind and the caller's config
    acts/           a zarr v3 array [N, T, d] (N SAE inputs, e.g. heads; T tokens; d features), written
                    with tensorstore, chunked along T: chunk i is tokens [i * chunk_tokens, (i + 1) *
                    chunk_tokens) of all N inputs, one file ``acts/c/0/<i>/0`` of raw little-endian bytes
    manifest.json   {"checksum": "crc32", "chunks": {"<i>": "<crc32 hex of chunk i's file bytes>"}},
                    updated atomically (tmp file + os.replace) after each chunk is written
    COMPLETE        written by ``CacheWriter.finish`` once every chunk is in the manifest

Values are stored as float32 or bfloat16 (half the disk); reads return float32 (a bf16 cache can also
hand out its bf16 values, to be cast on the device). Nothing is pickled. One writer at a time (a lock
file). A run that is killed resumes: ``create`` on a folder holding the same config returns a writer
whose ``done_chunks()`` lists what is already on disk, so the caller skips those model passes.

Reading verifies each chunk's checksum. ``ActivationCache.batches`` streams ``[N, B, d]`` batches shuffled
across chunks: each epoch visits the chunks in a fresh random order, a window of ``chunks_in_memory``
chunks is pooled and its tokens permuted; the batch at any step is a pure function of (seed, step), so a
resumed run jumps straight to its window. Memory is bounded by two windows (the current one and the one
being prefetched), not by the cache size.
"""

from __future__ import annotations

import json
import os
import threading
import zlib
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Generic, TypeVar

try:
    import fcntl
except ImportError:  # (Windows: no lock)
    fcntl = None

import ml_dtypes
import numpy as np
import tensorstore as ts
from jaxtyping import Array, Float

_T = TypeVar("_T")

FORMAT = "jsae-activation-cache"
VERSION = 1
CHECKSUM = "crc32"
DTYPES = {"float32": np.dtype(np.float32), "bfloat16": np.dtype(ml_dtypes.bfloat16)}
_META, _MANIFEST, _DONE, _ARRAY = "cache.json", "manifest.json", "COMPLETE", "acts"
_CODECS = [{"name": "bytes", "configuration": {"endian": "little"}}]
_RESUME = "re-run `jsae cache` with the same arguments to resume; it computes only the missing chunks"


class CacheError(ValueError):
    """A folder that cannot be used as an activation cache (foreign, wrong format, bad arguments)."""


class CacheConfigError(CacheError):
    """The folder holds a cache written with a different config than the one asked for."""


class IncompleteCacheError(CacheError):
    """Some chunks were never written (the cache run was interrupted)."""


class CorruptChunkError(CacheError):
    """A chunk's bytes on disk do not match the checksum recorded when it was written."""


# ----------------------------------------------------------------------------------------- helpers


def _write_json(path: Path, obj) -> None:
    """Write JSON atomically: a reader sees the old file or the new one, never half of one."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True, allow_nan=False)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _read_json(path: Path, what: str):
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CacheError(
            f"cannot read the cache's {what} {path}: {e}; the folder is damaged, delete it and re-run `jsae cache`"
        ) from None


def _crc(buf: np.ndarray) -> str:
    return f"{zlib.crc32(buf.reshape(-1).view(np.uint8).data) & 0xFFFFFFFF:08x}"


def _flat(d, prefix="") -> dict:
    if not isinstance(d, dict):
        return {prefix: d}
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def _diff(stored: dict, given: dict) -> str:
    a, b = _flat(stored), _flat(given)
    keys = sorted(k for k in a.keys() | b.keys() if a.get(k, "<absent>") != b.get(k, "<absent>"))
    return "; ".join(f"{k}: cache has {a.get(k, '<absent>')!r}, asked for {b.get(k, '<absent>')!r}" for k in keys[:8])


def _bf16_bits_to_f32(u: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns (uint16) -> float32, exactly (a bf16 is the top half of a float32)."""
    out = np.empty(u.shape, np.uint32)
    np.left_shift(u, 16, out=out, dtype=np.uint32)
    return out.view(np.float32)


def _positive_int(name: str, v) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0:
        raise CacheError(f"{name} must be a positive integer; got {v!r}")
    return int(v)


def _make_meta(n_rows, d, chunk_tokens, n_chunks, dtype, config) -> dict:
    if dtype not in DTYPES:
        raise CacheError(f"dtype must be one of {sorted(DTYPES)}; got {dtype!r}")
    try:
        config = json.loads(json.dumps({} if config is None else config, allow_nan=False))
    except (TypeError, ValueError) as e:
        raise CacheError(f"config must be JSON (dicts, lists, strings, finite numbers): {e}") from None
    if not isinstance(config, dict):
        raise CacheError(f"config must be a dict; got {type(config).__name__}")
    n_rows, d = _positive_int("n_rows", n_rows), _positive_int("d", d)
    chunk_tokens, n_chunks = _positive_int("chunk_tokens", chunk_tokens), _positive_int("n_chunks", n_chunks)
    return {
        "format": FORMAT,
        "version": VERSION,
        "n_rows": n_rows,
        "d": d,
        "chunk_tokens": chunk_tokens,
        "n_chunks": n_chunks,
        "n_tokens": chunk_tokens * n_chunks,
        "dtype": dtype,
        "checksum": CHECKSUM,
        "array": _ARRAY,
        "config": config,
    }


def _load_meta(path: Path) -> dict:
    if not (path / _META).is_file():
        raise CacheError(f"{path} is not a jsae activation cache (no {_META}); write one with `jsae cache`")
    meta = _read_json(path / _META, "config")
    if meta.get("format") != FORMAT:
        raise CacheError(f"{path / _META} is not a jsae activation cache (format {meta.get('format')!r})")
    if meta.get("version") != VERSION:
        raise CacheError(
            f"{path} is a version {meta.get('version')} activation cache; this jsae reads version "
            f"{VERSION}. Re-create it with this jsae's `jsae cache`"
        )
    return meta


def _spec(path: Path, meta: dict | None = None) -> dict:
    spec = {
        "driver": "zarr3",
        "kvstore": {"driver": "file", "path": str(path / _ARRAY)},
        "context": {"cache_pool": {"total_bytes_limit": 0}},
    }
    if meta is not None:
        spec["metadata"] = {
            "shape": [meta["n_rows"], meta["n_tokens"], meta["d"]],
            "chunk_grid": {
                "name": "regular",
                "configuration": {"chunk_shape": [meta["n_rows"], meta["chunk_tokens"], meta["d"]]},
            },
            "chunk_key_encoding": {"name": "default"},
            "codecs": _CODECS,
            "data_type": meta["dtype"],
            "fill_value": 0,
        }
        # an all-zero chunk must still become a file, or it would look missing
        spec["store_data_equal_to_fill_value"] = True
    return spec


def _chunk_file(path: Path, i: int) -> Path:
    return path / _ARRAY / "c" / "0" / str(i) / "0"


def _chunk_nbytes(meta: dict) -> int:
    return meta["n_rows"] * meta["chunk_tokens"] * meta["d"] * DTYPES[meta["dtype"]].itemsize


def _load_manifest(path: Path) -> dict[int, str]:
    if not (path / _MANIFEST).is_file():
        return {}
    man = _read_json(path / _MANIFEST, "manifest")
    if man.get("checksum") != CHECKSUM:
        raise CacheError(f"{path / _MANIFEST} uses checksum {man.get('checksum')!r}; this jsae knows {CHECKSUM}")
    return {int(k): v for k, v in man.get("chunks", {}).items()}


def _read_raw(path: Path, meta: dict, i: int, crc: str | None) -> np.ndarray:
    """Chunk ``i`` as stored: [N, chunk_tokens, d] float32 or bf16 bits (uint16), its checksum verified."""
    f = _chunk_file(path, i)
    nbytes = _chunk_nbytes(meta)
    buf = np.empty(nbytes, np.uint8)
    fix = f"delete {f} and {_RESUME} (here: chunk {i})"
    try:
        with open(f, "rb", buffering=0) as fh:
            got = fh.readinto(buf.data)
            extra = fh.read(1)
    except FileNotFoundError:
        raise IncompleteCacheError(f"chunk {i} of {path} is missing on disk ({f}); {_RESUME}") from None
    if got != nbytes or extra:
        raise CorruptChunkError(
            f"chunk {i} of {path} is corrupt: {f} holds {'more than ' if extra else ''}"
            f"{got} bytes, expected {nbytes}. To repair it, {fix}"
        )
    if crc is not None and _crc(buf) != crc:
        raise CorruptChunkError(
            f"chunk {i} of {path} is corrupt: the crc32 of {f} is {_crc(buf)} but "
            f"{crc} was recorded when it was written. To repair it, {fix}"
        )
    store = np.float32 if meta["dtype"] == "float32" else np.uint16
    return buf.view(store).reshape(meta["n_rows"], meta["chunk_tokens"], meta["d"])


def _to_f32(raw: np.ndarray, dtype: str) -> np.ndarray:
    return raw if dtype == "float32" else _bf16_bits_to_f32(raw)


def _rows(rows, n: int) -> np.ndarray | None:
    if rows is None:
        return None
    r = np.asarray(rows)
    if r.ndim != 1 or r.size == 0 or not np.issubdtype(r.dtype, np.integer):
        raise CacheError(f"rows must be a non-empty 1-D list of integer indices into the {n} inputs; got {rows!r}")
    if r.min() < 0 or r.max() >= n:
        raise CacheError(f"rows must lie in [0, {n}) (the cache holds {n} inputs); got min {r.min()}, max {r.max()}")
    return r.astype(np.intp)


class _Pending(Generic[_T]):
    """``fn(*args)``, run now on a daemon thread (``background``) or when the result is asked for."""

    _value: _T  # set by _run() unless fn raised (then _error is set)

    def __init__(self, fn: Callable[..., _T], args: tuple, background: bool):
        self._fn, self._args = fn, args
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True) if background else None
        if self._thread:
            self._thread.start()

    def _run(self) -> None:
        try:
            self._value = self._fn(*self._args)
        except BaseException as e:  # handed to the consumer by result()
            self._error = e

    def result(self) -> _T:
        if self._thread:
            self._thread.join()
        else:
            self._run()
        if self._error is not None:
            raise self._error
        return self._value


# ------------------------------------------------------------------------------------------ writer


def _lock(path: Path):
    """An exclusive lock on the cache for one writer (released when the process dies, even by SIGKILL)."""
    f = open(path / ".lock", "a+")
    if fcntl is None:
        return f
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        raise CacheError(
            f"another writer holds {path} (a `jsae cache` run still going?); wait for it to end, "
            "or write to another folder"
        ) from None
    except OSError:  # a filesystem without locks (some network mounts): go on unlocked
        pass
    return f


class CacheWriter:
    """Writes chunks of one cache; made by ``create`` or ``open_writer``."""

    def __init__(self, path: Path, meta: dict, verify: bool):
        self.path, self.meta = path, meta
        self._lock = _lock(path)
        self._array = ts.open(_spec(path, meta), create=True, open=True).result()
        done = _load_manifest(path)
        for i in list(done):
            f = _chunk_file(path, i)
            ok = f.is_file() and f.stat().st_size == _chunk_nbytes(meta)
            if ok and verify:
                try:
                    _read_raw(path, meta, i, done[i])
                except CacheError:
                    ok = False
            if not ok:  # deleted or damaged since: compute it again
                del done[i]
        self._done = done
        if len(done) < meta["n_chunks"] and (path / _DONE).exists():
            (path / _DONE).unlink()
        self._save_manifest()

    @property
    def n_rows(self) -> int:
        return self.meta["n_rows"]

    @property
    def chunk_tokens(self) -> int:
        return self.meta["chunk_tokens"]

    @property
    def n_chunks(self) -> int:
        return self.meta["n_chunks"]

    def done_chunks(self) -> list[int]:
        """Indices of the chunks already on disk (skip their model passes)."""
        return sorted(self._done)

    def missing_chunks(self) -> list[int]:
        return [i for i in range(self.n_chunks) if i not in self._done]

    def _save_manifest(self) -> None:
        _write_json(
            self.path / _MANIFEST, {"checksum": CHECKSUM, "chunks": {str(k): v for k, v in sorted(self._done.items())}}
        )

    def write_chunk(
        self, i: int, acts: Float[np.ndarray, "N chunk_tokens d"] | Float[Array, "N chunk_tokens d"]
    ) -> None:
        """Write chunk ``i`` (tokens ``i*chunk_tokens ..``) from a numpy or jax array [N, chunk_tokens, d].

        Float inputs are taken as float32 and, for a bfloat16 cache, rounded to nearest bf16; a bf16 input
        is stored as is. The chunk counts as done only once its bytes are on disk and in the manifest."""
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)) or not 0 <= i < self.n_chunks:
            raise CacheError(f"chunk index must be an integer in [0, {self.n_chunks}); got {i!r}")
        x = np.asarray(acts)
        want = (self.n_rows, self.chunk_tokens, self.meta["d"])
        if x.shape != want:
            raise CacheError(f"chunk {i} must have shape [N, chunk_tokens, d] = {list(want)}; got {list(x.shape)}")
        store = DTYPES[self.meta["dtype"]]
        if x.dtype != store:
            if not (np.issubdtype(x.dtype, np.floating) or x.dtype == DTYPES["bfloat16"]):
                raise CacheError(f"chunk {i} must hold floats; got dtype {x.dtype}")
            x = x.astype(np.float32).astype(store)
        x = np.ascontiguousarray(x)
        bad = ~np.isfinite(x) if x.dtype == np.float32 else (x.view(np.uint16) & 0x7F80) == 0x7F80
        if bad.any():  # (checked after the cast: a float32 beyond bf16's range would become inf)
            where = np.argwhere(bad)[0]
            raise CacheError(
                f"chunk {i} contains NaN or inf (first at input {where[0]}, token {where[1]} of the "
                "chunk); the model pass produced bad values, fix it before caching"
            )
        if self._done.pop(int(i), None) is not None:  # a rewrite: not done until the new bytes are down
            self._save_manifest()
        self._array[:, i * self.chunk_tokens : (i + 1) * self.chunk_tokens, :].write(x).result()
        self._done[int(i)] = _crc(x)
        self._save_manifest()

    def finish(self) -> ActivationCache:
        """Mark the cache complete (every chunk written) and open it for reading."""
        missing = self.missing_chunks()
        if missing:
            raise IncompleteCacheError(
                f"cannot finish {self.path}: {len(missing)} of {self.n_chunks} chunks are "
                f"not written yet (first: {missing[:5]}); write them before finish()"
            )
        _write_json(
            self.path / _DONE,
            {
                "n_chunks": self.n_chunks,
                "n_tokens": self.meta["n_tokens"],
                "finished": datetime.now(UTC).isoformat(timespec="seconds"),
            },
        )
        self.close()
        return open_cache(self.path)

    def close(self) -> None:
        """Let another writer open this cache (also happens when the writer is garbage-collected)."""
        if self._lock is not None:
            self._lock.close()
            self._lock = None


def create(
    path: str | os.PathLike,
    *,
    n_rows: int,
    d: int,
    chunk_tokens: int,
    n_chunks: int,
    dtype: str = "float32",
    config: dict | None = None,
    verify: bool = False,
) -> CacheWriter:
    """Start a cache in ``path``, or resume the one there if it was written with the same arguments.

    The cache holds ``n_chunks * chunk_tokens`` tokens of ``n_rows`` inputs with ``d`` features, stored as
    ``dtype`` ("float32" or "bfloat16"). ``config`` (JSON) describes where the activations came from
    (model, hook points, heads, text source, context size) and must match on resume. Chunks on disk
    whose file was deleted are written again; ``verify=True`` also re-checks every done chunk's checksum
    (a full read) and rewrites the corrupt ones.
    """
    path = Path(path).absolute()
    meta = _make_meta(n_rows, d, chunk_tokens, n_chunks, dtype, config)
    if path.exists() and not path.is_dir():
        raise CacheError(f"cache path {path} is a file, not a folder; pass a new or empty folder")
    if (path / _META).exists():
        stored = _load_meta(path)
        if stored != meta:
            raise CacheConfigError(
                f"{path} already holds an activation cache written with different settings "
                f"({_diff(stored, meta)}). Use another folder, or delete this one to start over"
            )
        return CacheWriter(path, stored, verify)
    if path.exists() and any(p for p in path.iterdir() if not p.name.startswith(".")):
        raise CacheError(f"{path} is not empty and holds no activation cache (no {_META}); pass a new or empty folder")
    path.mkdir(parents=True, exist_ok=True)
    _write_json(path / _META, meta)
    return CacheWriter(path, meta, verify)


def open_writer(path: str | os.PathLike, *, verify: bool = False) -> CacheWriter:
    """Resume writing the cache in ``path`` with the settings it was created with."""
    path = Path(path).absolute()
    return CacheWriter(path, _load_meta(path), verify)


# ------------------------------------------------------------------------------------------ reader


class ActivationCache:
    """A complete cache opened for reading (``open_cache``). Reads return float32 unless asked for bf16."""

    def __init__(self, path: Path, meta: dict, checksums: dict[int, str]):
        self.path, self.meta, self._crc = path, meta, checksums

    config = property(lambda self: self.meta["config"], doc="the caller's config dict (model, points, ...)")
    n_rows = property(lambda self: self.meta["n_rows"], doc="N, the number of SAE inputs")
    d = property(lambda self: self.meta["d"])
    chunk_tokens = property(lambda self: self.meta["chunk_tokens"])
    n_chunks = property(lambda self: self.meta["n_chunks"])
    n_tokens = property(lambda self: self.meta["n_tokens"])
    dtype = property(lambda self: self.meta["dtype"], doc="the dtype on disk")

    def __repr__(self) -> str:
        return (
            f"ActivationCache({str(self.path)!r}, N={self.n_rows}, tokens={self.n_tokens}, d={self.d}, "
            f"{self.n_chunks} chunks of {self.chunk_tokens}, {self.dtype})"
        )

    def chunk_file(self, i: int) -> Path:
        return _chunk_file(self.path, i)

    def _raw(self, i: int, rows: np.ndarray | None = None) -> np.ndarray:
        raw = _read_raw(self.path, self.meta, i, self._crc[i])
        return raw if rows is None else raw[rows]

    def read_chunk(self, i: int, rows: Sequence[int] | None = None) -> Float[np.ndarray, "N chunk_tokens d"]:
        """Chunk ``i`` as float32 [N (or len(rows)), chunk_tokens, d], its checksum verified."""
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)) or not 0 <= i < self.n_chunks:
            raise CacheError(f"chunk index must be an integer in [0, {self.n_chunks}); got {i!r}")
        return _to_f32(self._raw(int(i), _rows(rows, self.n_rows)), self.dtype)

    def iter_chunks(self, rows: Sequence[int] | None = None) -> Iterator[np.ndarray]:
        """Every chunk in token order, float32 [N, chunk_tokens, d]."""
        for i in range(self.n_chunks):
            yield self.read_chunk(i, rows)

    def ordered_batches(
        self, batch_size: int, *, rows: Sequence[int] | None = None, drop_last: bool = False, out_dtype: str = "float32"
    ) -> Iterator[Float[np.ndarray, "N B d"]]:
        """The tokens in order, no shuffle, as [N, batch_size, d] (the last batch may be shorter unless
        ``drop_last``). Holds one chunk plus one batch in memory. ``out_dtype``: see ``batches``."""
        batch_size = _positive_int("batch_size", batch_size)
        r, out = _rows(rows, self.n_rows), self._converter(out_dtype)
        parts, have = [], 0
        for i in range(self.n_chunks):
            raw, pos = self._raw(i, r), 0
            while pos < self.chunk_tokens:
                take = min(batch_size - have, self.chunk_tokens - pos)
                parts.append(raw[:, pos : pos + take])
                have, pos = have + take, pos + take
                if have == batch_size:
                    yield out(np.concatenate(parts, axis=1))
                    parts, have = [], 0
        if parts and not drop_last:
            yield out(np.concatenate(parts, axis=1))

    def _converter(self, out_dtype: str):
        if out_dtype == "float32":
            return lambda raw: _to_f32(raw, self.dtype)
        if out_dtype == "bfloat16" and self.dtype == "bfloat16":
            return lambda raw: raw.view(DTYPES["bfloat16"])
        allowed = "'float32' or 'bfloat16'" if self.dtype == "bfloat16" else "'float32'"
        raise CacheError(f"out_dtype must be {allowed} for a {self.dtype} cache; got {out_dtype!r}")

    def steps_per_epoch(self, batch_size: int) -> int:
        """Batches in one shuffled epoch (the last ``n_tokens % batch_size`` tokens of each epoch's order
        are skipped)."""
        return self.n_tokens // _positive_int("batch_size", batch_size)

    def chunk_order(self, seed: int, epoch: int) -> np.ndarray:
        """The order in which epoch ``epoch`` visits the chunks."""
        return np.random.default_rng([seed, 0, epoch]).permutation(self.n_chunks)

    def batches(
        self,
        batch_size: int,
        *,
        seed: int,
        start_step: int = 0,
        rows: Sequence[int] | None = None,
        chunks_in_memory: int = 4,
        prefetch: bool = True,
        out_dtype: str = "float32",
    ) -> Iterator[Float[np.ndarray, "N B d"]]:
        """Shuffled batches [N (or len(rows)), batch_size, d], endlessly (epoch after epoch).

        Epoch e visits the chunks in the order ``chunk_order(seed, e)``, pooled ``chunks_in_memory`` at a
        time into windows; a window's tokens are permuted and dealt out in batches (a batch may straddle
        two windows, never two epochs). The shuffle permutes tokens, not inputs: every batch holds the same
        tokens for all N inputs. Batch ``s`` is a function of (seed, s) alone, so ``start_step=s`` yields
        exactly what an uninterrupted iteration yields from step s on, without replaying the steps before.

        Memory: the current window and (``prefetch``: read by a background thread) the next one, in the
        on-disk dtype, plus one batch. Batches are float32; a bfloat16 cache can also hand out its
        values as they are (``out_dtype="bfloat16"``, ml_dtypes arrays), to be cast on the device: half the
        host-to-device bytes and no host-side conversion.
        """
        B = _positive_int("batch_size", batch_size)
        W = min(_positive_int("chunks_in_memory", chunks_in_memory), self.n_chunks)
        if B > self.n_tokens:
            raise CacheError(
                f"batch_size={B} is larger than the cache ({self.n_tokens} tokens); lower it or cache more tokens"
            )
        if isinstance(start_step, bool) or not isinstance(start_step, (int, np.integer)) or start_step < 0:
            raise CacheError(f"start_step must be a non-negative integer; got {start_step!r}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise CacheError(f"seed must be a non-negative integer; got {seed!r}")
        r, out = _rows(rows, self.n_rows), self._converter(out_dtype)
        return self._shuffled(B, int(seed), int(start_step), r, W, prefetch, out)

    def _window(self, seed: int, epoch: int, k: int, W: int, rows) -> tuple[np.ndarray, np.ndarray]:
        """Window k of an epoch: its tokens [R, w * chunk_tokens, d] (on-disk dtype) and their permutation."""
        chunks = self.chunk_order(seed, epoch)[k * W : (k + 1) * W]
        ct = self.chunk_tokens
        n = self.n_rows if rows is None else len(rows)
        data = np.empty((n, len(chunks) * ct, self.d), np.float32 if self.dtype == "float32" else np.uint16)
        for j, c in enumerate(chunks):
            data[:, j * ct : (j + 1) * ct] = self._raw(int(c), rows)
        perm = np.random.default_rng([seed, 1, epoch, k]).permutation(data.shape[1])
        return data, perm

    def _shuffled(self, B: int, seed: int, step: int, rows, W: int, prefetch: bool, out) -> Iterator[np.ndarray]:
        spe = self.n_tokens // B
        span = W * self.chunk_tokens  # tokens in every window but maybe the last
        epoch, offset = divmod(step, spe)
        k, pos = divmod(offset * B, span)

        def following(e: int, k: int) -> tuple[int, int]:
            return (e, k + 1) if (k + 1) * span < spe * B else (e + 1, 0)

        def load(e: int, k: int) -> _Pending[tuple[np.ndarray, np.ndarray]]:
            return _Pending(self._window, (seed, e, k, W, rows), background=prefetch)

        data, perm = load(epoch, k).result()
        nxt = following(epoch, k)
        pending = load(*nxt)
        while True:
            parts, need = [], B
            while need:
                if pos == len(perm):  # window used up: move to the next one
                    epoch, k = nxt
                    data, perm = pending.result()
                    pos, nxt = 0, following(epoch, k)
                    pending = load(*nxt)
                take = min(need, len(perm) - pos)
                parts.append(np.take(data, perm[pos : pos + take], axis=1))
                pos, need = pos + take, need - take
            yield out(parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1))
            step += 1
            if step % spe == 0:  # epoch over: drop its leftover tokens
                pos = len(perm)  # (the next window is already epoch + 1's first)

    def verify(self) -> list[int]:
        """Read every chunk and return the indices of those whose checksum does not match (a full read)."""
        bad = []
        for i in range(self.n_chunks):
            try:
                _read_raw(self.path, self.meta, i, self._crc[i])
            except CacheError:
                bad.append(i)
        return bad


def open_cache(path: str | os.PathLike, *, expect: dict | None = None) -> ActivationCache:
    """Open a complete cache for reading, checking its format, its completeness and (``expect``) that the
    given config entries match, e.g. ``expect={"model": "smollm2-135m"}``."""
    path = Path(path).absolute()
    meta = _load_meta(path)
    try:
        arr = ts.open(_spec(path), open=True, read=True).result()
    except ValueError as e:
        raise CacheError(
            f"{path / _ARRAY} is not a readable zarr array ({e}); delete the folder and re-run `jsae cache`"
        ) from None
    zmeta = _read_json(path / _ARRAY / "zarr.json", "array metadata")
    chunk = zmeta.get("chunk_grid", {}).get("configuration", {}).get("chunk_shape")
    want_shape = (meta["n_rows"], meta["n_tokens"], meta["d"])
    if (
        tuple(arr.shape) != want_shape
        or zmeta.get("data_type") != meta["dtype"]
        or zmeta.get("codecs") != _CODECS
        or chunk != [meta["n_rows"], meta["chunk_tokens"], meta["d"]]
    ):
        raise CacheError(
            f"{path / _ARRAY} does not match {path / _META} (array {list(arr.shape)} "
            f"{zmeta.get('data_type')}, chunks {chunk}, codecs {zmeta.get('codecs')}); the folder was "
            "changed by something other than jsae: delete it and re-run `jsae cache`"
        )
    done = _load_manifest(path)
    missing = [i for i in range(meta["n_chunks"]) if i not in done or not _chunk_file(path, i).is_file()]
    if missing:
        raise IncompleteCacheError(
            f"{path} is incomplete: {len(missing)} of {meta['n_chunks']} chunks are missing "
            f"(first: {missing[:5]}); {_RESUME}"
        )
    if not (path / _DONE).is_file():
        raise IncompleteCacheError(
            f"{path} was never finished (no {_DONE} marker although every chunk is written); {_RESUME}"
        )
    if expect:
        got = {k: meta["config"].get(k, "<absent>") for k in expect}
        want = json.loads(json.dumps(expect))
        if got != want:
            raise CacheConfigError(
                f"{path} was cached with a different config than expected "
                f"({_diff(got, want)}); point at the right cache or re-run `jsae cache`"
            )
    return ActivationCache(path, meta, done)
