"""Two processes on localhost (jax.distributed, CPU devices) each read their own shard of the text and
together train one stack of SAEs; it equals the stack one process trains on the same text read in the
same order (both shards' contexts side by side in every exchange)."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np

from jsae.data import ContextStream, open_text
from jsae.models import load_hf_dir
from jsae.train._checkpoint import Checkpointer

HERE = Path(__file__).parent


class BothShards:
    """One process's view of a 2-process run: process 0's batch of contexts, then process 1's."""

    def __init__(self, streams):
        self.streams = streams
        s = streams[0]
        self.bos_positions, self.context_size = s.bos_positions, s.context_size
        self.batch_contexts = len(streams) * s.batch_contexts

    def iterator(self, state=None):
        its = [s.iterator(None if state is None else state[i]) for i, s in enumerate(self.streams)]

        class It:
            def __iter__(self):
                return self

            def __next__(self):
                return np.concatenate([next(it) for it in its])

            def get_state(self):
                return [it.get_state() for it in its]

        return It()

    def describe(self):
        return {"kind": "both shards"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _text(path: Path, tok, n_docs: int = 24) -> Path:
    words = [w for w in tok.backend.get_vocab() if not w.startswith(("[", "<"))]
    rng = np.random.default_rng(0)
    path.write_text("".join(json.dumps({"text": " ".join(rng.choice(words, 40))}) + "\n" for _ in range(n_docs)))
    return path


def test_two_processes_train_the_single_process_stack(tiny_llama_tok, tmp_path):
    sys.path.insert(0, str(HERE))
    from multihost_run import run

    model, tok, _ = load_hf_dir(tiny_llama_tok[0])
    text = _text(tmp_path / "docs.jsonl", tok)
    out, port, ckpt = tmp_path / "stack.npz", _free_port(), tmp_path / "ckpt"
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu"}
    env["PYTHONPATH"] = os.pathsep.join([str(HERE.parent), str(HERE), env.get("PYTHONPATH", "")])
    script = str(HERE / "multihost_script.py")
    procs = [
        subprocess.Popen(
            [sys.executable, script, str(tiny_llama_tok[0]), str(text), str(out), str(port), str(i), "2", str(ckpt)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    try:
        # meanwhile, one process on the same text: both shards' contexts in every exchange, process 0's first
        shards = [
            ContextStream(
                open_text(text),
                tok,
                context_size=16,
                batch_contexts=4,
                process_index=i,
                process_count=2,
                read_threads=0,
            )
            for i in range(2)
        ]
        ref = run(model, BothShards(shards))
        done = [p.communicate(timeout=300) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (stdout, stderr) in zip(procs, done, strict=True):
        assert p.returncode == 0, stderr[-3000:]
        assert "of 2 ok, 4 devices" in stdout, stdout
    got = np.load(out)
    assert int(got["steps"]) == ref.steps
    np.testing.assert_allclose(got["loss"], ref.history["loss"], rtol=1e-4, atol=1e-6)
    leaves = jax.tree.leaves(ref.sae)
    for i, a in enumerate(leaves):
        np.testing.assert_allclose(got[f"arr_{i}"], np.asarray(a), rtol=1e-4, atol=1e-6)
    # the checkpoint holds each process's own reader position: after 6 batches of its own shard
    meta = Checkpointer(ckpt).read_meta(ref.steps)
    readers = meta["extra"]["source"]["readers"]
    for shard, saved in zip(shards, readers, strict=True):
        it = shard.iterator()
        for _ in range(6):
            next(it)
        assert saved == it.get_state()
    assert readers[0] != readers[1]
