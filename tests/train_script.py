"""Run by tests in a subprocess: train a small ReLU stack and save its parameters to an .npz file.

usage: python train_script.py OUT.npz [CHECKPOINT_DIR]   (device count from XLA_FLAGS)
"""

import sys

import jax
import numpy as np

from jsae.sae import relu, stack
from jsae.train import TrainConfig, train


def synthetic(n_saes=6, tokens=2048, d=8, seed=0):
    rng = np.random.default_rng(seed)
    feats = rng.normal(size=(n_saes, 16, d))
    codes = (rng.random((n_saes, tokens, 16)) < 0.1) * rng.uniform(0.5, 2.0, (n_saes, tokens, 16))
    return np.einsum("ntf,nfd->ntd", codes, feats).astype(np.float32)


CONFIG = TrainConfig(
    steps=400,
    batch_size=64,
    lr=[1e-3, 2e-3, 3e-3, 1e-3, 2e-3, 3e-3],
    sparsity_coef=[0.01, 0.02, 0.05, 0.1, 0.2, 0.5],
    chunk_steps=20,
    checkpoint_every=40,
    lr_warmup_steps=20,
    lr_decay="linear",
    sparsity_warmup_steps=50,
)

if __name__ == "__main__":
    out = sys.argv[1]
    ckpt = sys.argv[2] if len(sys.argv) > 2 else None
    data = synthetic()
    sae = stack(relu.init, jax.random.split(jax.random.key(1), 6), 8, 32)
    result = train(sae, data, CONFIG, checkpoint_dir=ckpt, progress=False)
    leaves = jax.tree.leaves((result.sae, result.state.opt_state))
    np.savez(out, *[np.asarray(a) for a in leaves], n_devices=len(jax.devices()), resumed_from=result.resumed_from)
