"""k-sparse probing recovers planted split features; feature-split rule by hand."""

import numpy as np
import pytest

from jsae.analysis._sparse_probing import accepted_splits, k_sparse_probing, select_latents


def planted_latents(rng, n):
    """4 classes over 40 latents. Class 0 is split: latent 5 fires on half of its samples, latent 17 on
    the other half. Class 1 has one latent (9). Classes 2, 3 have latents 20, 30. Latents 0..39 also
    carry sparse noise unrelated to the class."""
    y = rng.integers(0, 4, n)
    f = (rng.random((n, 40)) < 0.05) * rng.uniform(0.1, 0.5, (n, 40))
    half = rng.random(n) < 0.5
    mag = rng.uniform(1.0, 2.0, n)
    f[(y == 0) & half, 5] += mag[(y == 0) & half]
    f[(y == 0) & ~half, 17] += mag[(y == 0) & ~half]
    for c, j in ((1, 9), (2, 20), (3, 30)):
        f[y == c, j] += mag[y == c]
    return f.astype(np.float32), y


@pytest.mark.parametrize("method", ["mean_diff", "l1"])
def test_recovers_planted_split(method):
    rng = np.random.default_rng(0)
    ftr, ytr = planted_latents(rng, 3000)
    fte, yte = planted_latents(rng, 1000)
    res = k_sparse_probing(ftr, ytr, fte, yte, 4, max_k=4, method=method)
    assert sorted(res.main_latents[0]) == [5, 17]
    assert res.main_latents[1] == [9] and res.main_latents[2] == [20] and res.main_latents[3] == [30]
    # one half alone: recall <= 0.5 at best precision -> F1 <= 2/3; both halves: F1 ~ 1
    assert res.f1[0, 0] <= 2 / 3 + 0.01
    assert res.f1[0, 1] == pytest.approx(1.0, abs=0.01)


def test_selection_ranks_by_mean_difference():
    f = np.array([[1.0, 0, 3], [1.0, 0, 0], [0, 2.0, 0], [0, 2.0, 0]], np.float32)
    y = np.array([0, 0, 1, 1])
    # class 0: mean diff = [1, -2, 1.5] -> latent 2 then 0 ; class 1: [-1, 2, -1.5] -> latent 1 then 0
    np.testing.assert_array_equal(select_latents(f, y, 2, 2), [[2, 0], [1, 0]])


def test_feature_split_rule_by_hand():
    f1 = np.array(
        [
            [0.50, 0.60, 0.62, 0.90],  # +0.10 accepted, +0.02 stops -> 2 (the later jump is not reached)
            [0.80, 0.81, 0.90, 0.95],  # +0.01 stops at once -> 1
            [0.10, 0.20, 0.30, 0.40],  # every step +0.10 -> all 4
        ]
    )
    np.testing.assert_array_equal(accepted_splits(f1, 0.03), [2, 1, 4])
    np.testing.assert_array_equal(accepted_splits(f1, 0.005), [4, 4, 4])


def test_bad_selection_raises():
    with pytest.raises(ValueError, match="unknown latent selection"):
        select_latents(np.zeros((4, 3)), np.array([0, 1, 0, 1]), 2, 2, method="max")
    with pytest.raises(ValueError, match="max_k"):
        select_latents(np.zeros((4, 3)), np.array([0, 1, 0, 1]), 2, 5)
