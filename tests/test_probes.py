"""Linear probes: separable synthetic data (exact answer), F1 by hand, clear errors."""

import jax.numpy as jnp
import numpy as np
import pytest

from jsae.analysis._probes import f1_per_class, fit_logistic, one_hot_targets, train_probe


def separable_clusters(rng, n_per_class, n_classes=4, d=6, spread=0.3):
    """Class c sits around 4 * e_c + a fixed offset: linearly separable one-vs-rest (margin 2 = 6.7 sigma)."""
    centers = 4.0 * np.eye(d)[:n_classes] + np.linspace(-1.0, 1.0, d)
    labels = np.concatenate([np.full(n, c) for c, n in enumerate(n_per_class)])
    x = centers[labels] + spread * rng.normal(size=(len(labels), d))
    return x.astype(np.float32), labels


def test_probe_separates_separable_classes_including_a_rare_one():
    rng = np.random.default_rng(0)
    counts = [400, 400, 400, 8]  # class 3 is 0.7% of the data: class balancing must still find it
    x, y = separable_clusters(rng, counts)
    xt, yt = separable_clusters(np.random.default_rng(1), [100, 100, 100, 20])
    probe = train_probe(x, y, 4, steps=300)
    f1 = np.asarray(f1_per_class(probe.predict(jnp.asarray(xt)), one_hot_targets(yt, 4)))
    np.testing.assert_array_equal(f1, np.ones(4))  # separable by construction: every class perfect
    # the probe direction of class c points along e_c (the only direction separating it)
    dirs = np.asarray(probe.directions())
    assert np.all(np.argmax(np.abs(dirs), axis=1)[:4] == np.arange(4))


def test_unbalanced_fit_would_miss_the_rare_class_on_overlapping_data():
    """The class-balanced loss puts the decision where positives and negatives weigh the same: on two
    overlapping 1-D Gaussians N(-1, 1) (99%) and N(+1, 1) (1%) the balanced optimum threshold is 0."""
    rng = np.random.default_rng(2)
    neg, pos = rng.normal(-1, 1, 20000), rng.normal(1, 1, 200)
    x = np.concatenate([neg, pos])[:, None].astype(np.float32)
    y = np.concatenate([np.zeros(len(neg), int), np.ones(len(pos), int)])
    probe = fit_logistic(jnp.asarray(x), one_hot_targets(y, 2)[:, 1:], steps=500, l2=0.0)
    threshold = -float(probe.b[0]) / float(probe.W[0, 0])
    assert abs(threshold) < 0.15  # equal-variance Gaussians, equal class weight -> midpoint 0


def test_f1_by_hand():
    pred = np.array([[1, 0], [1, 1], [0, 1], [0, 0], [1, 0]], bool)
    true = np.array([[1, 0], [0, 1], [0, 1], [1, 0], [1, 0]], bool)
    # class 0: TP 2 (rows 0, 4), FP 1 (row 1), FN 1 (row 3) -> 4 / (4 + 2) ; class 1: TP 2, FP 0, FN 0 -> 1
    np.testing.assert_allclose(np.asarray(f1_per_class(pred, true)), [4 / 6, 1.0], rtol=1e-6)


def test_feature_mask_zeroes_masked_weights():
    rng = np.random.default_rng(3)
    x, y = separable_clusters(rng, [50, 50], n_classes=2, d=4)
    mask = jnp.array([1.0, 0.0, 1.0, 0.0])
    probe = fit_logistic(jnp.asarray(x), one_hot_targets(y, 2), mask, steps=50)
    np.testing.assert_array_equal(np.asarray(probe.W)[[1, 3]], 0.0)


def test_bad_labels_and_shapes_raise():
    with pytest.raises(ValueError, match="labels must lie in"):
        train_probe(np.zeros((3, 2)), np.array([0, 1, 5]), 3)
    with pytest.raises(ValueError, match="one row per label"):
        train_probe(np.zeros((3, 2)), np.array([0, 1]), 3)
