"""TopK SAE (Gao et al. 2024): loss, AuxK and gradients against numpy by hand; exact sparsity."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sae_testing import (
    BATCH,
    D_IN,
    D_SAE,
    assert_grads_close,
    assert_metrics_close,
    fd_grad,
    np_metrics,
    random_batch,
    random_params,
)  # noqa: F401  (x64 is a fixture)

from jsae.sae import concat, geometric_median, registry, stack, topk
from jsae.sae.topk import TopKSAE
from jsae.train import TrainConfig

DEAD = np.array([True, False, True, False, False, True])


def make(p, k, k_aux):
    return TopKSAE(
        W_enc=jnp.asarray(p["W_enc"]),
        b_enc=jnp.asarray(p["b_enc"]),
        W_dec=jnp.asarray(p["W_dec"]),
        b_dec=jnp.asarray(p["b_dec"]),
        apply_b_dec_to_input=True,
        k=k,
        k_aux=k_aux,
    )


def np_keep_top(pre, k):
    out = np.zeros_like(pre)
    for b, row in enumerate(pre):
        idx = np.argsort(-row)[:k]
        out[b, idx] = np.maximum(row[idx], 0)
    return out


def np_topk_loss(p, x, dead, k, k_aux, aux_coef, frozen=None):
    """The TopK loss; the AuxK residual is computed from ``frozen`` params (it carries no gradient)."""

    def forward(q):
        pre = (x - q["b_dec"]) @ q["W_enc"] + q["b_enc"]
        f = np_keep_top(pre, k)
        return pre, f, f @ q["W_dec"] + q["b_dec"]

    pre, f, x_hat = forward(p)
    recon = np.mean(np.sum((x - x_hat) ** 2, axis=1))
    e = x - forward(frozen or p)[2]
    z = np_keep_top(np.where(dead, pre, 0.0), k_aux)
    aux = np.sum((e - z @ p["W_dec"]) ** 2) / np.sum((e - e.mean(axis=0)) ** 2) if dead.any() else 0.0
    return recon + aux_coef * aux, {"recon": recon, "aux": aux, **np_metrics(x, x_hat, f)}


def test_loss_matches_numpy():
    p, x = random_params(10), random_batch(10)
    loss, (metrics, f) = make(p, 2, 2).loss(jnp.asarray(x, jnp.float32), {"aux_coef": 0.25}, jnp.asarray(DEAD))
    ref, ref_metrics = np_topk_loss(p, x, DEAD, 2, 2, 0.25)
    assert ref_metrics["aux"] > 0
    np.testing.assert_allclose(float(loss), ref, rtol=1e-5)
    assert_metrics_close(metrics, {"loss": ref, **ref_metrics})
    # a run that gives no aux_coef trains with the record's default, the paper's 1/32
    hp = TrainConfig(steps=1).per_sae(1, registry.get("topk"))
    assert sorted(hp) == ["aux_coef", "lr"]  # no sparsity coefficient: k sets the sparsity
    hp1 = {k: jnp.asarray(v[0]) for k, v in hp.items()}
    loss_default, _ = make(p, 2, 2).loss(jnp.asarray(x, jnp.float32), hp1, jnp.asarray(DEAD))
    np.testing.assert_allclose(float(loss_default), np_topk_loss(p, x, DEAD, 2, 2, 1 / 32)[0], rtol=1e-5)


def test_gradient_matches_finite_differences(x64):
    p, x = random_params(11), random_batch(11)
    pre = (x - p["b_dec"]) @ p["W_enc"] + p["b_enc"]
    for rows, k in ((pre, 2), (pre[:, DEAD], 2)):  # away from ties and kinks
        s = -np.sort(-rows, axis=1)
        assert np.min(s[:, k - 1] - s[:, k]) > 1e-3 and np.min(np.abs(s[:, :k])) > 1e-3
    grads = jax.grad(lambda s: s.loss(jnp.asarray(x), {"aux_coef": 0.5}, jnp.asarray(DEAD))[0])(make(p, 2, 2))
    assert_grads_close(grads, fd_grad(lambda q: np_topk_loss(q, x, DEAD, 2, 2, 0.5, frozen=p)[0], p))


def test_auxk_is_zero_without_dead_latents_or_residual_variance():
    p, x = random_params(12), random_batch(12)
    sae = make(p, 2, 2)
    _, (metrics, _) = sae.loss(jnp.asarray(x, jnp.float32), {"aux_coef": 1.0}, jnp.zeros(D_SAE, bool))
    assert float(metrics["aux"]) == 0.0
    # one token: the residual has no variance across the batch, the normalised AuxK is undefined -> 0
    one = jnp.asarray(x[:1], jnp.float32)
    grads = jax.grad(lambda s: s.loss(one, {"aux_coef": 1.0}, jnp.asarray(DEAD))[0])(sae)
    assert float(sae.loss(one, {"aux_coef": 1.0}, jnp.asarray(DEAD))[1][0]["aux"]) == 0.0
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))


@pytest.mark.parametrize("k", [1, 3, D_SAE])
def test_exactly_k_active_per_token(k):
    p = random_params(13)
    p["b_enc"] = p["b_enc"] + 20.0  # every pre-activation positive
    f = make(p, k, 2).encode(jnp.asarray(random_batch(13, batch=7), jnp.float32))
    np.testing.assert_array_equal(np.sum(np.asarray(f) != 0, axis=1), k)


def test_k_out_of_range_raises():
    for k in (0, D_SAE + 1):
        with pytest.raises(ValueError, match="1 <= k <= d_sae"):
            topk.init(jax.random.key(0), D_IN, D_SAE, k=k)


def test_init_defaults_and_constrain():
    sae = topk.init(jax.random.key(1), D_IN, D_SAE, k=2)
    assert sae.k_aux == D_IN // 2
    np.testing.assert_allclose(np.linalg.norm(sae.W_dec, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(sae.b_dec, np.zeros(D_IN))
    data = jnp.asarray(np.random.default_rng(1).normal(size=(50, D_IN)), jnp.float32)
    np.testing.assert_allclose(
        topk.init(jax.random.key(1), D_IN, D_SAE, k=2, data=data).b_dec, geometric_median(data), rtol=1e-6
    )
    grown = jax.tree.map(lambda a: 3.0 * a, sae)
    np.testing.assert_allclose(np.linalg.norm(grown.constrain().W_dec, axis=1), 1.0, rtol=1e-5)


def test_fold_scale():
    sae = jax.tree.map(lambda a: a + 0.1, topk.init(jax.random.key(2), D_IN, D_SAE, k=2))
    x, c = jnp.asarray(random_batch(14, batch=BATCH), jnp.float32), 0.4
    folded = sae.fold_scale(c)
    np.testing.assert_allclose(folded.encode(x), sae.encode(c * x), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(folded(x), sae(c * x) / c, rtol=1e-5, atol=1e-6)


def test_stack_equals_separate_inits():
    keys = jax.random.split(jax.random.key(3), 3)
    data = jnp.asarray(np.random.default_rng(3).normal(size=(40, D_IN)), jnp.float32)
    together = stack(topk.init, keys, D_IN, D_SAE, data=data, k=2)
    apart = concat([topk.init(k, D_IN, D_SAE, data=data, k=2) for k in keys])
    for a, b in zip(jax.tree.leaves(together), jax.tree.leaves(apart)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert together.k == 2
