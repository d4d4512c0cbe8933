"""BatchTopK SAE (Bussmann et al. 2024): batch-level sparsity, the threshold buffer, JumpReLU export."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from sae_testing import D_IN, D_SAE, assert_metrics_close, np_metrics, random_batch, random_params

from jsae.sae import batchtopk, concat, stack, to_jumprelu
from jsae.sae.batchtopk import BatchTopKSAE
from jsae.sae.jumprelu import JumpReLUSAE

DEAD = np.array([False, True, False, True, False, True])


def make(p, k, k_aux=2, threshold=-1.0, decay=0.99):
    return BatchTopKSAE(
        W_enc=jnp.asarray(p["W_enc"], jnp.float32),
        b_enc=jnp.asarray(p["b_enc"], jnp.float32),
        W_dec=jnp.asarray(p["W_dec"], jnp.float32),
        b_dec=jnp.asarray(p["b_dec"], jnp.float32),
        apply_b_dec_to_input=True,
        threshold=jnp.asarray(threshold, jnp.float32),
        k=k,
        k_aux=k_aux,
        threshold_decay=decay,
    )


def np_batch_top(pre, n_keep):
    flat = pre.ravel()
    out = np.zeros_like(flat)
    idx = np.argsort(-flat)[:n_keep]
    out[idx] = np.maximum(flat[idx], 0)
    return out.reshape(pre.shape)


def np_row_top(pre, k):
    out = np.zeros_like(pre)
    for b, row in enumerate(pre):
        idx = np.argsort(-row)[:k]
        out[b, idx] = np.maximum(row[idx], 0)
    return out


def np_batchtopk_loss(p, x, dead, k, k_aux, aux_coef):
    pre = (x - p["b_dec"]) @ p["W_enc"] + p["b_enc"]
    f = np_batch_top(pre, k * x.shape[0])
    x_hat = f @ p["W_dec"] + p["b_dec"]
    recon = np.mean(np.sum((x - x_hat) ** 2, axis=1))
    e = x - x_hat
    z = np_row_top(np.where(dead, pre, 0.0), k_aux)
    aux = np.sum((e - z @ p["W_dec"]) ** 2) / np.sum((e - e.mean(axis=0)) ** 2)
    return recon + aux_coef * aux, {"recon": recon, "aux": aux, **np_metrics(x, x_hat, f)}, f


def test_loss_matches_numpy():
    p, x = random_params(20), random_batch(20)
    loss, (metrics, f) = make(p, 2).loss(jnp.asarray(x, jnp.float32), {"aux_coef": 0.3}, jnp.asarray(DEAD))
    ref, ref_metrics, ref_f = np_batchtopk_loss(p, x, DEAD, 2, 2, 0.3)
    assert ref_metrics["aux"] > 0
    np.testing.assert_allclose(float(loss), ref, rtol=1e-5)
    assert_metrics_close(metrics, {"loss": ref, **ref_metrics})
    np.testing.assert_allclose(f, ref_f, rtol=1e-5, atol=1e-6)
    # batch-level, not per token: token counts differ while the total is k * B
    counts = np.sum(np.asarray(f) != 0, axis=1)
    assert counts.sum() == 2 * x.shape[0] and len(set(counts)) > 1


@pytest.mark.parametrize("k,batch", [(1, 5), (2, 3), (4, 8)])
def test_exactly_k_times_batch_active(k, batch):
    p = random_params(21)
    p["b_enc"] = p["b_enc"] + 20.0  # every pre-activation positive
    x = jnp.asarray(random_batch(21, batch=batch), jnp.float32)
    _, (_, f) = make(p, k).loss(x, {"aux_coef": 1 / 32}, jnp.zeros(D_SAE, bool))
    assert int(np.sum(np.asarray(f) != 0)) == k * batch


def test_threshold_is_an_ema_of_the_smallest_positive_activation():
    p = random_params(22)
    sae = make(p, 2, decay=0.9)
    f1 = jnp.asarray([[0.0, 0.5, 2.0], [0.3, 0.0, 0.0]], jnp.float32)
    f2 = jnp.asarray([[0.0, 0.1, 0.0], [0.0, 1.0, 4.0]], jnp.float32)
    sae = sae.update_buffers(f1)
    np.testing.assert_allclose(float(sae.threshold), 0.3, rtol=1e-6)  # first update initialises
    sae = sae.update_buffers(f2)
    np.testing.assert_allclose(float(sae.threshold), 0.9 * 0.3 + 0.1 * 0.1, rtol=1e-6)
    unchanged = sae.update_buffers(jnp.zeros((2, 3)))  # nothing fired: keep the old value
    assert float(unchanged.threshold) == float(sae.threshold)


def test_threshold_gets_no_gradient_and_adam_leaves_it_alone():
    p, x = random_params(23), jnp.asarray(random_batch(23), jnp.float32)
    sae = make(p, 2, threshold=0.2)

    def loss(s):
        return s.loss(x, {"aux_coef": 1 / 32}, jnp.asarray(DEAD))[0] + jnp.sum(s.encode(x))

    opt = optax.adam(1e-2)

    @eqx.filter_jit
    def adam_step(sae, state):
        grads = eqx.filter_grad(loss)(sae)
        updates, state = opt.update(grads, state)
        return eqx.apply_updates(sae, updates), state, grads

    state = opt.init(eqx.filter(sae, eqx.is_inexact_array))
    for _ in range(3):
        sae, state, grads = adam_step(sae, state)
        assert float(grads.threshold) == 0.0
    assert float(sae.threshold) == np.float32(0.2)
    assert not np.allclose(sae.W_enc, p["W_enc"])  # the rest did train


def test_inference_encode_is_a_global_jumprelu():
    p, x = random_params(24), random_batch(24, batch=5)
    pre = (x - p["b_dec"]) @ p["W_enc"] + p["b_enc"]
    for theta in (0.4, 0.0):
        f = make(p, 2, threshold=theta).encode(jnp.asarray(x, jnp.float32))
        np.testing.assert_allclose(f, np.where(pre > theta, pre, 0.0), rtol=1e-5, atol=1e-6)
    # before calibration (threshold -1) it is a ReLU
    np.testing.assert_allclose(make(p, 2).encode(jnp.asarray(x, jnp.float32)), np.maximum(pre, 0), rtol=1e-5, atol=1e-6)


def test_export_to_jumprelu_gives_identical_encodings():
    keys = jax.random.split(jax.random.key(5), 3)
    sae = stack(batchtopk.init, keys, D_IN, D_SAE, k=2)
    sae = eqx.tree_at(
        lambda s: (s.b_enc, s.threshold), sae, (sae.b_enc + 0.05, jnp.asarray([0.1, 0.35, -1.0]))
    )  # the last one not calibrated
    x = jnp.asarray(np.random.default_rng(5).normal(size=(3, 64, D_IN)), jnp.float32)
    exported = to_jumprelu(sae)
    assert isinstance(exported, JumpReLUSAE) and exported.threshold.shape == (3, D_SAE)
    ref = jax.vmap(lambda s, xi: s.encode(xi))(sae, x)
    out = jax.vmap(lambda s, xi: s.encode(xi))(exported, x)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(ref))
    assert 0 < np.mean(np.asarray(ref) != 0) < 1
    np.testing.assert_array_equal(jax.vmap(lambda s, xi: s(xi))(exported, x), jax.vmap(lambda s, xi: s(xi))(sae, x))


def test_k_out_of_range_raises():
    for k in (0, D_SAE + 1):
        with pytest.raises(ValueError, match="1 <= k <= d_sae"):
            batchtopk.init(jax.random.key(0), D_IN, D_SAE, k=k)


def test_fold_scale():
    sae = make(random_params(25), 2, threshold=0.2)
    x, c = jnp.asarray(random_batch(25), jnp.float32), 3.0
    folded = sae.fold_scale(c)
    np.testing.assert_allclose(folded.encode(x), sae.encode(c * x), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(folded(x), sae(c * x) / c, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        folded.loss(x, {"aux_coef": 1 / 32}, jnp.zeros(D_SAE, bool))[1][1],
        sae.loss(c * x, {"aux_coef": 1 / 32}, jnp.zeros(D_SAE, bool))[1][1],
        rtol=1e-5,
        atol=1e-6,
    )


def test_stack_equals_separate_inits():
    keys = jax.random.split(jax.random.key(6), 3)
    data = jnp.asarray(np.random.default_rng(6).normal(size=(3, 30, D_IN)), jnp.float32)
    together = stack(batchtopk.init, keys, D_IN, D_SAE, data=data, k=2)
    apart = concat([batchtopk.init(k, D_IN, D_SAE, data=d, k=2) for k, d in zip(keys, data)])
    for a, b in zip(jax.tree.leaves(together), jax.tree.leaves(apart)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(np.linalg.norm(together.W_dec, axis=-1), 1.0, rtol=1e-5)
