"""Run by tests in a subprocess: stream a text file through a tiny model; its z goes through the shuffle
buffer into 8 TopK SAEs.

usage: python stream_script.py MODEL_DIR TEXT OUT.npz CHECKPOINT_DIR [KILL_AFTER_EXCHANGE]
With KILL_AFTER_EXCHANGE the process SIGKILLs itself right after that exchange (a checkpoint is taken
every 2 exchanges), as a crash would.
"""

import os
import signal
import sys

import jax
import numpy as np

from jsae.activations import parse_inputs
from jsae.data import ContextStream, open_text
from jsae.models import load_hf_dir
from jsae.pipeline import train_on_model
from jsae.sae.registry import init_stack
from jsae.train import TrainConfig

if __name__ == "__main__":
    model_dir, text, out, ckpt = sys.argv[1:5]
    kill_after = int(sys.argv[5]) if len(sys.argv) > 5 else None
    model, tok, _ = load_hf_dir(model_dir)
    contexts = ContextStream(open_text(text), tok, context_size=16, batch_contexts=8)
    inputs = parse_inputs(model.cfg, "z")

    def init(sample):
        return init_stack("topk", jax.random.key(4), len(inputs), model.cfg.d_head, 32, k=4, data=sample)

    def maybe_die(exchange: int) -> None:
        if exchange == kill_after:
            os.kill(os.getpid(), signal.SIGKILL)

    cfg = TrainConfig(steps=1, batch_size=64, lr=3e-3, checkpoint_every=4, chunk_steps=2, normalise_activations=True)
    r = train_on_model(
        model,
        contexts,
        inputs,
        init,
        cfg,
        tokens=96 * 16,
        buffer_tokens=256,
        checkpoint_dir=ckpt,
        progress=False,
        on_exchange=maybe_die,
    )
    np.savez(
        out, *[np.asarray(a) for a in jax.tree.leaves((r.sae, r.state))], resumed_from=r.resumed_from, steps=r.steps
    )
