"""Run by tests in a subprocess: stream TOKENS tokens of a text file through a tiny model into 8 SAEs on every
head's ``result`` (d_model wide) and print the process's peak RSS, as JSON.

usage: python rss_script.py MODEL_DIR TEXT TOKENS
"""

import json
import resource
import sys

import jax

from jsae.activations import parse_inputs
from jsae.data import ContextStream, open_text
from jsae.models import load_hf_dir
from jsae.pipeline import train_on_model
from jsae.sae.registry import init_stack
from jsae.train import TrainConfig

if __name__ == "__main__":
    model_dir, text, tokens = sys.argv[1], sys.argv[2], int(sys.argv[3])
    model, tok, _ = load_hf_dir(model_dir)
    contexts = ContextStream(open_text(text), tok, context_size=16, batch_contexts=32)
    inputs = parse_inputs(model.cfg, "result")
    sae = init_stack("topk", jax.random.key(0), len(inputs), model.cfg.d_model, 32, k=4)
    cfg = TrainConfig(steps=1, batch_size=256, lr=1e-3)
    r = train_on_model(model, contexts, inputs, sae, cfg, tokens=tokens, buffer_tokens=1024, progress=False)
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # Linux: kilobytes
    print(json.dumps({"peak_rss_mb": peak_kb / 1024, "steps": r.steps, "tokens": r.steps * cfg.batch_size}))
