"""Discrete codes and head scores against brute-force set computations."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jsae.analysis import _codes as K
from jsae.sae.registry import init_stack


def _random_codes(rng, n=40, H=7, C=5):
    return rng.integers(0, C, (n, H)), rng.random(n) < 0.5


def _brute_unique_positive(codes, positive):
    out = []
    for h in range(codes.shape[1]):
        pos = {int(c) for c, p in zip(codes[:, h], positive) if p}
        neg = {int(c) for c, p in zip(codes[:, h], positive) if not p}
        out.append(len(pos - neg))
    return np.array(out)


@pytest.mark.parametrize("seed", range(5))
def test_unique_positive_counts_match_sets(seed):
    rng = np.random.default_rng(seed)
    codes, positive = _random_codes(rng, C=int(rng.integers(2, 12)))
    got = np.asarray(K.unique_positive_counts(codes, positive, 12))
    np.testing.assert_array_equal(got, _brute_unique_positive(codes, positive))
    distinct = np.array([len(set(codes[:, h].tolist())) for h in range(codes.shape[1])])
    np.testing.assert_array_equal(np.asarray(K.distinct_counts(codes, 12)), distinct)


def test_node_score_kinds():
    rng = np.random.default_rng(0)
    codes, positive = _random_codes(rng)
    raw = _brute_unique_positive(codes, positive).astype(float)
    np.testing.assert_allclose(K.node_scores(codes, positive, 5, "raw"), raw)
    np.testing.assert_allclose(K.node_scores(codes, positive, 5, "softmax"), np.exp(raw) / np.exp(raw).sum(), rtol=1e-6)
    distinct = np.array([len(set(codes[:, h].tolist())) for h in range(codes.shape[1])])
    np.testing.assert_allclose(K.node_scores(codes, positive, 5, "normalised"), raw / distinct, rtol=1e-6)
    with pytest.raises(ValueError, match="node score kind"):
        K.node_scores(codes, positive, 5, "max")  # pyright: ignore[reportArgumentType]  # the bad kind is the test


@pytest.mark.parametrize("seed", range(3))
def test_edge_scores_match_sets(seed):
    rng = np.random.default_rng(seed)
    codes, positive = _random_codes(rng, n=30, H=5, C=3)
    got = np.asarray(K.edge_scores(jnp.asarray(codes), jnp.asarray(positive)))
    fraction = np.asarray(K.edge_scores(jnp.asarray(codes), jnp.asarray(positive), normalised=True))
    for a, b in itertools.product(range(5), repeat=2):
        pos = {(int(codes[i, a]), int(codes[i, b])) for i in range(30) if positive[i]}
        neg = {(int(codes[i, a]), int(codes[i, b])) for i in range(30) if not positive[i]}
        assert got[a, b] == len(pos - neg), (a, b)
        assert fraction[a, b] == pytest.approx(len(pos - neg) / len(pos)), (a, b)
    np.testing.assert_array_equal(np.diag(got), _brute_unique_positive(codes, positive))


def test_heads_from_edges_averages_partners():
    edges = np.array([[9, 1, 2], [1, 9, 5], [2, 5, 9]])
    np.testing.assert_allclose(K.heads_from_edges(edges), [1.5, 3.0, 3.5])


def test_discretise_is_argmax_of_encoding():
    rng = np.random.default_rng(0)
    acts = rng.normal(size=(3, 6, 8)).astype(np.float32)
    shared = init_stack("relu", jax.random.key(0), 1, 8, 10)
    one = jax.tree.map(lambda x: x[0] if hasattr(x, "shape") else x, shared)
    W, b, bd = np.asarray(one.W_enc), np.asarray(one.b_enc), np.asarray(one.b_dec)
    expected = np.argmax(np.maximum((acts - bd) @ W + b, 0), axis=-1).T  # [n, H]
    np.testing.assert_array_equal(np.asarray(K.discretise(one, acts, per_head=False)), expected)
    per_head = init_stack("relu", jax.random.key(1), 3, 8, 10)
    W, b, bd = np.asarray(per_head.W_enc), np.asarray(per_head.b_enc), np.asarray(per_head.b_dec)
    expected = np.stack([np.argmax(np.maximum((acts[h] - bd[h]) @ W[h] + b[h], 0), -1) for h in range(3)], 1)
    np.testing.assert_array_equal(np.asarray(K.discretise(per_head, acts, per_head=True)), expected)


@pytest.mark.parametrize("seed", range(3))
def test_paired_code_changes_match_loop(seed):
    rng = np.random.default_rng(seed)
    codes, _ = _random_codes(rng, n=30, H=6, C=3)
    clean = rng.permutation(30)[:10]
    corrupted = rng.permutation(30)[:10]
    got = np.asarray(K.paired_code_changes(codes, clean, corrupted))
    expected = [sum(codes[c, h] != codes[q, h] for c, q in zip(clean, corrupted)) / 10 for h in range(6)]
    np.testing.assert_allclose(got, expected)


def test_paired_code_changes_errors():
    codes = np.zeros((4, 2), int)
    with pytest.raises(ValueError, match="same length"):
        K.paired_code_changes(codes, np.array([0, 1]), np.array([2]))
    with pytest.raises(ValueError, match="non-empty"):
        K.paired_code_changes(codes, np.array([], int), np.array([], int))
