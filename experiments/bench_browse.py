"""Speed of the feature page: one streamed pass for every head's SAE, against one plain forward pass.

    python experiments/bench_browse.py                 # 270 heads x 32 latents over 100k tokens of SmolLM2-135M
    python experiments/bench_browse.py --tokens 8192   # the same heads and latents over fewer tokens
    python experiments/bench_browse.py --smoke         # a tiny size that checks the script runs (no JSON)

Both sides read the same tokens (contexts of 128 from the offline corpus) in batches of the same size and are
compiled before they are timed (compile times are reported apart):

- forward: ``forward(model, tokens)`` with logits, the plain model pass (``jsae.models.map_batches``), timed
  before and after the page (the mean is the reference, so a drift of the machine's speed moves both sides);
- page: ``jsae.viz.feature_data`` (the forward of ``jsae.activations.capture_rows_and`` capturing every head's
  ``z`` with the attention patterns and the residual stream on one device; every SAE encoded and decoded, the
  running top-k with source attributions, firing counts, histograms and explained variance merged on the
  devices, the stack split over one CPU device per core; direct logit effects), then the JSON and HTML.

The SAEs are random TopK SAEs (d_sae 512, k 16): the cost of the pass does not depend on what they learned.
Prints the ratio page / forward (target: under 2); writes results/bench_browse.json (not with --smoke).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from jsae.runtime import prepare_process

prepare_process()

import equinox as eqx
import jax
import numpy as np

from jsae.activations import parse_inputs
from jsae.bench import machine
from jsae.data import ContextStream, open_text
from jsae.io import write_json
from jsae.models import forward, load, map_batches
from jsae.sae.registry import init_stack
from jsae.viz import feature_data, page_payload, render_html


@eqx.filter_jit
def _plain_forward(model, tokens, lengths):
    logits, _ = forward(model, tokens, lengths=lengths)
    return logits.argmax(-1)  # [B, T]: a small output, so the transfer does not count


def read_tokens(tok, n_tokens: int, context: int) -> np.ndarray:
    stream = ContextStream(open_text(), tok, context_size=context, batch_contexts=32, repeat=True)
    rows, it = [], stream.iterator()
    while sum(len(r) for r in rows) * context < n_tokens:
        rows.append(np.asarray(next(it), np.int32))
    return np.concatenate(rows)[: -(-n_tokens // context)]


def timed(fn, *args, **kwargs):
    t = time.perf_counter()
    out = fn(*args, **kwargs)
    jax.block_until_ready(jax.tree.leaves(out) if not isinstance(out, np.ndarray) else out)
    return out, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=100_000, help="tokens read by both sides (default: %(default)s)")
    ap.add_argument("--heads", default="all", help="heads with an SAE: all, or LAYER.* lists (default: all = 270)")
    ap.add_argument("--latents", type=int, default=32, help="latents per SAE on the page (default: %(default)s)")
    ap.add_argument("--context", type=int, default=128)
    ap.add_argument("--batch-contexts", type=int, default=8, help="contexts per forward (default: %(default)s)")
    ap.add_argument("--smoke", action="store_true", help="tiny size (2 layers' heads, 512 tokens), no JSON")
    ap.add_argument("--out", default="results/bench_browse.json")
    args = ap.parse_args()
    if args.smoke:
        args.tokens, args.heads, args.latents, args.context = 512, "0.*,1.*", 4, 64

    model, tok, _ = load("smollm2-135m")
    inputs = parse_inputs(model.cfg, "z", heads=args.heads)
    sae = init_stack("topk", jax.random.key(0), len(inputs), model.cfg.d_head, 512, k=16)
    tokens = read_tokens(tok, args.tokens, args.context)
    lengths = np.full(len(tokens), tokens.shape[1], np.int32)
    n_tokens = int(lengths.sum())
    batch = dict(batch_size=args.batch_contexts, pad_multiple=tokens.shape[1])
    warm = slice(0, 2 * args.batch_contexts)  # two batches: compiles every program of the full run
    ins = [i.to_json() for i in inputs]

    def page_pass(rows):
        return feature_data(model, sae, ins, rows, latents=args.latents, k=10, batch_size=args.batch_contexts)

    _, fwd_compile = timed(map_batches, _plain_forward, model, tokens[warm], lengths[warm], **batch)
    _, page_compile = timed(page_pass, tokens[warm])
    # the forward is timed before and after the page (its mean is the reference), so a machine whose speed
    # drifts during the run moves both sides alike
    _, fwd_before = timed(map_batches, _plain_forward, model, tokens, lengths, **batch)
    data, page = timed(page_pass, tokens)
    t = time.perf_counter()
    html = render_html(
        page_payload(data, tokens, lengths, lambda i: tok.decode([i]), title="bench", info={"model": "smollm2-135m"})
    )
    render = time.perf_counter() - t
    _, fwd_after = timed(map_batches, _plain_forward, model, tokens, lengths, **batch)
    fwd = (fwd_before + fwd_after) / 2
    ratio = (page + render) / fwd
    result = {
        "heads": len(inputs),
        "latents": args.latents,
        "tokens": n_tokens,
        "context": tokens.shape[1],
        "batch_contexts": args.batch_contexts,
        "forward_s": fwd,
        "forward_before_after_s": [fwd_before, fwd_after],
        "page_pass_s": page,
        "render_s": render,
        "ratio_page_to_forward": ratio,
        "forward_compile_s": fwd_compile,
        "page_compile_s": page_compile,
        "html_mb": len(html.encode()) / 1e6,
        "backend": jax.default_backend(),
        "device": str(jax.devices()[0].device_kind),
        "machine": machine(),
    }
    print(
        f"{len(inputs)} heads x {args.latents} latents over {n_tokens:,} tokens ({jax.default_backend()}): "
        f"forward {fwd:.2f} s (mean of {fwd_before:.2f} before and {fwd_after:.2f} after), "
        f"page pass {page:.2f} s + render {render:.2f} s -> ratio {ratio:.2f} (target < 2); "
        f"HTML {result['html_mb']:.1f} MB"
    )
    if not args.smoke:
        print(f"wrote {write_json(Path(args.out), result)}")


if __name__ == "__main__":
    main()
