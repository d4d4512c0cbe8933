"""Gated SAE (Rajamanoharan et al. 2024a): loss and gradients against numpy by hand, fold_scale."""

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
    fd_grad,
    np_metrics,
    random_batch,
    random_params,
)  # noqa: F401  (x64 is a fixture)

from jsae.sae import concat, gated, registry, stack
from jsae.sae.gated import GatedSAE
from jsae.train import TrainConfig


def gated_params(seed):
    p = random_params(seed)
    rng = np.random.default_rng(seed + 1)
    p["r_mag"] = 0.5 * rng.normal(size=D_SAE)
    p["b_mag"] = 0.3 * rng.normal(size=D_SAE)
    return p


def make(p, dtype=None):
    return GatedSAE(
        **{k: jnp.asarray(v, dtype) for k, v in p.items()}, apply_b_dec_to_input=True, unit_norm_decoder=False
    )


def np_gated_loss(p, x, sparsity_coef, aux_coef, frozen=None):
    """The Gated loss; the aux term's decoder comes from ``frozen`` params (stop-gradient)."""
    xc = x - p["b_dec"]
    pi_gate = xc @ p["W_enc"] + p["b_enc"]
    pi_mag = xc @ (p["W_enc"] * np.exp(p["r_mag"])) + p["b_mag"]
    f = (pi_gate > 0) * np.maximum(pi_mag, 0)
    x_hat = f @ p["W_dec"] + p["b_dec"]
    recon = np.mean(np.sum((x - x_hat) ** 2, axis=1))
    gate = np.maximum(pi_gate, 0)
    sparsity = np.mean(gate @ np.linalg.norm(p["W_dec"], axis=1))
    q = frozen or p
    aux = np.mean(np.sum((x - (gate @ q["W_dec"] + q["b_dec"])) ** 2, axis=1))
    total = recon + sparsity_coef * sparsity + aux_coef * aux
    return total, {"recon": recon, "sparsity": sparsity, "aux": aux, **np_metrics(x, x_hat, f)}


def test_loss_matches_numpy():
    p, x = gated_params(40), random_batch(40, batch=5)
    hp = {"sparsity_coef": 0.3, "aux_coef": 0.8}
    loss, (metrics, f) = make(p, jnp.float32).loss(jnp.asarray(x, jnp.float32), hp, jnp.zeros(D_SAE, bool))
    ref, ref_metrics = np_gated_loss(p, x, 0.3, 0.8)
    assert 0 < ref_metrics["l0"] < D_SAE
    np.testing.assert_allclose(float(loss), ref, rtol=1e-5)
    assert_metrics_close(metrics, {"loss": ref, **ref_metrics})
    # a run that gives no aux_coef trains with the record's default, the paper's 1 (not AuxK's 1/32)
    hp = TrainConfig(steps=1, sparsity_coef=0.3).per_sae(1, registry.get("gated"))
    assert float(hp["aux_coef"][0]) == 1.0
    hp1 = {k: jnp.asarray(v[0]) for k, v in hp.items()}
    loss1, _ = make(p, jnp.float32).loss(jnp.asarray(x, jnp.float32), hp1, jnp.zeros(D_SAE, bool))
    np.testing.assert_allclose(float(loss1), np_gated_loss(p, x, 0.3, 1.0)[0], rtol=1e-5)
    with pytest.raises(KeyError, match="aux_coef"):  # the loss itself has no silent default
        make(p, jnp.float32).loss(jnp.asarray(x, jnp.float32), {"sparsity_coef": 0.3}, jnp.zeros(D_SAE, bool))


def test_gradient_matches_finite_differences(x64):
    p, x = gated_params(41), random_batch(41, batch=5)
    xc = x - p["b_dec"]
    assert np.min(np.abs(xc @ p["W_enc"] + p["b_enc"])) > 1e-3  # away from the gate's and ReLUs' kinks
    assert np.min(np.abs(xc @ (p["W_enc"] * np.exp(p["r_mag"])) + p["b_mag"])) > 1e-3
    hp = {"sparsity_coef": 0.4, "aux_coef": 0.7}
    grads = jax.grad(lambda s: s.loss(jnp.asarray(x), hp, jnp.zeros(D_SAE, bool))[0])(make(p))
    expected = fd_grad(lambda q: np_gated_loss(q, x, 0.4, 0.7, frozen=p)[0], p)
    assert np.any(expected["r_mag"] != 0) and np.any(expected["b_mag"] != 0)
    assert_grads_close(grads, expected)


def test_fold_scale_handles_the_magnitude_path():
    p, x, c = gated_params(42), jnp.asarray(random_batch(42), jnp.float32), 2.2
    sae = make(p, jnp.float32)
    folded = sae.fold_scale(c)
    np.testing.assert_array_equal(folded.r_mag, sae.r_mag)
    for a, b in zip(folded.gate_and_magnitude(x), sae.gate_and_magnitude(c * x)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(folded.encode(x), sae.encode(c * x), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(folded(x), sae(c * x) / c, rtol=1e-5, atol=1e-6)


def test_init_and_constrain():
    sae = gated.init(jax.random.key(0), D_IN, D_SAE)
    np.testing.assert_array_equal(sae.r_mag, np.zeros(D_SAE))
    x = jnp.asarray(random_batch(43), jnp.float32)
    np.testing.assert_allclose(
        sae.encode(x), np.maximum(np.asarray(x) @ np.asarray(sae.W_enc), 0), rtol=1e-5, atol=1e-6
    )  # r_mag = b_mag = 0: a plain ReLU SAE at init
    unit = gated.init(jax.random.key(0), D_IN, D_SAE, unit_norm_decoder=True)
    grown = eqx.tree_at(lambda s: s.W_dec, unit, unit.W_dec * 2)
    np.testing.assert_allclose(np.linalg.norm(grown.constrain().W_dec, axis=1), 1.0, rtol=1e-5)
    assert not hasattr(sae, "activation")  # one pre-activation is not enough: encode(x) is the only rule


def test_stack_equals_separate_inits():
    keys = jax.random.split(jax.random.key(8), 3)
    together = stack(gated.init, keys, D_IN, D_SAE)
    apart = concat([gated.init(k, D_IN, D_SAE) for k in keys])
    for a, b in zip(jax.tree.leaves(together), jax.tree.leaves(apart)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
