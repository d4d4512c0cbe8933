"""Per-head SAE-code variants: each lever against a brute-force loop or the single run it stands for."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jsae.analysis.circuits as C


def _paired(seed=0, H=6, n_pairs=8, d=24, planted=(1, 4)):
    """Pairs that agree on every head except the planted ones (positive: another direction)."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(H, n_pairs, d))
    clean = base.copy()
    for h in planted:
        clean[h] = 3 * rng.normal(size=(n_pairs, d))
    acts = np.concatenate([clean, base], axis=1) + 0.05 * rng.normal(size=(H, 2 * n_pairs, d))
    idx = np.arange(n_pairs)
    return C.PairedRows(acts.astype(np.float32), idx, n_pairs + idx)


def test_identical_seeds_give_the_single_seed_score():
    rows = _paired()
    one = C.CodeVariant(epochs=30)
    many = C.CodeVariant(epochs=30, seeds=3)
    s, _ = C.family_scores(jax.random.key(0), rows, [one, many])
    # seed 0 of the 3-seed stack is the 1-seed run (fold_in keys), so the 1-seed variant is unchanged by S
    alone, _ = C.family_scores(jax.random.key(0), rows, [one])
    np.testing.assert_allclose(alone[0], s[0], atol=1e-6)
    assert not np.allclose(s[0], s[1])  # three different seeds average to another score
    # three identical seeds in one stack: three copies of one SAE per head, whose mean is the single score
    m, d = rows.acts.shape[1:]
    standard = jnp.asarray(C.standardise_heads(rows.acts, np.arange(m)))
    k = jax.random.key(5)
    sae, x, _, _ = C.fit_stack(
        jnp.stack([k, k, k]), standard, jnp.arange(m), (0.01 * d,), 5e-3, d_sae=16, epochs=30, basis=True
    )
    lat = np.asarray(jax.vmap(lambda e, v: e.encode(v))(sae, jnp.tile(x, (3, 1, 1)))).reshape(
        3, *rows.acts.shape[:2], 16
    )
    per_seed = C.code_change_scores(lat, rows.clean, rows.corrupted, one)
    np.testing.assert_array_equal(per_seed[0], per_seed[1])
    np.testing.assert_array_equal(C.combine_seeds(per_seed, "mean"), per_seed[0])
    votes = C.combine_seeds(np.array([[3.0, 1, 2], [1, 3, 2]]), "vote", vote_fraction=0.34)
    np.testing.assert_array_equal(votes, [0.5, 0.5, 1.0])  # top 2 of each seed


def test_sparsity_stack_equals_separate_runs_and_fit_per_head():
    rows = _paired()
    vs = [C.CodeVariant(epochs=30, l1=c) for c in (0.005, 0.02, 0.08)]
    stacked, info = C.family_scores(jax.random.key(1), rows, vs)
    assert info["l1"] == [0.005, 0.02, 0.08] and not info["basis"]  # 16 rows of width 24
    for v, got in zip(vs, stacked):
        single, _ = C.family_scores(jax.random.key(1), rows, [v])
        np.testing.assert_allclose(got, single[0], atol=1e-6)
    # the 1-seed argmax score is the paired code change of fit_per_head's codes (its own SAE code path)
    standard = C.standardise_heads(rows.acts, np.arange(rows.acts.shape[1]))
    _, _, codes, _ = C.fit_per_head(
        jax.random.fold_in(jax.random.key(1), 0),
        jnp.asarray(standard),
        jnp.arange(rows.acts.shape[1]),
        0.02 * rows.acts.shape[2],
        5e-3,
        d_sae=16,
        epochs=30,
        basis=False,
    )
    codes = np.asarray(codes)
    expected = (codes[rows.clean] != codes[rows.corrupted]).mean(axis=0)
    np.testing.assert_allclose(stacked[1], expected, atol=1e-6)
    with pytest.raises(ValueError, match="share a stack"):
        C.family_scores(jax.random.key(1), rows, [vs[0], C.CodeVariant(d_sae=8)])


def test_code_types_and_decoder_weighting_match_loops():
    rng = np.random.default_rng(2)
    S, H, m, k = 2, 3, 6, 5
    f = np.maximum(rng.normal(size=(S, H, m, k)), 0).astype(np.float32)
    f[0, 0, 0] = 0.0  # a row with no active latent
    clean, corrupted = np.array([0, 1, 2]), np.array([3, 4, 5])
    norms = rng.uniform(0.5, 2.0, size=(S, H, k)).astype(np.float32)

    def members(row, v):
        if v.code == "argmax":
            return {int(np.argmax(row))}
        if v.code == "topk":
            return {int(j) for j in np.argsort(-row, kind="stable")[: v.top_k]}
        return {int(j) for j in np.flatnonzero(row > v.threshold)}

    for v in (
        C.CodeVariant(code="argmax"),
        C.CodeVariant(code="topk", top_k=2),
        C.CodeVariant(code="active", threshold=0.3),
        C.CodeVariant(code="active", weight="decoder"),
        C.CodeVariant(code="argmax", weight="decoder"),
    ):
        got = C.code_change_scores(f, clean, corrupted, v, norms)
        for s in range(S):
            for h in range(H):
                per = []
                for i, j in zip(clean, corrupted):
                    a, b = members(f[s, h, i], v), members(f[s, h, j], v)
                    if v.weight == "decoder":
                        per.append(sum(norms[s, h, t] for t in a ^ b))
                    else:
                        per.append(len(a ^ b) / max(len(a | b), 1))
                assert got[s, h] == pytest.approx(np.mean(per), rel=1e-5, abs=1e-6), (v.name, s, h)


def test_decoder_norms_through_basis_scale_and_w_o():
    rng = np.random.default_rng(3)
    H, k, r, d, D = 2, 3, 4, 6, 5
    w_dec = rng.normal(size=(H, k, r))
    basis = rng.normal(size=(H, d, r))
    scale = np.array([2.0, 0.0])
    w_o = rng.normal(size=(H, d, D))
    got = C.decoder_norms(w_dec, basis, scale, w_o)
    for h in range(H):
        for j in range(k):
            v = basis[h] @ w_dec[h, j]
            want = 0.0 if scale[h] == 0 else np.linalg.norm((v / scale[h]) @ w_o[h])
            assert got[h, j] == pytest.approx(want, rel=1e-4)


def test_positions_and_key_positions():
    # IOI-like: IO (1) and S1 (3) differ; S2 (5) repeats S1's clean token; END (7)
    clean = [9, 10, 11, 12, 13, 12, 14, 15]
    corrupted = [9, 20, 11, 21, 13, 12, 14, 15]
    np.testing.assert_array_equal(C.key_positions(clean, corrupted), [1, 3, 5, 7])
    H, d = 2, 3
    lengths = [4, 3, 4, 3]
    acts = np.arange(H * 14 * d, dtype=np.float32).reshape(H, 14, d)
    toks = [[1, 2, 3, 4], [5, 6, 7], [1, 9, 3, 4], [5, 6, 8]]
    final = C.paired_rows(acts, lengths, 2, "final")
    np.testing.assert_array_equal(final.acts, acts[:, [3, 6, 10, 13]])
    mean = C.paired_rows(acts, lengths, 2, "mean")
    np.testing.assert_allclose(mean.acts[:, 1], acts[:, 4:7].mean(axis=1))
    key = C.paired_rows(acts, lengths, 2, "key", tokens=toks)
    np.testing.assert_array_equal(key.acts, acts[:, [1, 3, 6, 8, 10, 13]])
    np.testing.assert_array_equal(key.corrupted, [3, 4, 5])
    assert C.paired_rows(acts, lengths, 2, "all").acts.shape[1] == 14
    with pytest.raises(ValueError, match="same number of tokens"):
        C.paired_rows(acts, [4, 3, 3, 4], 2, "final")
    with pytest.raises(ValueError, match="positions must"):
        C.CodeVariant(positions="middle")
