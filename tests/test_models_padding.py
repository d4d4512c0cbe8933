"""Padding cannot be misread: a batch from encode_batch, run without lengths, reads the same numbers as one
forward per sequence (the old failure: logits="last" read pad positions, a logit difference of 41.8)."""

import jax
import numpy as np
import pytest

from jsae.models import (
    TokenBatch,
    TokenOutOfRangeError,
    capture,
    forward,
    harvest,
    load_hf_dir,
    map_batches,
    pad_sequences,
)

TEXTS = ["the cat sat on the mat and then the dog", "a", "the dog ran", "one two three four five six"]


@pytest.fixture(scope="module")
def tiny(tiny_llama_tok):
    model, tok, _ = load_hf_dir(tiny_llama_tok[0])
    return model, tok


def _one_by_one(model, seqs, reduce):
    """Oracle: each sequence alone, no padding anywhere."""
    last, means = [], []
    for s in seqs:
        ids = np.asarray([s], np.int32)
        logits, cache = forward(model, ids, hooks=capture("resid_post"))
        last.append(np.asarray(logits)[0, -1])
        means.append(np.asarray(cache["resid_post"])[:, 0].mean(1) if reduce == "mean" else None)
    return np.stack(last), means


def test_encode_batch_then_forward_without_lengths_reads_real_positions(tiny):
    model, tok = tiny
    batch = tok.encode_batch(TEXTS, multiple_of=8)
    assert isinstance(batch, TokenBatch) and batch.ids.dtype == np.int32
    seqs = [tok.encode(t) for t in TEXTS]
    assert len({len(s) for s in seqs}) > 1  # the batch is really padded
    want_last, want_mean = _one_by_one(model, seqs, "mean")
    for tokens in (batch, batch.ids, jax.numpy.asarray(batch.ids)):  # the batch object, or bare -1-padded ids
        got, _ = forward(model, tokens, logits="last")
        np.testing.assert_allclose(np.asarray(got), want_last, atol=2e-4, rtol=2e-4)
        _, cache = forward(model, tokens, hooks=capture("resid_post", reduce="mean"), logits=False)
        for i, w in enumerate(want_mean):
            np.testing.assert_allclose(np.asarray(cache["resid_post"])[:, i], w, atol=2e-4, rtol=2e-4)
    # under jit, lengths come from the ids themselves
    got = jax.jit(lambda t: forward(model, t, logits="last")[0])(batch.ids)
    np.testing.assert_allclose(np.asarray(got), want_last, atol=2e-4, rtol=2e-4)
    # the old way (a real pad id, no lengths) is what this guards against: it reads pad positions
    old = np.where(batch.ids < 0, tok.pad_id, batch.ids)
    wrong, _ = forward(model, old, logits="last")
    assert np.abs(np.asarray(wrong) - want_last).max() > 1e-2


def test_tuple_unpacking_and_pad_sequences_default():
    batch = pad_sequences([[3, 4, 5], [7]])
    ids, lengths = batch
    np.testing.assert_array_equal(ids, [[3, 4, 5], [7, -1, -1]])
    np.testing.assert_array_equal(lengths, [3, 1])


def test_map_batches_and_harvest_take_a_batch(tiny):
    model, tok = tiny
    batch = tok.encode_batch(TEXTS)
    seqs = [tok.encode(t) for t in TEXTS]
    fn = jax.jit(lambda m, t, n: forward(m, t, lengths=n, logits="last")[0])
    want, _ = _one_by_one(model, seqs, "last")
    for tokens in (batch, batch.ids):
        np.testing.assert_allclose(map_batches(fn, model, tokens, batch_size=2), want, atol=2e-4, rtol=2e-4)
    a = harvest(model, batch, point="resid_post", positions="all", progress=False)
    b = harvest(model, seqs, point="resid_post", positions="all", progress=False)
    np.testing.assert_allclose(a, b, atol=1e-5)
    assert a.shape == (model.cfg.n_layers, sum(map(len, seqs)), model.cfg.d_model)


def test_bad_padding_is_one_clear_error(tiny):
    model, _ = tiny
    with pytest.raises(TokenOutOfRangeError, match="right only"):
        forward(model, np.array([[3, -1, 4]], np.int32))
    with pytest.raises(TokenOutOfRangeError, match="outside the vocabulary"):
        forward(model, np.array([[3, -2]], np.int32))
    with pytest.raises(TokenOutOfRangeError, match="no real token"):
        forward(model, np.array([[3, 4], [-1, -1]], np.int32))


def test_capturing_result_leaves_logits_bit_for_bit(tiny):
    import jax.numpy as jnp

    from jsae.models import add

    model, tok = tiny
    batch = tok.encode_batch(TEXTS)
    base = np.asarray(forward(model, batch)[0])
    np.testing.assert_array_equal(np.asarray(forward(model, batch, hooks=capture("result"))[0]), base)
    L, H, D = model.cfg.n_layers, model.cfg.n_heads, model.cfg.d_model
    summed = np.asarray(forward(model, batch, hooks=add("result", jnp.zeros((L, H, D))))[0])
    np.testing.assert_allclose(summed, base, atol=1e-4)  # the per-head sum: the same up to rounding
