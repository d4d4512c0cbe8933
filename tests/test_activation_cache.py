"""The on-disk activation cache: bit-exact round trips, checksums, resume, shuffled streaming.

Oracles: the array written (and an integer round-to-nearest-even bf16 cast of it), a token lookup table
built from the written data, and tensorstore reading the zarr array on its own.
"""

import itertools
import json
import os
import signal
import subprocess
import sys
import textwrap

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import tensorstore as ts

from jsae.activations import _cache as C

N, CT, D, NC = 3, 8, 4, 5  # inputs, tokens per chunk, features, chunks
CFG = {"model": "toy", "points": ["z"], "heads": [[0, 1], [1, 0], [1, 1]], "context": 16, "text": "unit test"}


def make_data(seed=0, n_chunks=NC):
    return np.random.default_rng(seed).standard_normal((N, CT * n_chunks, D)).astype(np.float32)


def write(path, data, dtype="float32", config=CFG, finish=True, chunks=None):
    w = C.create(path, n_rows=N, d=D, chunk_tokens=CT, n_chunks=data.shape[1] // CT, dtype=dtype, config=config)
    for i in range(w.n_chunks) if chunks is None else chunks:
        w.write_chunk(i, data[:, i * CT : (i + 1) * CT])
    return w.finish() if finish else w


def bf16_rne(x):
    """float32 -> bfloat16 as float32, round to nearest even, by integer arithmetic on the bits."""
    u = x.view(np.uint32).astype(np.uint64)
    r = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    return (r.astype(np.uint32) << 16).view(np.float32)


def bits(x):
    return np.asarray(x, np.float32).view(np.uint32)


def test_float32_round_trip_is_bit_exact(tmp_path):
    data = make_data()
    data[0, 3, 1] = -0.0
    cache = write(tmp_path / "c", data)
    assert (cache.n_rows, cache.d, cache.n_tokens, cache.n_chunks) == (N, D, CT * NC, NC)
    assert cache.config == CFG
    got = np.concatenate(list(cache.iter_chunks()), axis=1)
    assert got.dtype == np.float32 and np.array_equal(bits(got), bits(data))
    again = C.open_cache(tmp_path / "c")
    assert np.array_equal(bits(again.read_chunk(3)), bits(data[:, 3 * CT : 4 * CT]))
    assert np.array_equal(bits(again.read_chunk(1, rows=[2, 0])), bits(data[[2, 0], CT : 2 * CT]))
    # the folder is a plain zarr v3 array that tensorstore opens without jsae
    arr = ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": str(tmp_path / "c" / "acts")}}).result()
    assert np.array_equal(bits(arr.read().result()), bits(data))


def test_bfloat16_round_trip_matches_a_bf16_cast(tmp_path):
    data = make_data(1) * 100
    data[1, 5] = [1 + 2**-8, 1 + 3 * 2**-8, -(1 + 2**-8), 0.0]  # exact ties: round to even
    oracle = bf16_rne(data)
    assert np.array_equal(bits(oracle), bits(data.astype(ml_dtypes.bfloat16).astype(np.float32)))
    cache = write(tmp_path / "c", data, dtype="bfloat16")
    got = np.concatenate(list(cache.ordered_batches(7)), axis=1)
    assert got.dtype == np.float32 and np.array_equal(bits(got), bits(oracle))
    # on disk: two bytes per value, the chunk file is the raw little-endian bf16 bits
    raw = np.fromfile(cache.chunk_file(2), dtype="<u2").reshape(N, CT, D)
    assert np.array_equal(raw, (bits(oracle[:, 2 * CT : 3 * CT]) >> 16).astype(np.uint16))
    # a bf16 cache can hand out bf16 batches as they are (cast on the device)
    f32 = next(cache.batches(12, seed=1))
    b16 = next(cache.batches(12, seed=1, out_dtype="bfloat16"))
    assert b16.dtype == ml_dtypes.bfloat16 and np.array_equal(bits(b16.astype(np.float32)), bits(f32))
    with pytest.raises(C.CacheError, match="out_dtype must be 'float32' for a float32 cache"):
        next(write(tmp_path / "f", data).batches(12, seed=1, out_dtype="bfloat16"))
    # a jax bf16 array goes in unchanged
    w = C.create(tmp_path / "j", n_rows=N, d=D, chunk_tokens=CT, n_chunks=1, dtype="bfloat16", config={})
    w.write_chunk(0, jnp.asarray(data[:, :CT], dtype=jnp.bfloat16))
    assert np.array_equal(bits(w.finish().read_chunk(0)), bits(oracle[:, :CT]))


def test_ordered_batches_follow_token_order(tmp_path):
    data = make_data(2)
    cache = write(tmp_path / "c", data)
    out = list(cache.ordered_batches(6, rows=[1]))
    assert [b.shape[1] for b in out] == [6] * 6 + [4]
    assert np.array_equal(np.concatenate(out, axis=1), data[[1]])
    assert [b.shape[1] for b in cache.ordered_batches(6, drop_last=True)] == [6] * 6


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_corrupt_chunk_is_rejected_and_repaired(tmp_path, damage):
    data = make_data(3)
    cache = write(tmp_path / "c", data, dtype="bfloat16")
    f = cache.chunk_file(2)
    if damage == "flip":
        b = bytearray(f.read_bytes())
        b[17] ^= 0xFF
        f.write_bytes(bytes(b))
    else:
        f.write_bytes(f.read_bytes()[:-2])
    cache = C.open_cache(tmp_path / "c")  # opening is cheap; the chunk is checked when read
    cache.read_chunk(1)
    with pytest.raises(C.CorruptChunkError, match=r"chunk 2 .*corrupt.*delete .* re-run `jsae cache`"):
        cache.read_chunk(2)
    with pytest.raises(C.CorruptChunkError, match="chunk 2"):
        list(cache.ordered_batches(CT))
    with pytest.raises(C.CorruptChunkError, match="chunk 2"):
        list(itertools.islice(cache.batches(CT, seed=0), NC))
    assert cache.verify() == [2]
    # the repair the message names: delete the file, run the same cache command again
    f.unlink()
    with pytest.raises(C.IncompleteCacheError, match="1 of 5 chunks are missing"):
        C.open_cache(tmp_path / "c")
    w = C.create(tmp_path / "c", n_rows=N, d=D, chunk_tokens=CT, n_chunks=NC, dtype="bfloat16", config=CFG)
    assert w.missing_chunks() == [2]
    w.write_chunk(2, data[:, 2 * CT : 3 * CT])
    assert np.array_equal(bits(w.finish().read_chunk(2)), bits(bf16_rne(data[:, 2 * CT : 3 * CT])))


def test_verify_on_resume_rewrites_corrupt_chunks(tmp_path):
    data = make_data(4)
    write(tmp_path / "c", data)
    f = C.open_cache(tmp_path / "c").chunk_file(4)
    b = bytearray(f.read_bytes())
    b[0] ^= 1
    f.write_bytes(bytes(b))
    args = dict(n_rows=N, d=D, chunk_tokens=CT, n_chunks=NC, dtype="float32", config=CFG)
    assert C.create(tmp_path / "c", **args).missing_chunks() == []  # sizes look fine without verify
    w = C.create(tmp_path / "c", verify=True, **args)
    assert w.missing_chunks() == [4]
    with pytest.raises(C.IncompleteCacheError, match="1 of 5 chunks are missing"):
        C.open_cache(tmp_path / "c")  # the stale completion marker is gone


def test_incomplete_cache_is_rejected(tmp_path):
    data = make_data(5)
    w = write(tmp_path / "c", data, finish=False, chunks=[0, 3, 4])
    with pytest.raises(
        C.IncompleteCacheError, match=r"2 of 5 chunks are missing \(first: \[1, 2\]\).*re-run `jsae cache`"
    ):
        C.open_cache(tmp_path / "c")
    with pytest.raises(C.IncompleteCacheError, match="2 of 5 chunks"):
        w.finish()
    for i in (1, 2):
        w.write_chunk(i, data[:, i * CT : (i + 1) * CT])
    with pytest.raises(C.IncompleteCacheError, match="never finished"):
        C.open_cache(tmp_path / "c")
    assert np.array_equal(np.concatenate(list(w.finish().iter_chunks()), axis=1), data)


def test_interrupted_writer_resumes_to_the_same_cache(tmp_path, monkeypatch):
    data = make_data(6)
    write(tmp_path / "once", data, dtype="bfloat16")
    # a crash after chunk 3's bytes hit the disk but before the manifest recorded it
    w = write(tmp_path / "twice", data, dtype="bfloat16", finish=False, chunks=[0, 1])
    real = C._write_json

    def crash(path, obj):
        if path.name == "manifest.json":
            raise KeyboardInterrupt
        real(path, obj)

    monkeypatch.setattr(C, "_write_json", crash)
    with pytest.raises(KeyboardInterrupt):
        w.write_chunk(3, data[:, 3 * CT : 4 * CT])
    monkeypatch.setattr(C, "_write_json", real)
    del w
    w = C.open_writer(tmp_path / "twice")
    assert w.done_chunks() == [0, 1] and w.missing_chunks() == [2, 3, 4]
    for i in w.missing_chunks():
        w.write_chunk(i, data[:, i * CT : (i + 1) * CT])
    w.finish()
    a, b = C.open_cache(tmp_path / "once"), C.open_cache(tmp_path / "twice")
    for i in range(NC):
        assert a.chunk_file(i).read_bytes() == b.chunk_file(i).read_bytes()
    assert json.loads((tmp_path / "once/manifest.json").read_text()) == json.loads(
        (tmp_path / "twice/manifest.json").read_text()
    )


def test_sigkilled_cache_run_resumes(tmp_path):
    data = make_data(7)
    np.save(tmp_path / "data.npy", data)
    script = textwrap.dedent(f"""
        import importlib.util, os, signal, numpy as np
        spec = importlib.util.spec_from_file_location("cache", {C.__file__!r})   # (skips the package's jax imports)
        C = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(C)
        data = np.load({str(tmp_path / "data.npy")!r})
        w = C.create({str(tmp_path / "c")!r}, n_rows={N}, d={D}, chunk_tokens={CT}, n_chunks={NC},
                     dtype="float32", config={CFG!r})
        for i in w.missing_chunks():
            w.write_chunk(i, data[:, i * {CT}:(i + 1) * {CT}])
            if i == 2 and os.environ.get("KILL"):
                os.kill(os.getpid(), signal.SIGKILL)
        w.finish()
        print("done", w.done_chunks())
    """)
    env = dict(os.environ, KILL="1", JAX_PLATFORMS="cpu")
    first = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert first.returncode == -signal.SIGKILL, first.stderr
    assert C.open_writer(tmp_path / "c").done_chunks() == [0, 1, 2]
    env.pop("KILL")
    second = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert second.returncode == 0, second.stderr
    assert np.array_equal(bits(np.concatenate(list(C.open_cache(tmp_path / "c").iter_chunks()), axis=1)), bits(data))


def test_different_config_in_the_same_folder_is_rejected(tmp_path):
    write(tmp_path / "c", make_data(8), finish=False, chunks=[0])
    args = dict(n_rows=N, d=D, chunk_tokens=CT, n_chunks=NC, dtype="float32", config=CFG)
    with pytest.raises(
        C.CacheConfigError, match=r"different settings \(config.model: cache has 'toy', asked for 'other'"
    ):
        C.create(tmp_path / "c", **{**args, "config": {**CFG, "model": "other"}})
    with pytest.raises(C.CacheConfigError, match="dtype: cache has 'float32', asked for 'bfloat16'"):
        C.create(tmp_path / "c", **{**args, "dtype": "bfloat16"})
    with pytest.raises(C.CacheConfigError, match="n_chunks"):
        C.create(tmp_path / "c", **{**args, "n_chunks": NC + 1})
    # tuples and lists are the same JSON: that is not a different config
    assert C.create(tmp_path / "c", **{**args, "config": {**CFG, "points": ("z",)}}).done_chunks() == [0]
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(C.CacheError, match="not empty and holds no activation cache"):
        C.create(tmp_path / "other", **args)
    with pytest.raises(C.CacheError, match="not a jsae activation cache"):
        C.open_cache(tmp_path / "other")


def test_open_cache_checks_expected_config(tmp_path):
    write(tmp_path / "c", make_data(9))
    assert C.open_cache(tmp_path / "c", expect={"model": "toy", "context": 16}).n_rows == N
    with pytest.raises(C.CacheConfigError, match="context: cache has 16, asked for 32"):
        C.open_cache(tmp_path / "c", expect={"context": 32})


def test_bad_chunks_are_refused(tmp_path):
    w = C.create(tmp_path / "c", n_rows=N, d=D, chunk_tokens=CT, n_chunks=2, config={})
    with pytest.raises(C.CacheError, match=r"shape \[N, chunk_tokens, d\] = \[3, 8, 4\]; got \[3, 7, 4\]"):
        w.write_chunk(0, np.zeros((N, CT - 1, D), np.float32))
    bad = np.zeros((N, CT, D), np.float32)
    bad[1, 5, 2] = np.nan
    with pytest.raises(C.CacheError, match="NaN or inf .*input 1, token 5"):
        w.write_chunk(0, bad)
    with pytest.raises(C.CacheError, match=r"chunk index must be an integer in \[0, 2\)"):
        w.write_chunk(2, np.zeros((N, CT, D), np.float32))
    with pytest.raises(C.CacheError, match="dtype must be one of"):
        C.create(tmp_path / "d", n_rows=N, d=D, chunk_tokens=CT, n_chunks=2, dtype="float16", config={})
    w.write_chunk(0, np.zeros((N, CT, D), np.float32))  # all zeros is data, not "missing"
    w.close()
    assert C.open_writer(tmp_path / "c").done_chunks() == [0]


def token_lookup(data):
    return {data[0, t].tobytes(): t for t in range(data.shape[1])}


def tokens_of(batch, data, lookup):
    """The token index of every batch position; checks that all N inputs hold that same token."""
    ts_ = [lookup[batch[0, j].tobytes()] for j in range(batch.shape[1])]
    assert np.array_equal(bits(batch), bits(data[:, ts_]))
    return ts_


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_one_epoch_of_shuffled_batches_is_a_permutation_of_the_tokens(tmp_path, dtype):
    data = make_data(10)
    cache = write(tmp_path / "c", data, dtype=dtype)
    oracle = data if dtype == "float32" else bf16_rne(data)
    lookup = token_lookup(oracle)
    assert len(lookup) == CT * NC
    it = cache.batches(10, seed=3, chunks_in_memory=2)
    epochs = [[tokens_of(next(it), oracle, lookup) for _ in range(4)] for _ in range(2)]
    for ep in epochs:
        assert sorted(itertools.chain(*ep)) == list(range(CT * NC))
    assert epochs[0] != epochs[1]  # a new order each epoch
    chunks_in_first = {t // CT for t in epochs[0][0]}
    assert len(chunks_in_first) == 2  # the first batch mixes its window's 2 chunks
    # each epoch visits the chunks in a new order: the first window's chunks change from epoch to epoch
    it = cache.batches(CT * 2, seed=3, chunks_in_memory=2)
    first_windows = [frozenset(t // CT for t in tokens_of(b, oracle, lookup)) for b in itertools.islice(it, 0, 12, 2)]
    assert all(len(w) == 2 for w in first_windows) and len(set(first_windows)) > 1
    # a batch size that does not divide the cache: distinct tokens, the leftover skipped
    it = cache.batches(7, seed=3, chunks_in_memory=3)
    seen = list(itertools.chain(*(tokens_of(next(it), oracle, lookup) for _ in range(cache.steps_per_epoch(7)))))
    assert len(seen) == len(set(seen)) == 7 * (CT * NC // 7)


@pytest.mark.parametrize("B,W", [(10, 2), (6, 3), (16, 1), (40, 5)])
def test_resume_at_start_step_equals_the_uninterrupted_tail(tmp_path, B, W):
    data = make_data(11)
    cache = write(tmp_path / "c", data, dtype="bfloat16")
    full = list(itertools.islice(cache.batches(B, seed=5, chunks_in_memory=W), 20))
    no_prefetch = list(itertools.islice(cache.batches(B, seed=5, chunks_in_memory=W, prefetch=False), 20))
    assert all(np.array_equal(bits(a), bits(b)) for a, b in zip(full, no_prefetch))
    for s in range(1, 17):
        tail = list(itertools.islice(cache.batches(B, seed=5, start_step=s, chunks_in_memory=W), 4))
        assert all(np.array_equal(bits(a), bits(b)) for a, b in zip(tail, full[s : s + 4])), s
    other = next(cache.batches(B, seed=6, chunks_in_memory=W))
    assert not np.array_equal(other, full[0])  # the seed decides the order
    rows = list(itertools.islice(cache.batches(B, seed=5, chunks_in_memory=W, rows=[2, 0]), 6))
    assert all(np.array_equal(bits(r), bits(f[[2, 0]])) for r, f in zip(rows, full))


def test_batches_refuse_bad_arguments(tmp_path):
    cache = write(tmp_path / "c", make_data(12))
    with pytest.raises(C.CacheError, match="larger than the cache"):
        cache.batches(CT * NC + 1, seed=0)
    with pytest.raises(C.CacheError, match=r"rows must lie in \[0, 3\)"):
        cache.batches(4, seed=0, rows=[0, 3])
    with pytest.raises(C.CacheError, match="seed must be a non-negative integer"):
        cache.batches(4, seed=-1)


def test_batches_read_only_the_windows_they_need(tmp_path, monkeypatch):
    cache = write(tmp_path / "c", make_data(13))
    read = []
    real = C._read_raw
    monkeypatch.setattr(C, "_read_raw", lambda path, meta, i, crc: read.append(i) or real(path, meta, i, crc))
    order = cache.chunk_order(0, 0)
    it = cache.batches(CT, seed=0, chunks_in_memory=2, start_step=2, prefetch=False)  # window 1 of epoch 0
    next(it)
    assert sorted(read) == sorted(order[2:4])
    next(it), next(it)  # ... and then window 2
    assert sorted(read) == sorted(order[2:5])
    read.clear()
    it = cache.batches(CT, seed=0, chunks_in_memory=2, start_step=2)  # prefetch: window 2 as well
    next(it)
    assert set(read) <= set(order[2:5]) and set(order[2:4]) <= set(read)


def test_one_writer_at_a_time(tmp_path):
    data = make_data(14)
    w = write(tmp_path / "c", data, finish=False, chunks=[0])
    with pytest.raises(C.CacheError, match="another writer holds"):
        C.open_writer(tmp_path / "c")
    w.close()
    w = C.open_writer(tmp_path / "c")
    w.write_chunk(0, data[:, CT : 2 * CT])  # a rewrite replaces the chunk and its checksum
    for i in range(1, NC):
        w.write_chunk(i, data[:, i * CT : (i + 1) * CT])
    assert np.array_equal(bits(w.finish().read_chunk(0)), bits(data[:, CT : 2 * CT]))
