"""Called by sharded_model_script.py (a process with 8 forced CPU devices): ``train_on_model`` on a tiny
model sharded over the SAE mesh (8 heads over 8 devices, 2 layers: 16 per-head SAEs) trains the same SAEs
as on the unsharded model, and the weights stay where ``shard_model`` put them."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec
from sharded_model_script import V, random_model

from jsae.activations import capture_rows, parse_inputs
from jsae.models import capture, forward, shard_model
from jsae.pipeline import ArrayContexts, ModelSource
from jsae.sae.registry import init_stack
from jsae.train import TrainConfig, sae_mesh, train


def run(model, tokens, inputs, sae, mesh):
    cfg = TrainConfig(steps=1, batch_size=64, lr=3e-3, compute_dtype="float32")
    source = ModelSource(model, ArrayContexts(tokens, 8), inputs, tokens=8 * 128, batch_size=64, buffer_tokens=0)
    return train(sae, source, cfg, mesh=mesh, progress=False), source


def main():
    model = random_model("llama", 8, 8, 32, seed=3)  # 8 query and 8 KV heads, 32 hidden units: all split 8 ways
    mesh = sae_mesh()
    sharded = shard_model(model, mesh)
    tokens = np.random.default_rng(1).integers(0, V, (64, 16)).astype(np.int32)
    inputs = parse_inputs(model.cfg, "z")
    sae = init_stack("topk", jax.random.key(0), len(inputs), model.cfg.d_head, 16, k=3)
    ref, ref_source = run(model, tokens, inputs, sae, mesh)
    got, source = run(sharded, tokens, inputs, sae, mesh)
    assert not ref_source.fused and source.fused and source.model_sharded
    assert got.steps == ref.steps == 16
    for a, b in zip(jax.tree.leaves((got.sae, got.state)), jax.tree.leaves((ref.sae, ref.state)), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-5, atol=2e-6)
    moved = np.abs(np.asarray(got.sae.W_enc) - np.asarray(sae.W_enc)).max()
    assert moved > 1e-3, moved  # it trained
    # the weights the stream ran on: split by heads / hidden units over the SAE mesh, each shard on its device
    for name, axis in (("W_Q", 2), ("W_K", 2), ("W_O", 1), ("W_in", 2), ("W_out", 1)):
        for m in (sharded, source.run_model):
            w = getattr(m.blocks, name)
            want = [None] * w.ndim
            want[axis] = "sae"
            assert w.sharding.spec == PartitionSpec(*want), (name, w.sharding)
            for i, shard in enumerate(sorted(w.addressable_shards, key=lambda s: s.device.id)):
                assert shard.device == mesh.devices[i], (name, shard.device)
                lo = i * w.shape[axis] // 8
                full = np.asarray(getattr(model.blocks, name))
                np.testing.assert_array_equal(
                    np.asarray(shard.data), np.take(full, range(lo, lo + w.shape[axis] // 8), axis)
                )
    # head-major inputs: each device's SAEs are its own heads, and no activation moves between devices (the
    # only collectives are the residual stream's all-reduces, [B, T, D]); the rows equal the unsharded z
    by_head = tuple(sorted(inputs, key=lambda i: (i.head, i.layer)))
    replicated, by_sae = NamedSharding(mesh, PartitionSpec()), NamedSharding(mesh, PartitionSpec("sae"))

    @jax.jit
    def rows(m, t):
        return jax.lax.with_sharding_constraint(
            capture_rows(m, jax.lax.with_sharding_constraint(t, replicated), by_head), by_sae
        )

    batch = jnp.asarray(tokens[:8])
    hlo = rows.lower(source.run_model, batch).compile().as_text() or ""
    moved = re.findall(r"= (\S+) (all-gather|all-to-all|collective-permute|all-reduce|reduce-scatter)\(", hlo)
    assert moved and all(op == "all-reduce" and shape.startswith("f32[8,16,16]") for shape, op in moved), moved
    _, cache = forward(model, batch, hooks=capture("z"))
    want = np.stack([np.asarray(cache["z"][i.layer, :, :, i.head]).reshape(-1, model.cfg.d_head) for i in by_head])
    np.testing.assert_allclose(np.asarray(rows(source.run_model, batch)), want, rtol=1e-4, atol=1e-5)
    print("stream on sharded model ok")
