"""Absorption metrics on hand-built SAEs whose answer is known by hand."""

import jax.numpy as jnp
import numpy as np
import pytest

from jsae.analysis.absorption import (
    LetterAbsorption,
    aggregate,
    main_latents_inactive,
    paper_absorption,
    saebench_absorption,
)
from jsae.sae import ReLUSAE

S2 = np.sqrt(0.5)
# latent 0: the "starts with S" latent (decoder e0 = the probe direction)
# latent 1: a token-specific latent that absorbed S (decoder (e0 + e1)/sqrt2, cos 0.707 with the probe)
# latent 2: an unrelated latent (decoder e2, cos 0)
W_DEC = np.array([[1, 0, 0, 0], [S2, S2, 0, 0], [0, 0, 1, 0]], np.float32)
PROBE = np.array([1.0, 0, 0, 0], np.float32)


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
    row = lambda c, f1, frac, ev, ab: LetterAbsorption(c, f1, [0], 10, frac, frac / 2, 3, ev, ab, ab / max(ev, 1))  # noqa: E731
    out = aggregate([row(0, 0.9, 0.2, 2, 1), row(1, 0.8, 0.4, 2, 0), row(2, 0.3, 1.0, 2, 2)])
    assert out["n_letters"] == 2
    assert out["absorption_fraction"] == pytest.approx(0.3)
    assert out["full_absorption"] == pytest.approx(0.15)
    assert out["paper_absorption_rate"] == pytest.approx(0.25)  # 1 absorbed of 4 evaluated (letter 2 excluded)
