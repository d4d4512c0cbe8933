"""shard_model on 8 forced CPU devices (in a subprocess): logits and per-head z equal the unsharded
model's, and every weight's shards are the slices placed on each device (see sharded_model_script.py)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from jax.sharding import Mesh

from jsae.models import ModelError, shard_model

SCRIPT = Path(__file__).with_name("sharded_model_script.py")


def test_sharded_model_matches_unsharded_on_8_devices():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, str(SCRIPT)], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count(" ok;") == 3, done.stdout


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
