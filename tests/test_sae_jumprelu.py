"""JumpReLU SAE: loss and straight-through pseudo-gradients against the formulas, computed in numpy."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sae_testing import (
    D_IN,
    D_SAE,
    assert_grads_close,
    assert_metrics_close,
    np_metrics,
    random_batch,
    random_params,
)  # noqa: F401  (x64 is a fixture)

from jsae.sae import concat, jumprelu, stack
from jsae.sae.jumprelu import JumpReLUSAE, from_weights


def params_with_threshold(seed):
    p = random_params(seed)
    p["threshold"] = np.random.default_rng(seed).uniform(0.1, 0.8, D_SAE)
    return p


def make(p, bandwidth, l0_grad_to_pre=True, dtype=None):
    a = {k: jnp.asarray(v, dtype) for k, v in p.items()}
    return JumpReLUSAE(
        **a, apply_b_dec_to_input=True, bandwidth=bandwidth, unit_norm_decoder=True, l0_grad_to_pre=l0_grad_to_pre
    )


def np_jumprelu_loss(p, x, coef):
    pre = (x - p["b_dec"]) @ p["W_enc"] + p["b_enc"]
    f = np.where(pre > p["threshold"], pre, 0.0)
    x_hat = f @ p["W_dec"] + p["b_dec"]
    recon = np.mean(np.sum((x - x_hat) ** 2, axis=1))
    l0 = np.mean(np.sum(pre > p["threshold"], axis=1))
    return recon + coef * l0, {"recon": recon, "l0_penalty": l0, **np_metrics(x, x_hat, f)}


def np_pseudo_gradients(p, x, coef, eps, l0_grad_to_pre):
    """The published straight-through estimator (module docstring), by hand."""
    B = x.shape[0]
    xc = x - p["b_dec"]
    pre = xc @ p["W_enc"] + p["b_enc"]
    theta = p["threshold"]
    H = (pre > theta).astype(float)
    K = (np.abs((pre - theta) / eps) < 0.5).astype(float)
    f = pre * H
    r = f @ p["W_dec"] + p["b_dec"] - x
    d_f = (2 / B) * r @ p["W_dec"].T
    d_theta = np.sum(d_f * -(theta / eps) * K, axis=0) + coef / B * np.sum(-(1 / eps) * K, axis=0)
    d_pre = d_f * H + (coef / B * K / eps if l0_grad_to_pre else 0.0)
    return {
        "threshold": d_theta,
        "W_enc": xc.T @ d_pre,
        "b_enc": d_pre.sum(axis=0),
        "W_dec": f.T @ ((2 / B) * r),
        "b_dec": (2 / B) * r.sum(axis=0) - d_pre.sum(axis=0) @ p["W_enc"].T,
    }, K


def test_loss_matches_numpy():
    p, x = params_with_threshold(30), random_batch(30, batch=5)
    sae = make(p, 0.001, dtype=jnp.float32)
    loss, (metrics, f) = sae.loss(jnp.asarray(x, jnp.float32), {"sparsity_coef": 0.2}, jnp.zeros(D_SAE, bool))
    ref, ref_metrics = np_jumprelu_loss(p, x, 0.2)
    assert 0 < ref_metrics["l0"] < D_SAE
    np.testing.assert_allclose(float(loss), ref, rtol=1e-5)
    assert_metrics_close(metrics, {"loss": ref, **ref_metrics})


@pytest.mark.parametrize("l0_grad_to_pre", [True, False])
def test_pseudo_gradients_match_the_formulas(x64, l0_grad_to_pre):
    p, x = params_with_threshold(31), random_batch(31, batch=16)
    eps, coef = 0.5, 0.7  # a wide kernel so that many (token, latent) pairs fall inside it
    sae = make(p, eps, l0_grad_to_pre)
    grads = jax.grad(lambda s: s.loss(jnp.asarray(x), {"sparsity_coef": coef}, jnp.zeros(D_SAE, bool))[0])(sae)
    expected, K = np_pseudo_gradients(p, x, coef, eps, l0_grad_to_pre)
    assert K.sum() >= 5 and K.sum(axis=0).min() == 0  # pairs inside the kernel, and latents with none
    assert_grads_close(grads, expected, rtol=1e-9, atol=1e-12)


def test_l0_gradient_reaches_encoder_only_when_asked(x64):
    """With W_dec = 0 the latents do not affect the reconstruction: only the L0 term has gradient."""
    p, x = params_with_threshold(32), random_batch(32, batch=8)
    p["W_dec"] = np.zeros_like(p["W_dec"])
    for to_pre in (True, False):
        g = jax.grad(lambda s: s.loss(jnp.asarray(x), {"sparsity_coef": 1.0}, jnp.zeros(D_SAE, bool))[0])(
            make(p, 0.4, to_pre)
        )
        assert np.any(np.asarray(g.threshold) != 0)
        assert np.any(np.asarray(g.W_enc) != 0) == to_pre


def test_encode_is_strict_and_constrain_projects():
    p = params_with_threshold(33)
    p["threshold"] = np.array([0.5, -0.2, 0.0, 1.0, 0.3, 0.7])
    sae = make(p, 0.001, dtype=jnp.float32)
    pre = jnp.asarray([[0.5, -0.1, 0.0, 1.5, 0.2, 0.7]], jnp.float32)
    np.testing.assert_array_equal(sae.activation(pre), np.float32([[0.0, -0.1, 0.0, 1.5, 0.0, 0.0]]))
    c = eqx.tree_at(lambda s: s.W_dec, sae, sae.W_dec * 4.0).constrain()
    np.testing.assert_array_equal(c.threshold, np.maximum(np.asarray(p["threshold"], np.float32), 0))
    np.testing.assert_allclose(np.linalg.norm(c.W_dec, axis=1), 1.0, rtol=1e-5)


def test_init_and_from_weights():
    sae = jumprelu.init(jax.random.key(0), D_IN, D_SAE, threshold=0.01, bandwidth=0.05)
    np.testing.assert_array_equal(sae.threshold, np.full(D_SAE, np.float32(0.01)))
    assert sae.bandwidth == 0.05 and sae.l0_grad_to_pre
    np.testing.assert_allclose(np.linalg.norm(sae.W_dec, axis=1), 1.0, rtol=1e-5)
    with pytest.raises(ValueError, match="bandwidth"):
        jumprelu.init(jax.random.key(0), D_IN, D_SAE, bandwidth=0.0)
    p, x = params_with_threshold(34), random_batch(34)
    loaded = from_weights(p["W_enc"], p["b_enc"], p["W_dec"], p["b_dec"], p["threshold"])
    pre = x @ p["W_enc"] + p["b_enc"]  # Gemma Scope convention: no b_dec subtracted at the input
    np.testing.assert_allclose(
        loaded.encode(jnp.asarray(x, jnp.float32)), np.where(pre > p["threshold"], pre, 0), rtol=1e-5, atol=1e-6
    )
    with pytest.raises(ValueError, match="threshold has shape"):
        from_weights(p["W_enc"], p["b_enc"], p["W_dec"], p["b_dec"], p["threshold"][:3])


def test_fold_scale():
    p, x, c = params_with_threshold(35), jnp.asarray(random_batch(35), jnp.float32), 1.7
    sae = make(p, 0.001, dtype=jnp.float32)
    folded = sae.fold_scale(c)
    np.testing.assert_allclose(folded.encode(x), sae.encode(c * x), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(folded(x), sae(c * x) / c, rtol=1e-5, atol=1e-6)


def test_stack_equals_separate_inits():
    keys = jax.random.split(jax.random.key(7), 3)
    together = stack(jumprelu.init, keys, D_IN, D_SAE, threshold=0.02)
    apart = concat([jumprelu.init(k, D_IN, D_SAE, threshold=0.02) for k in keys])
    for a, b in zip(jax.tree.leaves(together), jax.tree.leaves(apart)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
