"""Run by test_models_sharding.py in a process with 8 forced CPU devices: a tiny model sharded over a mesh
gives the unsharded logits and per-head ``z``, with each weight where shard_model placed it; then the
stream trains the same SAEs on it (sharded_stream_script.py)."""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec

from jsae.models import ModelConfig, capture, forward, shard_model
from jsae.models._build import make_transformer

D, DH, V, L = 16, 4, 37, 2


def random_model(arch: Literal["gpt2", "llama"], H: int, K: int, F: int, seed: int):
    rng = np.random.default_rng(seed)

    def r(*shape):
        return rng.normal(0, 0.3, shape).astype(np.float32)

    gpt2 = arch == "gpt2"
    cfg = ModelConfig(arch, L, D, H, K, DH, F, V, 32, 1e-5, tied_embeddings=gpt2)
    layers = []
    for _ in range(L):
        lay = dict(ln1_w=1 + r(D), W_Q=r(D, H, DH), W_K=r(D, K, DH), W_V=r(D, K, DH), W_O=r(H, DH, D), ln2_w=1 + r(D))
        lay.update(W_in=r(D, F), W_out=r(F, D))
        if gpt2:
            lay.update(
                ln1_b=r(D), ln2_b=r(D), b_Q=r(H, DH), b_K=r(K, DH), b_V=r(K, DH), b_O=r(D), b_in=r(F), b_out=r(D)
            )
        else:
            lay.update(W_gate=r(D, F))
        layers.append(lay)
    return make_transformer(
        cfg,
        r(V, D),
        layers,
        1 + r(D),
        ln_f_b=r(D) if gpt2 else None,
        W_U=None if gpt2 else r(D, V),
        pos_embed=r(32, D) if gpt2 else None,
    )


def check(arch: Literal["gpt2", "llama"], H, K, F, n, sharded_axes):
    model = random_model(arch, H, K, F, seed=n)
    mesh = Mesh(np.array(jax.devices()[:n]), ("x",))
    sharded = shard_model(model, mesh)
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, V, (3, 9)), jnp.int32)
    ref_logits, ref = forward(model, tokens, hooks=capture("z"))
    logits, cache = forward(sharded, tokens, hooks=capture("z"))
    np.testing.assert_allclose(np.asarray(logits), np.asarray(ref_logits), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(cache["z"]), np.asarray(ref["z"]), rtol=1e-5, atol=1e-5)
    b = sharded.blocks
    for name in ("W_Q", "W_O", "W_K", "W_V", "W_in", "W_out", "b_Q", "b_in"):
        w = getattr(b, name)
        if w is None:
            continue
        axis = sharded_axes.get(name)
        want = [None] * w.ndim
        if axis is not None:
            want[axis] = "x"
        assert w.sharding.mesh == mesh and w.sharding.spec == PartitionSpec(*want), (name, w.sharding)
        for i, shard in enumerate(sorted(w.addressable_shards, key=lambda s: s.device.id)):
            assert shard.device == mesh.devices[i], (name, shard.device)  # each shard where it was placed
            if axis is not None:
                lo = i * w.shape[axis] // n
                expect = np.take(np.asarray(getattr(model.blocks, name)), range(lo, lo + w.shape[axis] // n), axis)
                np.testing.assert_array_equal(np.asarray(shard.data), expect)
    for w in (sharded.embed, b.ln1_w):
        assert w.sharding.is_fully_replicated and len(w.sharding.device_set) == n, w.sharding  # replicated
    print(arch, H, K, F, n, "ok; z sharding:", cache["z"].sharding)


if __name__ == "__main__":
    assert len(jax.devices()) == 8, jax.devices()
    # 8 query heads over 8 devices; 2 KV heads do not divide: K/V replicated; MLP over 32 hidden units
    check("llama", 8, 2, 32, 8, {"W_Q": 2, "W_O": 1, "W_gate": 2, "W_in": 2, "W_out": 1})
    # 4 devices: query heads, KV heads and MLP all sharded
    check("llama", 8, 4, 32, 4, {"W_Q": 2, "W_O": 1, "W_K": 2, "W_V": 2, "W_gate": 2, "W_in": 2, "W_out": 1})
    # GPT-2 (biases): 4 heads do not divide 8 devices, attention replicated; MLP (24) sharded with its bias
    check("gpt2", 4, 4, 24, 8, {"W_in": 2, "b_in": 1, "W_out": 1})
    from sharded_stream_script import main

    main()  # train_on_model on a sharded model
