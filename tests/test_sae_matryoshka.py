"""Matryoshka BatchTopK SAE: nested-prefix loss against numpy by hand, validation, JumpReLU export."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sae_testing import D_IN, D_SAE, assert_metrics_close, np_metrics, random_batch, random_params

from jsae.sae import concat, matryoshka, stack, to_jumprelu
from jsae.sae.matryoshka import MatryoshkaSAE

DEAD = np.array([False, False, True, False, True, True])


def make(p, k, prefixes, threshold=-1.0):
    return MatryoshkaSAE(
        **{n: jnp.asarray(v, jnp.float32) for n, v in p.items()},
        apply_b_dec_to_input=True,
        threshold=jnp.float32(threshold),
        k=k,
        k_aux=2,
        threshold_decay=0.99,
        prefixes=prefixes,
    )


def np_matryoshka_loss(p, x, dead, k, prefixes, k_aux, aux_coef):
    pre = (x - p["b_dec"]) @ p["W_enc"] + p["b_enc"]
    flat = pre.ravel()
    keep = np.argsort(-flat)[: k * x.shape[0]]
    f = np.zeros_like(flat)
    f[keep] = np.maximum(flat[keep], 0)
    f = f.reshape(pre.shape)
    errors = {}
    for m in prefixes:
        x_hat_m = f[:, :m] @ p["W_dec"][:m] + p["b_dec"]
        errors[f"recon_{m}"] = np.mean(np.sum((x - x_hat_m) ** 2, axis=1))
    recon = np.mean(list(errors.values()))
    x_hat = f @ p["W_dec"] + p["b_dec"]
    e = x - x_hat
    z = np.zeros_like(pre)
    for b, row in enumerate(np.where(dead, pre, 0.0)):
        idx = np.argsort(-row)[:k_aux]
        z[b, idx] = np.maximum(row[idx], 0)
    aux = np.sum((e - z @ p["W_dec"]) ** 2) / np.sum((e - e.mean(axis=0)) ** 2)
    return recon + aux_coef * aux, {"recon": recon, "aux": aux, **errors, **np_metrics(x, x_hat, f)}


@pytest.mark.parametrize("prefixes", [(2, 4, 6), (1, 6), (6,)])
def test_loss_matches_numpy(prefixes):
    p, x = random_params(50), random_batch(50, batch=4)
    loss, (metrics, f) = make(p, 3, prefixes).loss(jnp.asarray(x, jnp.float32), {"aux_coef": 0.2}, jnp.asarray(DEAD))
    ref, ref_metrics = np_matryoshka_loss(p, x, DEAD, 3, prefixes, 2, 0.2)
    np.testing.assert_allclose(float(loss), ref, rtol=1e-5)
    assert_metrics_close(metrics, {"loss": ref, **ref_metrics})
    assert int(np.sum(np.asarray(f) != 0)) <= 3 * 4


def test_prefixes_are_validated():
    for bad in [(2, 4), (4, 2, 6), (0, 6), (3, 3, 6), (), (2.0, 6)]:
        with pytest.raises(ValueError, match="prefixes"):
            matryoshka.init(jax.random.key(0), D_IN, D_SAE, k=2, prefixes=bad)
    with pytest.raises(ValueError, match="1 <= k <= d_sae"):
        matryoshka.init(jax.random.key(0), D_IN, D_SAE, k=D_SAE + 1, prefixes=(3, 6))


def test_threshold_buffer_and_export_to_jumprelu():
    p, x = random_params(51), jnp.asarray(random_batch(51, batch=16), jnp.float32)
    sae = make(p, 2, (2, 6))
    _, (_, f) = sae.loss(x, {"aux_coef": 1 / 32}, jnp.zeros(D_SAE, bool))
    sae = sae.update_buffers(f)
    np.testing.assert_allclose(float(sae.threshold), np.min(np.asarray(f)[np.asarray(f) > 0]), rtol=1e-6)
    exported = to_jumprelu(sae)
    np.testing.assert_array_equal(exported.encode(x), sae.encode(x))
    np.testing.assert_array_equal(exported(x), sae(x))


def test_fold_scale():
    sae = make(random_params(52), 2, (3, 6), threshold=0.1)
    x, c = jnp.asarray(random_batch(52), jnp.float32), 0.6
    folded = sae.fold_scale(c)
    np.testing.assert_allclose(folded.encode(x), sae.encode(c * x), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(folded(x), sae(c * x) / c, rtol=1e-5, atol=1e-6)


def test_stack_equals_separate_inits():
    keys = jax.random.split(jax.random.key(9), 3)
    together = stack(matryoshka.init, keys, D_IN, D_SAE, k=2, prefixes=(2, 6))
    apart = concat([matryoshka.init(k, D_IN, D_SAE, k=2, prefixes=(2, 6)) for k in keys])
    for a, b in zip(jax.tree.leaves(together), jax.tree.leaves(apart)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert together.prefixes == (2, 6)
    assert eqx.tree_equal(jax.tree.structure(together), jax.tree.structure(apart))
