"""Shared SAE pieces: the geometric median (b_dec init) and its options."""

import jax.numpy as jnp
import numpy as np
import pytest

from jsae.sae._base import geometric_median, initial_b_dec


def summed_distance(points: np.ndarray, y: np.ndarray) -> np.ndarray:
    """sum_i ||points_i - y|| for y [..., d]."""
    return np.linalg.norm(points[None] - np.atleast_2d(y)[:, None], axis=-1).sum(axis=-1)


def test_geometric_median_minimises_summed_distance():
    rng = np.random.default_rng(0)
    points = np.concatenate([rng.normal(size=(30, 3)), rng.normal(8.0, 1.0, size=(5, 3))])  # with outliers
    y = np.asarray(geometric_median(jnp.asarray(points, jnp.float32)), np.float64)
    best = summed_distance(points, y)[0]
    # no nearby point does better (a minimum, not just a stationary guess)...
    for radius in (1e-1, 1e-2):
        nearby = y + radius * rng.normal(size=(500, 3))
        assert best <= summed_distance(points, nearby).min() + 1e-4
    # ...and a brute-force grid search over a box around the data finds nothing better
    grid = np.stack(np.meshgrid(*[np.linspace(-2, 3, 41)] * 3, indexing="ij"), -1).reshape(-1, 3)
    g = grid[np.argmin(summed_distance(points, grid))]
    fine = g + np.stack(np.meshgrid(*[np.linspace(-0.125, 0.125, 21)] * 3, indexing="ij"), -1).reshape(-1, 3)
    assert best <= summed_distance(points, fine).min() + 1e-4
    # robust to the outliers, unlike the mean
    assert np.linalg.norm(y) < np.linalg.norm(points.mean(axis=0))


def test_initial_b_dec_options():
    data = jnp.asarray(np.random.default_rng(1).normal(size=(10, 4)), jnp.float32)
    np.testing.assert_allclose(initial_b_dec(data, 4, "mean"), np.asarray(data).mean(axis=0), rtol=1e-6)
    np.testing.assert_array_equal(initial_b_dec(None, 4, "zeros"), np.zeros(4))
    with pytest.raises(ValueError, match="needs a data sample"):
        initial_b_dec(None, 4, "geometric_median")
    with pytest.raises(ValueError, match="expected"):
        initial_b_dec(data, 5, "mean")
