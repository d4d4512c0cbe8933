"""Run by test_multihost.py: one process of a multi-host run on CPU (JAX's own ``jax.distributed``, CPU
collectives over gloo). Every process reads its own shard of the text and together they train one stack
of per-head SAEs; process 0 writes the gathered stack.

usage: python multihost_script.py MODEL_DIR TEXT OUT.npz PORT PROCESS_ID PROCESSES CHECKPOINT_DIR
"""

from __future__ import annotations

import sys

import jax

if __name__ == "__main__":
    model_dir, text, out, port, pid, processes, ckpt = sys.argv[1:8]
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(f"localhost:{port}", num_processes=int(processes), process_id=int(pid))

    import numpy as np
    from jax.experimental import multihost_utils
    from multihost_run import run

    from jsae.data import ContextStream, open_text
    from jsae.models import load_hf_dir

    model, tok, _ = load_hf_dir(model_dir)
    contexts = ContextStream(open_text(text), tok, context_size=16, batch_contexts=4, read_threads=0)
    assert contexts.process_count == int(processes) and contexts.process_index == jax.process_index()
    result = run(model, contexts, checkpoint_dir=ckpt)
    leaves = [np.asarray(multihost_utils.process_allgather(a, tiled=True)) for a in jax.tree.leaves(result.sae)]
    if jax.process_index() == 0:
        np.savez(out, *leaves, steps=result.steps, loss=result.history["loss"])
    print(f"process {jax.process_index()} of {jax.process_count()} ok, {len(jax.devices())} devices")
