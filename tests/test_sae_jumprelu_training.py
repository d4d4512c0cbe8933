"""JumpReLU under the real trainer (Adam): the L0 coefficient really controls L0.

SAELens-style JumpReLU lets Adam normalise the L0 gradient away (it reaches only the threshold); jsae
also sends it to the pre-activations, so a larger coefficient must give a sparser SAE.
"""

import jax
import numpy as np
import pytest

pytest.importorskip("jsae.train")

from jsae.sae import jumprelu, stack
from jsae.train import TrainConfig, train


def sparse_dictionary_data(seed: int, d: int, n_features: int, tokens: int, p: float):
    """x = codes @ features: unit-norm random features, nonnegative codes active with probability p."""
    rng = np.random.default_rng(seed)
    feats = rng.normal(size=(n_features, d))
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    codes = (rng.random((tokens, n_features)) < p) * rng.uniform(0.5, 1.5, (tokens, n_features))
    return (codes @ feats).astype(np.float32)


def test_l0_falls_as_the_coefficient_rises():
    x = sparse_dictionary_data(0, d=16, n_features=32, tokens=8192, p=0.1)  # ~3 features per token
    coefs = [0.003, 0.03, 0.3]
    sae = stack(jumprelu.init, jax.random.split(jax.random.key(0), 3), 16, 32, threshold=0.05, bandwidth=0.05)
    cfg = TrainConfig(steps=800, batch_size=256, lr=3e-3, sparsity_coef=coefs, chunk_steps=200)
    result = train(sae, x, cfg, progress=False)
    l0 = np.asarray(result.metrics["l0"])
    assert np.all(np.isfinite(l0))
    assert l0[0] > l0[1] > l0[2], l0
    assert l0[0] > 1.5 * l0[2], l0  # not a marginal effect
    # the thresholds moved under Adam (they start at 0.05) and the sparse SAE still reconstructs
    assert np.ptp(np.asarray(result.sae.threshold)) > 0.05
    assert np.asarray(result.metrics["explained_variance"])[1] > 0.5
