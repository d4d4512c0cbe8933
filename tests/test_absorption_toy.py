"""The toy model of absorption (parent p=0.25, children only with the parent): exact expectations.

Oracle: the data's construction. With independent features there is nothing to absorb, so the parent
latent reads the parent alone (encoder cosine ~1) and children's decoders carry no parent component.
With hierarchical features an L1 / TopK SAE saves activations by folding the parent into the child
latents (the paper's section 3); a Matryoshka SAE, whose first latent must reconstruct on its own,
keeps the parent whole.
"""

import jax
import numpy as np
import pytest

from jsae.analysis import ToyHierarchy, toy_absorption_scores, toy_activations, toy_features, train_toy_saes

STEPS = 1500


def toy(hierarchical: bool, n_tokens: int = 30_000):
    cfg = ToyHierarchy(hierarchical=hierarchical, magnitude_spread=0.5)
    k_f, k_x = jax.random.split(jax.random.key(0))
    feats = toy_features(k_f, cfg)
    x, active = toy_activations(k_x, cfg, feats, n_tokens)
    return cfg, feats, x, active


def scores(arch, feats, x, active, n_seeds=3, **kw):
    res, _, _ = train_toy_saes(jax.random.key(1), x, arch, n_seeds=n_seeds, span=feats, steps=STEPS, **kw)
    return toy_absorption_scores(res.sae, feats, x, active)


def test_toy_data_statistics_match_the_construction():
    cfg, feats, x, active = toy(True, 200_000)
    a = np.asarray(active)
    np.testing.assert_allclose(np.asarray(feats) @ np.asarray(feats).T, np.eye(4), atol=1e-5)
    assert a[:, 0].mean() == pytest.approx(0.25, abs=0.005)
    np.testing.assert_allclose(a[:, 1:].mean(axis=0), 0.05, atol=0.003)
    assert not np.any(a[:, 1:] & ~a[:, :1])  # a child never fires without its parent
    _, _, _, ind = toy(False, 200_000)
    ind = np.asarray(ind)
    # independent: P(child | parent) = P(child) = 0.05
    assert ind[ind[:, 0], 1:].mean() == pytest.approx(0.05, abs=0.005)


def test_independent_features_are_not_absorbed():
    _, feats, x, active = toy(False)
    relu = scores("relu", feats, x, active, sparsity_coefs=(0.01, 0.03, 0.1))
    assert np.median(relu["parent_in_child_decoder"]) < 0.05
    assert np.median(relu["parent_encoder_cosine"]) > 0.95
    assert np.median(relu["absorption_rate"]) < 0.05
    matryoshka = scores("matryoshka", feats, x, active, n_seeds=4, k=1)
    assert np.median(matryoshka["absorption_score"]) < 0.1


def test_hierarchical_features_are_absorbed_and_matryoshka_absorbs_least():
    _, feats, x, active = toy(True)
    relu = scores("relu", feats, x, active, sparsity_coefs=(0.01, 0.03, 0.1))
    topk = scores("topk", feats, x, active, n_seeds=4, k=1)
    matryoshka = scores("matryoshka", feats, x, active, n_seeds=4, k=1)
    # ReLU-L1: the children's latents write a parent component (0 without absorption, 0.71 at full)
    # and the parent latent's encoder turns away from the parent (it must stay off on child tokens)
    assert np.median(relu["parent_in_child_decoder"]) > 0.2
    assert np.median(relu["parent_encoder_cosine"]) < 0.92
    med = {
        name: float(np.median(s["absorption_score"]))
        for name, s in (("relu", relu), ("topk", topk), ("matryoshka", matryoshka))
    }
    assert med["matryoshka"] < 0.1, med
    assert med["matryoshka"] < min(med["relu"], med["topk"]) - 0.1, med


def test_child_without_parent_is_rejected():
    with pytest.raises(ValueError, match="p_child <= p_parent"):
        ToyHierarchy(p_parent=0.02, p_child=0.05)
