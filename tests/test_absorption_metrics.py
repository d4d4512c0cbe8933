"""Absorption metrics on hand-built SAEs whose answer is known by hand, and the jnp metrics against the
float64 oracle (tests/absorption_reference.py) on random stacks."""

import jax.numpy as jnp
import numpy as np
import pytest
from absorption_reference import LetterAbsorption, aggregate
from absorption_reference import main_latents_inactive as ref_main_inactive
from absorption_reference import paper_absorption as ref_paper
from absorption_reference import saebench_absorption as ref_saebench

from jsae.analysis import _absorption as ab
from jsae.sae import ReLUSAE

S2 = np.sqrt(0.5)
# latent 0: the "starts with S" latent (decoder e0 = the probe direction)
# latent 1: a token-specific latent that absorbed S (decoder (e0 + e1)/sqrt2, cos 0.707 with the probe)
# latent 2: an unrelated latent (decoder e2, cos 0)
W_DEC = np.array([[1, 0, 0, 0], [S2, S2, 0, 0], [0, 0, 1, 0]], np.float32)
PROBE = np.array([1.0, 0, 0, 0], np.float32)


def saebench_absorption(x, f, W, p, main_ids, **kw):
    """The jnp metric with the oracle's calling convention (main latents as ids)."""
    mask = np.zeros(np.shape(W)[0], bool)
    mask[main_ids] = True
    frac, full = ab.saebench_absorption(*(jnp.asarray(a, jnp.float32) for a in (x, f, W, p)), jnp.asarray(mask), **kw)
    return np.asarray(frac), np.asarray(full)


def paper_absorption(e, W, p, **kw):
    return np.asarray(ab.paper_absorption(*(jnp.asarray(a, jnp.float32) for a in (e, W, p)), **kw))


def main_latents_inactive(f, main_ids):
    mask = np.zeros(np.shape(f)[1], bool)
    mask[main_ids] = True
    return np.asarray(ab.main_latents_inactive(jnp.asarray(f, jnp.float32), jnp.asarray(mask)))


def hand_built_sae() -> ReLUSAE:
    """A ReLU SAE that encodes decode(f) back to f exactly for f >= 0 (encoder = pseudo-inverse)."""
    return ReLUSAE(
        W_enc=jnp.asarray(np.linalg.pinv(W_DEC)),
        b_enc=jnp.zeros(3),
        W_dec=jnp.asarray(W_DEC),
        b_dec=jnp.zeros(4),
        apply_b_dec_to_input=True,
        unit_norm_decoder=False,
    )


def run_saebench(latents):
    sae = hand_built_sae()
    f = np.asarray(latents, np.float32)
    x = f @ W_DEC
    f_enc = np.asarray(sae.encode(jnp.asarray(x)))
    np.testing.assert_allclose(f_enc, f, atol=1e-5)  # the SAE really produces these latents
    return saebench_absorption(x, f_enc, W_DEC, PROBE, [0])


def test_suppressed_s_latent_with_aligned_latent_firing_is_full_absorption():
    fraction, full = run_saebench([[0.0, 2.0, 0.0]])
    assert fraction[0] == pytest.approx(1.0) and full[0]


def test_main_latent_firing_with_an_independent_latent_is_not_absorption():
    fraction, full = run_saebench([[1.0, 0.0, 3.0], [0.0, 0.0, 2.0]])
    np.testing.assert_array_equal(fraction, [0.0, 0.0])
    np.testing.assert_array_equal(full, [False, False])


def test_partial_absorption_fraction_by_hand():
    # main 0.5 along p, absorber 1.0 * 0.707 along p: P = 1.2071, P_M = 0.5, P_A = 0.7071 (share 0.586 >= 0.4)
    # a = min(P_A, P - P_M) = 0.7071 -> fraction = 0.7071 / (0.7071 + 0.5) = 0.5858; main fires -> not full
    fraction, full = run_saebench([[0.5, 1.0, 0.0]])
    assert fraction[0] == pytest.approx(S2 / (S2 + 0.5), rel=1e-5) and not full[0]


def test_small_absorber_share_below_threshold_is_not_counted():
    # absorber share 0.1 * 0.707 / (0.1 * 0.707 + 0.5) = 0.124 < 0.4 -> 0
    fraction, _ = run_saebench([[0.5, 0.1, 0.0]])
    assert fraction[0] == 0.0
    # lowering the threshold to 0.1 counts it: a / (a + P_M) with a = 0.0707
    f = np.array([[0.5, 0.1, 0.0]], np.float32)
    frac2, _ = saebench_absorption(f @ W_DEC, f, W_DEC, PROBE, [0], proportion=0.1)
    assert frac2[0] == pytest.approx(0.1 * S2 / (0.1 * S2 + 0.5), rel=1e-5)


def test_absorber_below_cosine_threshold_is_ignored():
    # rotate latent 1 so its cosine with the probe is 0.05 (< 0.1): no absorber left -> fraction 0,
    # but full absorption only needs cos >= 0.025 for the top latent -> counted
    c = 0.05
    W = W_DEC.copy()
    W[1] = [c, np.sqrt(1 - c * c), 0, 0]
    f = np.array([[0.0, 2.0, 0.0]], np.float32)
    fraction, full = saebench_absorption(f @ W, f, W, PROBE, [0])
    assert fraction[0] == 0.0 and full[0]
    _, full_strict = saebench_absorption(f @ W, f, W, PROBE, [0], full_cos=0.06)
    assert not full_strict[0]


def test_paper_metric_decisions():
    effects = np.array(
        [
            [-0.2, -3.0, 0.0],  # aligned latent 1 has by far the most negative effect -> absorption
            [-0.2, -1.0, -0.5],  # gap 0.5 < 1.0 -> not counted
            [0.0, 0.1, -4.0],  # top is the unrelated latent 2 (cos 0 < 0.025) -> not counted
            [0.5, 0.4, 0.3],  # nothing negative -> not counted
        ]
    )
    np.testing.assert_array_equal(paper_absorption(effects, W_DEC, PROBE), [True, False, False, False])
    np.testing.assert_array_equal(paper_absorption(effects, W_DEC, PROBE, min_gap=0.4), [True, True, False, False])


def test_candidates_are_tokens_with_every_main_latent_off():
    f = np.array([[0.0, 1.0, 0.0], [0.3, 0.0, 0.0], [0.0, 0.0, 0.0]])
    np.testing.assert_array_equal(main_latents_inactive(f, [0]), [True, False, True])
    np.testing.assert_array_equal(main_latents_inactive(f, [0, 1]), [False, False, True])


def test_aggregate_skips_letters_with_a_weak_probe():
    row = lambda c, f1, frac, ev, ab: LetterAbsorption(c, f1, [0], 10, frac, frac / 2, 3, ev, ab, ab / max(ev, 1))
    out = aggregate([row(0, 0.9, 0.2, 2, 1), row(1, 0.8, 0.4, 2, 0), row(2, 0.3, 1.0, 2, 2)])
    assert out["n_letters"] == 2
    assert out["absorption_fraction"] == pytest.approx(0.3)
    assert out["full_absorption"] == pytest.approx(0.15)
    assert out["paper_absorption_rate"] == pytest.approx(0.25)  # 1 absorbed of 4 evaluated (letter 2 excluded)


def random_case(seed, n=300, m=40, d=12):
    rng = np.random.default_rng(seed)
    W = rng.normal(size=(m, d)).astype(np.float32)
    f = (np.maximum(rng.normal(size=(n, m)), 0) * (rng.random((n, m)) < 0.2)).astype(np.float32)
    f[:, 7] = 0.0  # a latent that never fires
    x = (f @ W + 0.3 * rng.normal(size=(n, d))).astype(np.float32)
    return x, f, W, rng.normal(size=(26, d)).astype(np.float32), rng.integers(0, 26, n)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_saebench_rows_match_the_float64_oracle_letter_by_letter(seed):
    """Per-row directions and masks (all letters in one call) == the oracle run per letter."""
    x, f, W, dirs, letters = random_case(seed)
    mains = [[c % 40] if c % 3 else [c % 40, 7] for c in range(26)]  # some main sets with a dead latent
    mask = np.asarray(ab.main_latent_mask(mains, 40))
    frac, full = ab.saebench_absorption(
        jnp.asarray(x), jnp.asarray(f), jnp.asarray(W), jnp.asarray(dirs[letters]), jnp.asarray(mask[letters])
    )
    for c in range(26):
        rows = letters == c
        want_frac, want_full = ref_saebench(x[rows], f[rows], W, dirs[c], mains[c])
        np.testing.assert_allclose(np.asarray(frac)[rows], want_frac, atol=1e-5)
        np.testing.assert_array_equal(np.asarray(full)[rows], want_full)
        np.testing.assert_array_equal(
            np.asarray(ab.main_latents_inactive(jnp.asarray(f[rows]), jnp.asarray(mask[c]))),
            ref_main_inactive(f[rows], mains[c]),
        )
    assert 0 < float(np.mean(frac)) < 1 and 0 < float(np.mean(full)) < 1  # both branches are exercised


@pytest.mark.parametrize("seed", [0, 1])
def test_paper_decision_matches_the_oracle(seed):
    _, _, W, dirs, letters = random_case(seed)
    e = np.random.default_rng(seed + 10).normal(size=(300, 40)).astype(np.float32) * 2
    got = np.asarray(ab.paper_absorption(jnp.asarray(e), jnp.asarray(W), jnp.asarray(dirs[letters])))
    want = np.array([ref_paper(e[i : i + 1], W, dirs[letters[i]])[0] for i in range(300)])
    np.testing.assert_array_equal(got, want)
    assert 0 < want.mean() < 1


def test_stacked_run_matches_the_oracle_per_sae():
    """absorption_run over a stack of 3 SAEs == the old per-SAE pipeline (no model: SAEBench metrics),
    including a letter without true positives and a letter below the F1 threshold."""
    from types import SimpleNamespace

    import jax
    from absorption_reference import letter_absorption

    from jsae.analysis import AbsorptionConfig, ProbeData, absorption_run, k_sparse_probing
    from jsae.sae import concat, index, relu

    rng = np.random.default_rng(0)
    d, n = 16, 600
    centers = rng.normal(size=(26, d)).astype(np.float32) * 2
    lt, ls = rng.integers(0, 26, n), rng.integers(0, 26, n)
    ls[ls == 4] = 5  # letter 4 has no test words
    xt = (centers[lt] + rng.normal(size=(n, d))).astype(np.float32)
    xs = (centers[ls] + rng.normal(size=(n, d))).astype(np.float32)
    W = centers.T / np.linalg.norm(centers, axis=1)
    probe = SimpleNamespace(directions=lambda: jnp.asarray(W.T))
    pred = (xs @ W) > 1.5
    f1 = np.full(26, 0.9)
    f1[3] = 0.2
    data = ProbeData(xt, lt, xs, ls, None, probe, f1, pred)
    stack = concat([relu.init(jax.random.key(i), d, 48) for i in range(3)])
    res = absorption_run(stack, data, cfg=AbsorptionConfig(max_k=4))
    for i in range(3):
        sae = index(stack, i)
        lat = lambda a, sae=sae: np.asarray(sae.encode(jnp.asarray(a)))
        sp = k_sparse_probing(lat(xt), lt, lat(xs), ls, 26, max_k=4)
        rows = letter_absorption(sae, data, sp.main_latents)
        want = aggregate(rows)
        for k, v in want.items():
            np.testing.assert_allclose(res.summary[k][i], v, rtol=1e-5, atol=1e-6, err_msg=k)
        for got_row, want_row in zip(res.per_letter(i), rows):
            for k, v in vars(want_row).items():
                np.testing.assert_allclose(np.asarray(got_row[k], float), np.asarray(v, float), atol=1e-5, err_msg=k)
