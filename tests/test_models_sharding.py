"""shard_model on 8 forced CPU devices (in a subprocess): logits and per-head z equal the unsharded
model's, every weight's shards are the slices placed on each device, and train_on_model on the sharded
model trains the unsharded run's SAEs (see sharded_model_script.py and sharded_stream_script.py)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jsae.models import ModelError, load_sharded, shard_model

SCRIPT = Path(__file__).with_name("sharded_model_script.py")


def test_sharded_model_matches_unsharded_on_8_devices():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, str(SCRIPT)], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count(" ok;") == 3, done.stdout
    assert "stream on sharded model ok" in done.stdout, done.stdout  # train_on_model: the unsharded SAEs


def test_shard_model_errors(tiny_llama_dir):
    import jax
    import numpy as np

    from jsae.models import load

    model = load(tiny_llama_dir[0])[0]
    mesh = Mesh(np.array(jax.devices()[:1]).reshape(1, 1), ("a", "b"))
    with pytest.raises(ModelError, match="name the one to shard the model over with axis="):
        shard_model(model, mesh)
    with pytest.raises(ModelError, match="no axis 'c'"):
        shard_model(model, mesh, axis="c")
    with pytest.raises(ModelError, match="takes a jsae Transformer"):
        shard_model(mesh, mesh)  # pyright: ignore[reportArgumentType]
    with pytest.raises(ModelError, match="expected a jax.sharding.Mesh"):
        load_sharded(tiny_llama_dir[0], "x")  # pyright: ignore[reportArgumentType]
    with pytest.raises(ModelError, match="expected a jax.sharding.Mesh"):
        load(tiny_llama_dir[0], mesh="x")
    one = Mesh(np.array(jax.devices()[:1]), ("x",))
    sharded, tok, meta = load_sharded(tiny_llama_dir[0], one)
    assert sharded.blocks.W_Q.sharding == NamedSharding(one, PartitionSpec(None, None, "x", None))
    np.testing.assert_array_equal(np.asarray(sharded.blocks.W_Q), np.asarray(model.blocks.W_Q))
    assert meta["name"] == tiny_llama_dir[0].name
    via_load = load(tiny_llama_dir[0], mesh=one)[0]  # load(..., mesh=) is the same placement
    assert via_load.blocks.W_Q.sharding == sharded.blocks.W_Q.sharding


def test_stream_refuses_a_model_sharded_elsewhere(tiny_llama_dir):
    """Before any compute: a model sharded over other devices than the SAE mesh, and fused=False."""
    import jax
    import numpy as np

    from jsae.activations import parse_inputs
    from jsae.models import load
    from jsae.pipeline import ArrayContexts, train_on_model
    from jsae.sae.registry import init_stack
    from jsae.train import TrainConfig, sae_mesh

    if jax.device_count() < 2:
        pytest.skip("needs 2 devices (one per core: jsae.runtime.prepare_process)")
    model = load(tiny_llama_dir[0])[0]
    sharded = shard_model(model, Mesh(np.array(jax.devices()[:2]), ("x",)))
    inputs = parse_inputs(model.cfg, "z")
    sae = init_stack("relu", jax.random.key(0), len(inputs), model.cfg.d_head, 8)
    contexts = ArrayContexts(np.zeros((8, 8), np.int32), 4)
    cfg = TrainConfig(steps=1, batch_size=32)
    with pytest.raises(ValueError, match="lie on 2 devices but the SAEs train on a mesh of 1; shard the model"):
        train_on_model(sharded, contexts, inputs, sae, cfg, tokens=64, mesh=sae_mesh(jax.devices()[:1]), progress=False)
    with pytest.raises(ValueError, match="fused=False runs the forward on one device, but its weights are spread"):
        train_on_model(sharded, contexts, inputs, sae, cfg, tokens=64, fused=False, progress=False)
