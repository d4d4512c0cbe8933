"""The public composable step: a user adds a decoder-orthogonality penalty to an architecture's loss
without editing jsae, and jits, scans, vmaps and differentiates the step; train() takes the same loss."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jsae.sae import index, relu, stack
from jsae.train import TrainConfig, init_sae_state, make_step, train

D, M, B, STEPS = 6, 12, 16, 30


def orthogonality(W_dec):
    """Mean squared off-diagonal cosine between decoder rows."""
    W = W_dec / jnp.linalg.norm(W_dec, axis=-1, keepdims=True)
    G = W @ W.T
    return jnp.sum((G - jnp.eye(G.shape[0])) ** 2) / (G.shape[0] * (G.shape[0] - 1))


def loss_fn(sae, x, hp, dead):
    """What a user writes: the architecture's loss plus a term of their own."""
    total, (metrics, f) = sae.loss(x, hp, dead)
    ortho = orthogonality(sae.W_dec)
    return total + hp["ortho_coef"] * ortho, ({**metrics, "ortho": ortho}, f)


def oracle_loss(p, x, coef, ortho_coef):
    """The same objective written out: ReLU SAE (squared error + L1 by decoder norms) + the penalty."""
    f = jax.nn.relu((x - p["b_dec"]) @ p["W_enc"] + p["b_enc"])
    x_hat = f @ p["W_dec"] + p["b_dec"]
    l1 = jnp.mean(f @ jnp.linalg.norm(p["W_dec"], axis=-1))
    return jnp.mean(jnp.sum((x - x_hat) ** 2, -1)) + coef * l1 + ortho_coef * orthogonality(p["W_dec"])


def oracle_run(p, batches, lr, coef, ortho_coef):
    opt = optax.adam(lr)
    state = opt.init(p)
    for x in batches:
        g = jax.grad(oracle_loss)(p, x, coef, ortho_coef)
        upd, state = opt.update(g, state, p)
        p = optax.apply_updates(p, upd)
    return p


def params_of(sae):
    return {k: getattr(sae, k) for k in ("W_enc", "b_enc", "W_dec", "b_dec")}


def hp(ortho_coef):
    return {"sparsity_coef": jnp.asarray(0.1), "ortho_coef": jnp.asarray(ortho_coef)}


def test_user_loss_term_through_jitted_scanned_step_matches_optax_loop():
    rng = np.random.default_rng(0)
    batches = jnp.asarray(rng.normal(size=(STEPS, B, D)).astype(np.float32))
    sae = relu.init(jax.random.key(0), D, M, decoder_norm=1.0)
    opt = optax.adam(1e-2)
    step = jax.jit(make_step(opt, loss_fn))

    def run(ortho_coef):
        final, metrics = jax.lax.scan(lambda s, x: step(s, x, hp(ortho_coef)), init_sae_state(sae, opt), batches)
        return final, metrics

    final, metrics = run(1.0)
    expected = oracle_run(params_of(sae), batches, 1e-2, 0.1, 1.0)
    for k, v in expected.items():
        np.testing.assert_allclose(np.asarray(getattr(final.sae, k)), v, rtol=2e-5, atol=2e-6, err_msg=k)
    assert metrics["ortho"].shape == (STEPS,) and "dead_fraction" in metrics
    plain, _ = run(0.0)
    assert orthogonality(final.sae.W_dec) < orthogonality(plain.sae.W_dec)  # the term does its work


def test_vmapped_user_step_trains_a_stack_like_separate_steps():
    rng = np.random.default_rng(1)
    n = 3
    batches = jnp.asarray(rng.normal(size=(STEPS, n, B, D)).astype(np.float32))
    saes = stack(relu.init, jax.random.split(jax.random.key(1), n), D, M)
    coefs = jnp.asarray([0.0, 0.5, 2.0])
    opt = optax.adam(1e-2)
    step = jax.jit(jax.vmap(make_step(opt, loss_fn)))
    state = jax.vmap(lambda s: init_sae_state(s, opt))(saes)
    for x in batches:
        state, _ = step(state, x, {"sparsity_coef": jnp.full(n, 0.1), "ortho_coef": coefs})
    for i in range(n):
        expected = oracle_run(params_of(index(saes, i)), batches[:, i], 1e-2, 0.1, float(coefs[i]))
        for k, v in expected.items():
            np.testing.assert_allclose(np.asarray(getattr(state.sae, k)[i]), v, rtol=2e-5, atol=2e-6, err_msg=k)


def test_grad_through_the_step():
    """d(loss after one step)/d(ortho_coef) agrees with a central difference of the same function."""
    rng = np.random.default_rng(2)
    x0, x1 = (jnp.asarray(rng.normal(size=(B, D)).astype(np.float32)) for _ in range(2))
    sae = relu.init(jax.random.key(2), D, M, decoder_norm=1.0)
    opt = optax.sgd(0.5)
    step = make_step(opt, loss_fn)

    def after_one_step(c):
        state, _ = step(init_sae_state(sae, opt), x0, hp(c))
        return oracle_loss(params_of(state.sae), x1, 0.1, 0.0)

    g = jax.grad(after_one_step)(1.0)
    h = 1e-2
    fd = (after_one_step(1.0 + h) - after_one_step(1.0 - h)) / (2 * h)
    np.testing.assert_allclose(float(g), float(fd), rtol=2e-2, atol=1e-4)
    assert abs(float(g)) > 1e-4


def test_train_takes_the_user_loss():
    rng = np.random.default_rng(3)
    n = 2
    batches = rng.normal(size=(STEPS, n, B, D)).astype(np.float32)
    saes = stack(relu.init, jax.random.split(jax.random.key(3), n), D, M)
    cfg = TrainConfig(
        steps=STEPS,
        batch_size=B,
        lr=[1e-2, 3e-3],
        sparsity_coef=0.1,
        grad_clip=None,
        chunk_steps=10,
        extra_hp={"ortho_coef": [1.0, 0.3]},
    )
    result = train(saes, lambda: iter(batches), cfg, loss_fn=loss_fn, progress=False)
    assert result.history["ortho"].shape == (3, n)
    for i, (lr, oc) in enumerate([(1e-2, 1.0), (3e-3, 0.3)]):
        expected = oracle_run(params_of(index(saes, i)), batches[:, i], lr, 0.1, oc)
        for k, v in expected.items():
            np.testing.assert_allclose(np.asarray(getattr(result.sae, k)[i]), v, rtol=2e-5, atol=2e-6, err_msg=k)
