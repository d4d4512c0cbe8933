"""Shared test tools for the SAE architectures: float64 mode, finite differences, random weights.

Nothing here calls into jsae: the numpy references live in each test file, written from the papers'
formulas, and are compared with the library.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import numpy as np
import pytest

D_IN, D_SAE, BATCH = 4, 6, 3


@pytest.fixture
def x64():
    """Run a test with float64 JAX arrays (for finite-difference gradient checks)."""
    with jax.enable_x64(True):
        yield


def random_params(seed: int, d_in: int = D_IN, d_sae: int = D_SAE) -> dict[str, np.ndarray]:
    """Untied random float64 weights (W_enc [d_in, d_sae], W_dec [d_sae, d_in]) and biases."""
    rng = np.random.default_rng(seed)
    return {
        "W_enc": rng.normal(size=(d_in, d_sae)),
        "b_enc": 0.3 * rng.normal(size=d_sae),
        "W_dec": rng.normal(size=(d_sae, d_in)) / np.sqrt(d_in),
        "b_dec": 0.2 * rng.normal(size=d_in),
    }


def random_batch(seed: int, batch: int = BATCH, d_in: int = D_IN) -> np.ndarray:
    return np.random.default_rng(1000 + seed).normal(size=(batch, d_in))


def fd_grad(fn: Callable[[dict[str, np.ndarray]], float], params: dict[str, np.ndarray], h: float = 1e-6):
    """Central finite differences of a scalar numpy function of a dict of float64 arrays."""
    grads = {}
    for name, a in params.items():
        g = np.zeros_like(a)
        for idx in np.ndindex(a.shape):
            plus, minus = a.copy(), a.copy()
            plus[idx] += h
            minus[idx] -= h
            g[idx] = (fn({**params, name: plus}) - fn({**params, name: minus})) / (2 * h)
        grads[name] = g
    return grads


def assert_grads_close(sae_grads, expected: dict[str, np.ndarray], rtol=1e-6, atol=1e-7):
    for name, g in expected.items():
        np.testing.assert_allclose(np.asarray(getattr(sae_grads, name)), g, rtol=rtol, atol=atol, err_msg=name)


def np_metrics(x: np.ndarray, x_hat: np.ndarray, f: np.ndarray) -> dict[str, float]:
    """L0, per-element MSE and explained variance, from their definitions."""
    err = ((x_hat - x) ** 2).sum()
    return {
        "l0": float((f != 0).sum(axis=1).mean()),
        "mse": float(err / x.size),
        "explained_variance": float(1 - err / ((x - x.mean(axis=0)) ** 2).sum()),
    }


def assert_metrics_close(metrics, expected: dict[str, float], rtol=1e-5, atol=1e-6):
    for name, v in expected.items():
        np.testing.assert_allclose(float(metrics[name]), v, rtol=rtol, atol=atol, err_msg=name)
