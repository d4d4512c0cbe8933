"""The trainer: vmapped == separate, recovery of a known dictionary, schedules, data order."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jsae.sae import index, relu, stack
from jsae.train import TrainConfig, train
from jsae.train._data import chunk_indices
from jsae.train._schedules import lr_multiplier


def sparse_dictionary_data(key_seed: int, d: int, n_features: int, tokens: int, p: float = 0.04):
    """x = codes @ features with unit-norm random features and sparse nonnegative codes."""
    rng = np.random.default_rng(key_seed)
    feats = rng.normal(size=(n_features, d))
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    codes = (rng.random((tokens, n_features)) < p) * rng.uniform(0.5, 1.5, (tokens, n_features))
    return (codes @ feats).astype(np.float32), feats


def mean_max_cosine(true_feats: np.ndarray, W_dec: np.ndarray) -> float:
    W = W_dec / np.linalg.norm(W_dec, axis=-1, keepdims=True)
    return float(np.mean(np.max(true_feats @ W.T, axis=1)))


def test_relu_recovers_known_dictionary():
    x, feats = sparse_dictionary_data(0, d=16, n_features=24, tokens=16384)
    sae = stack(relu.init, jax.random.split(jax.random.key(0), 2), 16, 48)
    cfg = TrainConfig(steps=3000, batch_size=256, lr=3e-3, sparsity_coef=[0.1, 0.3], chunk_steps=500, lr_decay="linear")
    result = train(sae, x, cfg, progress=False)
    for i in range(2):
        assert mean_max_cosine(feats, np.asarray(result.sae.W_dec[i])) >= 0.9
    assert np.all(result.metrics["explained_variance"] > 0.8)


def test_vmapped_training_equals_separate_trainings():
    rng = np.random.default_rng(3)
    n, d, m = 3, 8, 16
    data = rng.normal(size=(n, 512, d)).astype(np.float32) * rng.uniform(0.5, 2, (n, 1, d)).astype(np.float32)
    keys = jax.random.split(jax.random.key(2), n)
    lrs, coefs = [1e-3, 3e-3, 1e-2], [0.05, 0.1, 0.2]
    cfg = dict(
        steps=60,
        batch_size=32,
        chunk_steps=20,
        lr_warmup_steps=10,
        lr_decay="cosine",
        sparsity_warmup_steps=10,
        normalise_activations=True,
    )
    together = train(
        stack(relu.init, keys, d, m), data, TrainConfig(lr=lrs, sparsity_coef=coefs, **cfg), progress=False
    )
    for i in range(n):
        alone = train(
            stack(relu.init, keys[i : i + 1], d, m),
            data[i : i + 1],
            TrainConfig(lr=lrs[i], sparsity_coef=coefs[i], **cfg),
            progress=False,
        )
        for a, b in zip(jax.tree.leaves(index(together.sae, i)), jax.tree.leaves(index(alone.sae, 0))):
            np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6)


def test_shared_data_is_the_same_as_repeated_per_sae_data():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(256, 8)).astype(np.float32)
    keys = jax.random.split(jax.random.key(5), 2)
    cfg = TrainConfig(steps=30, batch_size=16, lr=1e-3, sparsity_coef=0.1, chunk_steps=10)
    shared = train(stack(relu.init, keys, 8, 16), x, cfg, progress=False)
    repeated = train(stack(relu.init, keys, 8, 16), np.stack([x, x]), cfg, progress=False)
    for a, b in zip(jax.tree.leaves(shared.sae), jax.tree.leaves(repeated.sae)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_iterator_data_matches_explicit_batches():
    """Batches from an iterator are used in order: compare with a hand-written optax Adam loop."""
    rng = np.random.default_rng(6)
    batches = [rng.normal(size=(8, 4)).astype(np.float32) for _ in range(12)]
    sae = stack(relu.init, jax.random.split(jax.random.key(7), 1), 4, 6)
    cfg = TrainConfig(steps=12, batch_size=8, lr=1e-2, sparsity_coef=0.3, chunk_steps=5, grad_clip=None)
    result = train(sae, lambda: iter(batches), cfg, progress=False)

    single = index(sae, 0)
    opt = optax.adam(1e-2)
    state = opt.init(single)

    def loss(s, x):
        f = jax.nn.relu((x - s.b_dec) @ s.W_enc + s.b_enc)
        x_hat = f @ s.W_dec + s.b_dec
        return jnp.mean(jnp.sum((x - x_hat) ** 2, -1)) + 0.3 * jnp.mean(f @ jnp.linalg.norm(s.W_dec, axis=-1))

    for x in batches:
        g = jax.grad(loss)(single, x)
        upd, state = opt.update(g, state)
        single = optax.apply_updates(single, upd)
    for a, b in zip(jax.tree.leaves(index(result.sae, 0)), jax.tree.leaves(single)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_prefetching_the_next_chunk_reads_only_the_run_and_changes_nothing():
    """The iterator source reads the next chunk on a thread while the device trains: the same batches in
    the same order (bit-identical to reading them in turn), never a batch past ``steps`` (a one-shot
    iterator of exactly ``steps`` batches suffices), and a bad batch is reported at its step."""
    from jsae.train import IteratorSource

    rng = np.random.default_rng(8)
    batches = [rng.normal(size=(2, 8, 4)).astype(np.float32) for _ in range(12)]
    sae = stack(relu.init, jax.random.split(jax.random.key(9), 2), 4, 6)
    cfg = TrainConfig(steps=12, batch_size=8, lr=1e-2, sparsity_coef=0.3, chunk_steps=5)
    read = []

    def one_shot():
        for i, b in enumerate(batches):
            read.append(i)
            yield b

    ahead = train(sae, IteratorSource(one_shot()), cfg, progress=False)
    assert read == list(range(12))
    in_turn = train(sae, IteratorSource(lambda: iter(batches), prefetch=False), cfg, progress=False)
    for a, b in zip(jax.tree.leaves(ahead.sae), jax.tree.leaves(in_turn.sae), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

    bad = [b.copy() for b in batches]
    bad[8][1, 3, 0] = np.nan
    with pytest.raises(ValueError, match=r"batch at step 8 contains NaN or inf \(SAE 1\)"):
        train(sae, lambda: iter(bad), cfg, progress=False)


def test_non_finite_reads_bfloat16_bits_as_isfinite_does():
    """The bit test for bfloat16 agrees with ``np.isfinite`` of the float32 widening (NaN, +-inf, the
    largest finite values, subnormals, zeros)."""
    import ml_dtypes

    from jsae.train._data import non_finite

    special = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 3.3895e38, -3.3895e38, 1e-40, -1e-40, 1.0], np.float32)
    x = np.concatenate([special, np.random.default_rng(0).normal(size=1000).astype(np.float32) * 1e30])
    b = x.astype(ml_dtypes.bfloat16)
    np.testing.assert_array_equal(non_finite(b), ~np.isfinite(b.astype(np.float32)))
    np.testing.assert_array_equal(non_finite(x), ~np.isfinite(x))
    assert non_finite(b).sum() == 3


def test_lr_schedule_closed_form():
    cfg = TrainConfig(steps=100, lr_warmup_steps=10, lr_decay="linear", lr_decay_start=0.8)
    mult = lr_multiplier(cfg)
    expected = [min(t / 10, 1.0) if t < 80 else 1.0 - (t - 80) / 20 for t in range(100)]
    np.testing.assert_allclose([float(mult(t)) for t in range(100)], expected, atol=1e-6)
    cos = lr_multiplier(TrainConfig(steps=100, lr_decay="cosine", lr_decay_start=0.5))
    np.testing.assert_allclose(
        [float(cos(t)) for t in (0, 49, 50, 75)], [1, 1, 1, 0.5 * (1 + np.cos(np.pi * 25 / 50))], atol=1e-6
    )


def test_chunk_indices_are_shuffled_epochs():
    key = jax.random.key(0)
    T, B = 50, 8  # 6 steps per epoch, 2 rows left out per epoch
    whole = np.asarray(chunk_indices(key, jnp.asarray(0), 30, B, T))
    for e in range(5):
        epoch = whole[6 * e : 6 * e + 6].ravel()
        assert len(set(epoch.tolist())) == 48 and epoch.max() < T
    # the same steps asked for from a later start are the same rows (resumability)
    later = np.asarray(chunk_indices(key, jnp.asarray(13), 10, B, T))
    np.testing.assert_array_equal(later, whole[13:23])


def test_dead_fraction_counts_latents_that_never_fire():
    x = np.abs(np.random.default_rng(0).normal(size=(256, 4))).astype(np.float32)
    sae = stack(relu.init, jax.random.split(jax.random.key(0), 1), 4, 8)
    # latents 0..3 can never fire: a hugely negative encoder bias
    sae = jax.tree.map(lambda a: a, sae)
    sae = type(sae)(
        W_enc=sae.W_enc,
        b_enc=sae.b_enc.at[:, :4].set(-1e6),
        W_dec=sae.W_dec,
        b_dec=sae.b_dec,
        apply_b_dec_to_input=sae.apply_b_dec_to_input,
        unit_norm_decoder=sae.unit_norm_decoder,
    )
    cfg = TrainConfig(steps=20, batch_size=32, lr=1e-4, dead_after_tokens=200, chunk_steps=10)
    result = train(sae, x, cfg, progress=False)
    fired_somewhere = np.asarray((result.sae.encode(jnp.asarray(x)) > 0).any(axis=1))[0]
    assert result.metrics["dead_fraction"][0] >= 0.5 - 1e-6
    assert result.metrics["dead_fraction"][0] == pytest.approx(1 - fired_somewhere.mean(), abs=1 / 8 + 1e-6)


def test_auxk_runs_only_while_latents_are_dead():
    """AuxK is 0 while nothing is dead (the trainer skips it) and positive once latents die."""
    from jsae.sae import topk

    x, _ = sparse_dictionary_data(1, d=8, n_features=4, tokens=2048, p=0.3)
    sae = stack(topk.init, jax.random.split(jax.random.key(0), 2), 8, 64, k=2)
    never = train(
        sae, x, TrainConfig(steps=40, batch_size=64, lr=1e-3, chunk_steps=20, dead_after_tokens=10**9), progress=False
    )
    assert np.all(never.history["aux"] == 0) and np.all(never.history["dead_fraction"] == 0)
    soon = train(
        sae, x, TrainConfig(steps=40, batch_size=64, lr=1e-3, chunk_steps=20, dead_after_tokens=256), progress=False
    )
    assert np.all(soon.history["dead_fraction"][-1] > 0.5)  # 64 latents, 4 true features, k=2
    assert np.all(soon.history["aux"][-1] > 0)
