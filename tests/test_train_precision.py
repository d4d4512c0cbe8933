"""Mixed precision (``compute_dtype``): bfloat16 matmuls, float32 parameters and optimizer state.

Oracle: a synthetic dataset built from a known dictionary (64 unit directions in d=32, sparse codes).
Trained from the same seed, the bfloat16 run must explain as much variance as the float32 run (within
0.01) and recover the same true directions (max cosine to a learned decoder row > 0.9)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jsae.sae import relu, stack, topk
from jsae.synthetic import sparse_dictionary_data
from jsae.train import CheckpointError, TrainConfig, init_sae_state, make_step, train
from jsae.train._precision import resolve_compute_dtype

D, N_FEATURES, M, K, STEPS = 32, 64, 128, 4, 600


def recovered(W_dec, features):
    """For each true feature, the max cosine similarity to a learned decoder row."""
    W = W_dec / np.linalg.norm(W_dec, axis=-1, keepdims=True)
    return (features @ W.T).max(axis=-1)


@pytest.mark.parametrize("sparse", [False, True])
def test_bf16_training_matches_float32_on_a_known_dictionary(sparse):
    x, feats = sparse_dictionary_data(jax.random.key(0), 2, D, N_FEATURES, 8192, p_active=0.05)
    x, feats = np.asarray(x), np.asarray(feats)
    sae = stack(topk.init, jax.random.split(jax.random.key(1), 2), D, M, k=K, sparse=sparse)
    runs = {}
    for dtype in ("float32", "bfloat16"):
        cfg = TrainConfig(
            steps=STEPS, batch_size=256, lr=3e-3, chunk_steps=STEPS, compute_dtype=dtype, dead_after_tokens=256 * 50
        )
        runs[dtype] = train(sae, x, cfg, progress=False)
    f32, bf16 = runs["float32"], runs["bfloat16"]

    leaves = jax.tree.leaves((bf16.state.sae, bf16.state.opt_state))
    assert {a.dtype for a in leaves if jnp.issubdtype(a.dtype, jnp.floating)} == {jnp.dtype(jnp.float32)}
    # the runs differ (bfloat16 rounding took effect), yet reach the same quality
    assert not np.array_equal(np.asarray(f32.sae.W_dec), np.asarray(bf16.sae.W_dec))
    ev32, ev16 = f32.metrics["explained_variance"], bf16.metrics["explained_variance"]
    assert np.all(ev32 > 0.7), ev32  # the float32 run itself learnt the data
    np.testing.assert_allclose(ev16, ev32, atol=0.01)
    for i in range(2):
        c32 = recovered(np.asarray(f32.sae.W_dec[i]), feats[i])
        c16 = recovered(np.asarray(bf16.sae.W_dec[i]), feats[i])
        assert np.mean(c32 > 0.9) > 0.9, c32  # float32 recovers the dictionary
        np.testing.assert_array_equal(c16 > 0.9, c32 > 0.9)  # bfloat16 recovers the same directions
        np.testing.assert_allclose(c16, c32, atol=0.02)


def dot_dtypes(fn, *args):
    """(input dtypes, output dtype) of every dot_general in ``fn``'s jaxpr, sub-jaxprs included."""
    found = []

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "dot_general":
                found.append((tuple(str(v.aval.dtype) for v in eqn.invars), str(eqn.outvars[0].aval.dtype)))
            for v in eqn.params.values():
                for sub in v if isinstance(v, (tuple, list)) else (v,):
                    if hasattr(sub, "eqns"):
                        walk(sub)
                    elif hasattr(sub, "jaxpr") and hasattr(sub.jaxpr, "eqns"):
                        walk(sub.jaxpr)

    walk(jax.make_jaxpr(fn)(*args).jaxpr)
    return found


@pytest.mark.parametrize("mod,kw", [(relu, {}), (topk, dict(k=4, sparse=False)), (topk, dict(k=4, sparse=True))])
def test_step_matmuls_take_bf16_inputs_and_accumulate_in_float32(mod, kw):
    sae = mod.init(jax.random.key(0), 16, 64, **kw)
    opt = optax.adam(1e-3)
    state = init_sae_state(sae, opt)
    x = jnp.ones((8, 16))
    hp = {"sparsity_coef": jnp.asarray(0.1), "aux_coef": jnp.asarray(1 / 32)}  # each loss reads what it needs
    dots = dot_dtypes(make_step(opt, compute_dtype="bfloat16"), state, x, hp)
    big = [d for d in dots if d[0] == ("bfloat16", "bfloat16")]
    assert big and all(out == "float32" for _, out in big), dots
    assert all(len(set(ins)) == 1 for ins, _ in dots), dots  # no product mixes dtypes
    assert all(
        ins == ("float32", "float32") for ins, _ in dot_dtypes(make_step(opt, compute_dtype="float32"), state, x, hp)
    ), "float32 stays float32"
    new, _ = make_step(opt, compute_dtype="bfloat16")(state, x, hp)
    assert all(
        a.dtype == jnp.float32
        for a in jax.tree.leaves((new.sae, new.opt_state))
        if jnp.issubdtype(a.dtype, jnp.floating)
    )


def test_compute_dtype_defaults_and_errors():
    assert resolve_compute_dtype(None, "tpu") == jnp.bfloat16
    assert resolve_compute_dtype(None, "gpu") == jnp.float32
    assert resolve_compute_dtype(None, "cpu") == jnp.float32
    assert resolve_compute_dtype("bfloat16", "cpu") == jnp.bfloat16
    with pytest.raises(ValueError, match="compute_dtype"):
        TrainConfig(steps=1, compute_dtype="float16")
    with pytest.raises(ValueError, match="compute_dtype"):
        resolve_compute_dtype("float16")


def small():
    sae = stack(relu.init, jax.random.split(jax.random.key(0), 2), 4, 8)
    return sae, np.random.default_rng(0).normal(size=(256, 4)).astype(np.float32)


def test_checkpoint_without_the_field_resumes_and_another_dtype_is_refused(tmp_path):
    sae, x = small()
    cfg = TrainConfig(steps=4, batch_size=8, chunk_steps=2)
    train(sae, x, cfg, checkpoint_dir=str(tmp_path), progress=False)
    meta_file = tmp_path / "4" / "meta" / "metadata"
    meta = json.loads(meta_file.read_text())
    del meta["config"]["compute_dtype"]  # as written before the field existed
    meta_file.write_text(json.dumps(meta))
    assert train(sae, x, cfg, checkpoint_dir=str(tmp_path), progress=False).resumed_from == 4
    with pytest.raises(CheckpointError, match="compute_dtype"):
        train(
            sae,
            x,
            TrainConfig(steps=4, batch_size=8, chunk_steps=2, compute_dtype="bfloat16"),
            checkpoint_dir=str(tmp_path),
            progress=False,
        )
