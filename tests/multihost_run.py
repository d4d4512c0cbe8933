"""The run test_multihost.py makes twice: on 2 processes (multihost_script.py) and in one process that
reads both processes' shards of the text in the same order."""

from __future__ import annotations

import jax

from jsae.activations import parse_inputs
from jsae.pipeline import train_on_model
from jsae.sae.registry import init_stack
from jsae.train import TrainConfig

TOKENS = 2 * 4 * 16 * 6  # 2 processes x 4 contexts x 16 tokens per exchange, 6 exchanges


def run(model, contexts, checkpoint_dir=None):
    inputs = parse_inputs(model.cfg, "z")  # 2 layers x 4 heads: 8 SAEs
    sae = init_stack("topk", jax.random.key(0), len(inputs), model.cfg.d_head, 32, k=4)
    cfg = TrainConfig(steps=1, batch_size=32, lr=3e-3, compute_dtype="float32", normalise_activations=True)
    return train_on_model(
        model,
        contexts,
        inputs,
        sae,
        cfg,
        tokens=TOKENS,
        buffer_tokens=0,
        progress=False,
        fused=True,
        checkpoint_dir=checkpoint_dir,
    )
