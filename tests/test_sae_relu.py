"""ReLU SAE: loss and gradients against numpy by hand, fold_scale, stack, constrain."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sae_testing import (
    D_IN,
    D_SAE,
    assert_grads_close,
    assert_metrics_close,
    fd_grad,
    np_metrics,
    random_batch,
    random_params,
)  # noqa: F401  (x64 is a fixture)

from jsae.sae import concat, relu, stack
from jsae.sae.relu import ReLUSAE


def make(p, unit_norm_decoder=False):
    return ReLUSAE(
        W_enc=jnp.asarray(p["W_enc"]),
        b_enc=jnp.asarray(p["b_enc"]),
        W_dec=jnp.asarray(p["W_dec"]),
        b_dec=jnp.asarray(p["b_dec"]),
        apply_b_dec_to_input=True,
        unit_norm_decoder=unit_norm_decoder,
    )


def np_relu_loss(p, x, coef):
    f = np.maximum((x - p["b_dec"]) @ p["W_enc"] + p["b_enc"], 0.0)
    x_hat = f @ p["W_dec"] + p["b_dec"]
    recon = np.mean(np.sum((x - x_hat) ** 2, axis=1))
    l1 = np.mean(np.sum(f * np.linalg.norm(p["W_dec"], axis=1), axis=1))
    return recon + coef * l1, {"recon": recon, "l1": l1, **np_metrics(x, x_hat, f)}


def test_loss_matches_numpy():
    p, x = random_params(0), random_batch(0)
    loss, (metrics, f) = make(p).loss(jnp.asarray(x, jnp.float32), {"sparsity_coef": 0.7}, jnp.zeros(D_SAE, bool))
    ref, ref_metrics = np_relu_loss(p, x, 0.7)
    assert 0 < ref_metrics["l0"] < D_SAE  # some latents on, some off: the ReLU matters
    np.testing.assert_allclose(float(loss), ref, rtol=1e-5)
    assert_metrics_close(metrics, {"loss": ref, **ref_metrics})
    assert f.shape == (x.shape[0], D_SAE)


def test_gradient_matches_finite_differences(x64):
    p, x = random_params(1), random_batch(1)
    pre = (x - p["b_dec"]) @ p["W_enc"] + p["b_enc"]
    assert np.min(np.abs(pre)) > 1e-3  # away from the ReLU kink
    grads = jax.grad(lambda s: s.loss(jnp.asarray(x), {"sparsity_coef": 0.3}, jnp.zeros(D_SAE, bool))[0])(make(p))
    assert_grads_close(grads, fd_grad(lambda q: np_relu_loss(q, x, 0.3)[0], p))


@pytest.mark.parametrize("unit_norm_decoder", [False, True])
def test_fold_scale(unit_norm_decoder):
    sae = relu.init(jax.random.key(3), D_IN, D_SAE, unit_norm_decoder=unit_norm_decoder)
    sae = jax.tree.map(lambda a: a + 0.1, sae)  # nonzero biases
    x, c = jnp.asarray(random_batch(3)), 2.5
    folded = sae.fold_scale(c)
    np.testing.assert_allclose(folded.encode(x), sae.encode(c * x), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(folded(x), sae(c * x) / c, rtol=1e-5, atol=1e-6)


def test_stack_equals_separate_inits():
    keys = jax.random.split(jax.random.key(4), 3)
    data = jnp.asarray(np.random.default_rng(4).normal(size=(3, 20, D_IN)))
    together = stack(relu.init, keys, D_IN, D_SAE, data=data, b_dec_init="mean")
    apart = concat([relu.init(k, D_IN, D_SAE, data=d, b_dec_init="mean") for k, d in zip(keys, data)])
    for a, b in zip(jax.tree.leaves(together), jax.tree.leaves(apart)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(together.b_dec, np.asarray(data).mean(axis=1), rtol=1e-5, atol=1e-6)


def test_init_and_constrain_decoder_norms():
    sae = relu.init(jax.random.key(5), D_IN, D_SAE, decoder_norm=0.1)
    np.testing.assert_allclose(np.linalg.norm(sae.W_dec, axis=1), 0.1, rtol=1e-5)
    np.testing.assert_allclose(sae.W_enc, np.asarray(sae.W_dec).T)
    assert sae.constrain() is sae
    unit = relu.init(jax.random.key(5), D_IN, D_SAE, unit_norm_decoder=True)
    scaled = unit.__class__(**{**vars(unit), "W_dec": unit.W_dec * 3.0})
    np.testing.assert_allclose(np.linalg.norm(scaled.constrain().W_dec, axis=1), 1.0, rtol=1e-5)
