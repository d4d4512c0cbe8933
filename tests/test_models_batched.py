"""map_batches against one forward per sequence (no padding at all): the oracle for every batched analysis."""

import equinox as eqx
import numpy as np
import pytest

from jsae.models import ModelError, capture, forward, load_hf_dir
from jsae.models._batched import map_batches, plan_buckets, split_tokens


@pytest.fixture(scope="module")
def tiny(tiny_llama_dir):
    model, _, _ = load_hf_dir(tiny_llama_dir[0])
    return model


@eqx.filter_jit
def _last_and_all(model, tokens, lengths, scale):
    logits, cache = forward(model, tokens, hooks=capture("resid_post"), lengths=lengths, logits="last")
    return {"last": logits * scale[:, None]}


@eqx.filter_jit
def _resid(model, tokens, lengths):
    _, cache = forward(model, tokens, hooks=capture("resid_post"), lengths=lengths, logits=False)
    return cache["resid_post"][-1]


def test_map_batches_matches_one_forward_per_sequence(tiny, rng):
    V = tiny.cfg.vocab_size
    seqs = [rng.integers(0, V, size=n).tolist() for n in (3, 9, 1, 17, 5, 9, 2)]
    scale = np.arange(1, len(seqs) + 1, dtype=np.float32)
    last = map_batches(_last_and_all, tiny, seqs, None, scale, batch_size=3, pad_multiple=4)["last"]
    resid = map_batches(_resid, tiny, seqs, batch_size=3, pad_multiple=4, per_token=True)
    offset = 0
    for i, s in enumerate(seqs):
        ref_logits, ref_cache = forward(tiny, np.asarray([s]), hooks=capture("resid_post"))
        np.testing.assert_allclose(last[i], np.asarray(ref_logits)[0, -1] * scale[i], rtol=2e-5, atol=2e-5)
        np.testing.assert_allclose(
            resid[offset : offset + len(s)], np.asarray(ref_cache["resid_post"][-1, 0]), rtol=2e-5, atol=2e-5
        )
        offset += len(s)
    assert offset == len(resid)
    back = split_tokens(resid, np.array([len(s) for s in seqs]))
    assert back.shape == (len(seqs), 17, tiny.cfg.d_model) and np.all(back[2, 1:] == 0)


def test_padded_array_input_and_buckets(tiny, rng):
    V = tiny.cfg.vocab_size
    ids = rng.integers(0, V, size=(5, 12)).astype(np.int32)
    lengths = np.array([12, 4, 7, 1, 12])
    a = map_batches(_last_and_all, tiny, ids, lengths, np.ones(5, np.float32), batch_size=2)["last"]
    b = map_batches(
        _last_and_all,
        tiny,
        [ids[i, : lengths[i]] for i in range(5)],
        None,
        np.ones(5, np.float32),
        batch_size=5,
        pad_multiple=1,
    )["last"]
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5)
    buckets = plan_buckets(lengths, batch_size=2, bytes_per_token=1000, max_batch_bytes=8000, pad_multiple=8)
    assert sorted(np.concatenate([x.rows for x in buckets]).tolist()) == list(range(5))
    assert all(x.n_rows * x.T * 1000 <= 8000 or x.n_rows == 1 for x in buckets)


def test_bad_inputs_say_what_to_do(tiny):
    with pytest.raises(ModelError, match="at least one real token"):
        map_batches(_last_and_all, tiny, [[1, 2], []], None, np.ones(2, np.float32))
    with pytest.raises(ModelError, match="per-sequence argument"):
        map_batches(_last_and_all, tiny, [[1, 2], [3]], None, np.ones(3, np.float32))
    with pytest.raises(ModelError, match="per_token=True"):
        map_batches(_resid, tiny, [[1] * 9, [3]], batch_size=1)


def test_last_batch_pads_to_a_multiple_of_8_rows():
    """20 prompts in batches of 32 run as 24 rows (not 32); full batches keep batch_size rows."""
    (one,) = plan_buckets(np.full(20, 5), batch_size=32)
    assert (one.n_rows, one.T, len(one.rows)) == (24, 8, 20)
    buckets = plan_buckets(np.arange(1, 42), batch_size=32, pad_multiple=8)
    assert [(b.n_rows, len(b.rows)) for b in buckets] == [(32, 32), (16, 9)]
    assert sorted(np.concatenate([b.rows for b in buckets]).tolist()) == list(range(41))
