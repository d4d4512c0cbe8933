"""The sparse TopK-family path (jsae.sae._sparse) equals the dense one: loss, metrics, f and gradients,
with and without dead latents (AuxK), and over a short training run."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jsae.sae import batchtopk, matryoshka, stack, topk
from jsae.train import TrainConfig, train

ARCHS = {
    "topk": (topk, dict(k=3)),
    "batchtopk": (batchtopk, dict(k=3)),
    "matryoshka": (matryoshka, dict(k=3, prefixes=(16, 64))),
}


def pair(name, seed=0):
    mod, kw = ARCHS[name]
    dense, sparse = (mod.init(jax.random.key(seed), 8, 64, sparse=s, **kw) for s in (False, True))
    b = 0.1 * jnp.arange(8.0)  # a nonzero b_dec, so its gradient through the encoder is checked too
    return eqx.tree_at(lambda s: s.b_dec, dense, b), eqx.tree_at(lambda s: s.b_dec, sparse, b)


@pytest.mark.parametrize("name", list(ARCHS))
@pytest.mark.parametrize("with_dead", [False, True])
def test_sparse_loss_and_gradients_equal_dense(name, with_dead):
    dense, sparse = pair(name)
    x = jax.random.normal(jax.random.key(1), (32, 8))
    dead = (jnp.arange(64) % 3 == 0) if with_dead else None
    hp = {"aux_coef": jnp.asarray(0.5)}
    out = [eqx.filter_value_and_grad(lambda s: s.loss(x, hp, dead), has_aux=True)(s) for s in (dense, sparse)]
    (l_d, (m_d, f_d)), g_d = out[0]
    (l_s, (m_s, f_s)), g_s = out[1]
    np.testing.assert_allclose(l_s, l_d, rtol=1e-6)
    for k in m_d:
        np.testing.assert_allclose(m_s[k], m_d[k], rtol=1e-5, atol=1e-6, err_msg=k)
    np.testing.assert_array_equal(np.asarray(f_s), np.asarray(f_d))
    if with_dead:
        assert float(m_d["aux"]) > 0
    for a, b in zip(jax.tree.leaves(g_d), jax.tree.leaves(g_s), strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)


def test_sparse_training_run_equals_dense_with_dead_latents():
    x = np.asarray(jax.random.normal(jax.random.key(2), (512, 8)), np.float32)
    runs = []
    for s in (False, True):
        sae = stack(topk.init, jax.random.split(jax.random.key(3), 2), 8, 64, k=2, sparse=s)
        runs.append(
            train(
                sae,
                x,
                TrainConfig(steps=50, batch_size=32, lr=3e-3, dead_after_tokens=96, chunk_steps=25),
                progress=False,
            )
        )
    assert runs[0].metrics["dead_fraction"].max() > 0, "the test needs dead latents (AuxK active)"
    for a, b in zip(jax.tree.leaves(runs[0].sae), jax.tree.leaves(runs[1].sae), strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)
