"""train() with an optax chain of one's own: the vmapped stack equals N hand-written single-SAE optax
loops with the same chain, per-SAE values through optax.inject_hyperparams; buffers stay the SAE's."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jsae.sae import batchtopk, index, relu, stack
from jsae.train import TrainConfig, init_sae_state, make_step, train

N, D, M, B, STEPS = 3, 6, 10, 16, 24
LRS = [1e-3, 4e-3, 1e-2]


def relu_loss(p, x, coef):
    """The ReLU SAE objective written out (Anthropic, April 2024): squared error + coef * L1 weighted by
    decoder row norms."""
    f = jax.nn.relu((x - p["b_dec"]) @ p["W_enc"] + p["b_enc"])
    x_hat = f @ p["W_dec"] + p["b_dec"]
    return jnp.mean(jnp.sum((x - x_hat) ** 2, -1)) + coef * jnp.mean(f @ jnp.linalg.norm(p["W_dec"], axis=-1))


def optax_loop(p, batches, opt, coef):
    """The oracle: a plain optax loop over one SAE's batches."""
    state = opt.init(p)
    for x in batches:
        g = jax.grad(relu_loss)(p, x, coef)
        upd, state = opt.update(g, state, p)
        p = optax.apply_updates(p, upd)
    return p


def params_of(sae):
    return {k: getattr(sae, k) for k in ("W_enc", "b_enc", "W_dec", "b_dec")}


CHAINS = {
    "clip+adamw": (
        lambda: optax.chain(
            optax.clip_by_global_norm(0.5), optax.inject_hyperparams(optax.adamw)(learning_rate=0.0, weight_decay=0.05)
        ),
        lambda lr: optax.chain(optax.clip_by_global_norm(0.5), optax.adamw(lr, weight_decay=0.05)),
    ),
}
if hasattr(optax, "contrib") and hasattr(optax.contrib, "schedule_free_adamw"):
    CHAINS["schedule_free_adamw"] = (
        lambda: optax.inject_hyperparams(optax.contrib.schedule_free_adamw)(learning_rate=0.0, weight_decay=0.01),
        lambda lr: optax.contrib.schedule_free_adamw(lr, weight_decay=0.01),
    )


@pytest.mark.parametrize("name", list(CHAINS))
def test_custom_chain_stack_equals_single_optax_loops(name):
    make_injected, make_single = CHAINS[name]
    rng = np.random.default_rng(0)
    batches = rng.normal(size=(STEPS, N, B, D)).astype(np.float32)
    sae = stack(relu.init, jax.random.split(jax.random.key(0), N), D, M)
    cfg = TrainConfig(steps=STEPS, batch_size=B, sparsity_coef=0.2, chunk_steps=10)  # a partial last chunk
    result = train(
        sae, lambda: iter(batches), cfg, optimizer=make_injected(), optimizer_hp={"learning_rate": LRS}, progress=False
    )
    assert np.all(np.isfinite(result.metrics["loss"]))
    for i in range(N):
        seen = batches[:, i].reshape(-1, D)
        assert relu_loss(params_of(index(result.sae, i)), seen, 0.2) < relu_loss(params_of(index(sae, i)), seen, 0.2)
        expected = optax_loop(params_of(index(sae, i)), batches[:, i], make_single(LRS[i]), 0.2)
        for k, v in expected.items():
            np.testing.assert_allclose(np.asarray(getattr(result.sae, k)[i]), v, rtol=2e-5, atol=2e-6, err_msg=k)


def test_per_sae_hyperparameter_must_be_injected():
    sae = stack(relu.init, jax.random.split(jax.random.key(0), 2), D, M)
    x = np.random.default_rng(0).normal(size=(64, D)).astype(np.float32)
    cfg = TrainConfig(steps=4, batch_size=8, chunk_steps=4)
    with pytest.raises(ValueError, match=r"'learning_rate' cannot be set per SAE.*optax.inject_hyperparams"):
        train(sae, x, cfg, optimizer=optax.adam(1e-3), optimizer_hp={"learning_rate": [1e-3, 2e-3]}, progress=False)
    with pytest.raises(ValueError, match=r"'weight_decay' has 3 values but the stack holds 2 SAEs"):
        train(
            sae,
            x,
            cfg,
            optimizer=optax.inject_hyperparams(optax.adamw)(learning_rate=1e-3),
            optimizer_hp={"weight_decay": [0.1, 0.2, 0.3]},
            progress=False,
        )


def test_batchtopk_threshold_is_left_to_update_buffers():
    """Weight decay would shrink BatchTopK's threshold; as a buffer it follows only its EMA."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(B, D)).astype(np.float32)
    sae = batchtopk.init(jax.random.key(3), D, M, k=2, threshold_decay=0.9)
    sae = eqx.tree_at(lambda s: s.threshold, sae, jnp.asarray(0.5))
    opt = optax.adamw(1.0, weight_decay=0.5)
    state, _ = make_step(opt)(init_sae_state(sae, opt), jnp.asarray(x), {"aux_coef": jnp.asarray(1 / 32)})
    # the oracle, from the paper's rule: the k*B largest pre-activations of the batch, ReLU'd
    pre = (x - np.asarray(sae.b_dec)) @ np.asarray(sae.W_enc) + np.asarray(sae.b_enc)
    kth = np.sort(pre.ravel())[-2 * B]
    f = np.where(pre >= kth, np.maximum(pre, 0), 0)
    expected = 0.9 * 0.5 + 0.1 * f[f > 0].min()
    np.testing.assert_allclose(float(state.sae.threshold), expected, rtol=1e-5)
