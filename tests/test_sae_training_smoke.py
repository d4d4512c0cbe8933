"""Every architecture trains under the real trainer (vmapped stack, Adam, constrain, buffers, folding)."""

import jax
import numpy as np
import pytest

pytest.importorskip("jsae.train")

from jsae.sae import registry, stack, to_jumprelu
from jsae.train import TrainConfig, train

CONFIGS = {
    "relu": {},
    "topk": dict(k=4),
    "batchtopk": dict(k=4),
    "jumprelu": dict(threshold=0.05, bandwidth=0.05),
    "gated": {},
    "matryoshka": dict(k=4, prefixes=(8, 32)),
}


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(1)
    feats = rng.normal(size=(32, 16))
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    codes = (rng.random((4096, 32)) < 0.1) * rng.uniform(0.5, 1.5, (4096, 32))
    return (codes @ feats).astype(np.float32)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_architecture_trains(name, data):
    sae = stack(registry.module(name).init, jax.random.split(jax.random.key(0), 2), 16, 32, **CONFIGS[name])
    cfg = TrainConfig(
        steps=200,
        batch_size=128,
        lr=3e-3,
        sparsity_coef=0.05,
        chunk_steps=100,
        dead_after_tokens=2000,
        normalise_activations=True,
    )
    result = train(sae, data, cfg, progress=False)
    ev = np.asarray(result.metrics["explained_variance"])
    assert np.all(ev > 0.6), ev
    if "k" in CONFIGS[name]:
        np.testing.assert_allclose(result.metrics["l0"], 4.0)  # k per token, on average over the batch
    if hasattr(result.sae, "threshold") and result.sae.threshold.ndim == 1:  # BatchTopK family
        assert np.all(np.asarray(result.sae.threshold) > 0)  # calibrated by update_buffers
        x = data[:256]
        f = jax.vmap(lambda s: s.encode(x))(result.sae)  # the returned SAEs read raw activations
        np.testing.assert_array_equal(f, jax.vmap(lambda s: s.encode(x))(to_jumprelu(result.sae)))
        assert np.all(np.abs(np.mean(np.sum(np.asarray(f) != 0, axis=-1), axis=-1) - 4.0) < 1.0)
