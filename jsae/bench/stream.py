"""Benchmark: text -> SmolLM2 -> 270 per-head SAEs. Writes ``results/bench_stream.json``.

Case: SmolLM2-135M, every head's ``z`` (270 inputs, d = 64), TopK k = 16, d_sae = 512, batches of 32
contexts x 128 tokens from the offline corpus. Measured in one run, one after another:

(a) ``forward_tokens_per_s``: the forward alone, capturing all 270 heads' z (best of ``--reps``);
(b) ``stream_train_tokens_per_s``: the fused program (forward + shuffle buffer + update of all 270 SAEs),
    steady state: the mean time per exchange after the first two trained ones;
(c) ``cache_train_tokens_per_s``: training the same stack from an on-disk bf16 activation cache written
    from the same contexts, as ``jsae train --cache`` does (``train_from_cache``: bf16 batches to the
    device); the marginal rate between two run lengths, so compilation cancels out.
(d) ``step_tokens_per_s``: the SAE steps alone, R: the same stack trained on rows already on the device
    (the first batch's captured rows; no reading, no forward), marginal as in (c). It bounds the
    others: a stream that runs the forward (rate F) and then the steps reaches at most
    ``1 / (1/F + 1/R)`` (``stream_bound_tokens_per_s``), the cache at most R.
    ``encode_and_select_tokens_per_s``: the part of a step no TopK training can skip, the pre-activations
    of a batch and their top-k (every SAE of the stack, each device its slice; best of ``--reps``).

``--smoke`` checks that the benchmark runs: SmolLM2's first 2 layers (18 heads), tiny SAEs and batches, the
JSON in a new temporary directory (never ``results/``); its timings mean nothing.

``peak_rss_gb`` is this process's peak resident memory. Which TopK path (sparse or dense) each figure
used is recorded. Also a FLOP-count estimate (labelled as one) of a 100M-token run on accelerators.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jsae.io import write_json

PEAKS_TFLOPS = {"TPU v5e (bf16)": 197.0, "H100 SXM (bf16 dense)": 989.0}
ASSUMED_UTILISATION = 0.4


def add_arguments(ap: argparse.ArgumentParser, out: str | None = "results/bench_stream.json") -> None:
    ap.add_argument(
        "--exchanges", type=int, default=10, help="trained batches of contexts in (b) (default: %(default)s)"
    )
    ap.add_argument("--buffer-tokens", type=int, default=8192, help="shuffle buffer per head (default: %(default)s)")
    ap.add_argument("--reps", type=int, default=5, help="timed forwards for (a), best kept (default: %(default)s)")
    ap.add_argument(
        "--cache-steps",
        type=int,
        nargs=2,
        default=(16, 48),
        help="two run lengths (steps) for the marginal rate of (c) (default: %(default)s)",
    )
    ap.add_argument(
        "--smoke",
        action="store_true",
        help="check that the benchmark runs: 2 layers, tiny SAEs and batches, output to a temporary directory",
    )
    ap.add_argument("--out", default=out, help="JSON file to write")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    add_arguments(ap)
    run(ap.parse_args(argv))


def forward_gflop_per_token(model, context: int) -> float:
    """Forward FLOP per token of the layer stack (no unembedding: the stream stops at the last hooked
    layer): 2 per weight of the blocks, plus attention's two products, 4 * context * d_model per layer
    (the mean over a causal context is half of that; counted whole, as kernels compute it)."""
    cfg = model.cfg
    weights = sum(a.size for a in jax.tree.leaves(model.blocks) if a.ndim >= 3)  # [L, in, out] matrices
    return (2 * weights + 4 * context * cfg.d_model * cfg.n_layers) / 1e9


def sae_gflop_per_token(n: int, d: int, m: int, k: int, sparse: bool) -> float:
    """Training FLOP per token of n TopK SAEs: dense 10 d m (encoder and decoder, forward and backward);
    sparse: the encoder forward 2 d m plus the k active rows' decode and gradients, 8 d k."""
    per = 2 * d * m + 8 * d * k if sparse else 10 * d * m
    return n * per / 1e9


def encode_and_select_rate(sae, x, k: int, reps: int) -> float:
    """Tokens per second of the pre-activations ``x W_enc`` of a batch ``x [N, B, d]`` and their top-k
    for every SAE of the stack, spread over the devices as training spreads it (``shard_map`` over the
    SAE mesh, the SAEs of a device one after another)."""
    from jax.sharding import PartitionSpec as P

    from jsae.train import AXIS, pad_leading, padded_size, sae_mesh, shard_leading

    mesh = sae_mesh()
    n_pad = padded_size(x.shape[0], mesh)
    x, sae = shard_leading(pad_leading((x, sae), n_pad), mesh)

    def local(x, sae):
        def one(args):
            s, xx = args
            return jnp.sum(jax.lax.top_k(s.pre_acts(xx), k)[1])

        return jax.lax.map(one, (sae, x))

    run = jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(P(AXIS), P(AXIS)), out_specs=P(AXIS)))
    jax.block_until_ready(run(x, sae))
    best = float("inf")
    for _ in range(max(reps, 1)):
        t = time.perf_counter()
        jax.block_until_ready(run(x, sae))
        best = min(best, time.perf_counter() - t)
    return x.shape[1] / best


SMOKE = {"exchanges": 4, "buffer_tokens": 64, "reps": 1, "cache_steps": (2, 4)}
SMOKE_SIZES = {"layers": 2, "d_sae": 32, "k": 4, "batch_size": 16, "contexts": (2, 16)}


def run(args: argparse.Namespace) -> Path | None:
    """Run the benchmark; returns the JSON file written (None without ``--out``)."""
    from jsae.activations import capture_rows_jit, create, model_for, open_cache, parse_inputs
    from jsae.bench import machine
    from jsae.data import ContextStream, open_text
    from jsae.models import layer_range, load
    from jsae.pipeline import train_from_cache, train_on_model
    from jsae.runtime import prepare_process
    from jsae.sae.registry import init_stack
    from jsae.train import TrainConfig, train

    if args.exchanges < 4:
        raise ValueError(f"--exchanges {args.exchanges}: give at least 4 (the first two compile, the rest are timed)")
    prepare_process()
    model, tok, _ = load("smollm2-135m")
    smoke = bool(getattr(args, "smoke", False))
    m, k, B, (n_contexts, context) = 512, 16, 1024, (32, 128)  # noqa: N806
    if smoke:
        args = argparse.Namespace(**{**vars(args), **SMOKE})
        args.out = str(Path(tempfile.mkdtemp(prefix="jsae-bench-stream-smoke-")) / "bench_stream.json")
        model = layer_range(model, 0, SMOKE_SIZES["layers"])
        m, k, B, (n_contexts, context) = (SMOKE_SIZES[key] for key in ("d_sae", "k", "batch_size", "contexts"))  # noqa: N806
    inputs = parse_inputs(model.cfg, "z")
    n, d = len(inputs), model.cfg.d_head
    contexts = ContextStream(open_text(None), tok, context_size=context, batch_contexts=n_contexts)
    R = contexts.batch_contexts * contexts.context_size
    run_model = model_for(model, inputs)
    reader = contexts.iterator()
    batches = [np.asarray(next(reader)) for _ in range(max(args.exchanges + args.buffer_tokens // R + 2, 12))]

    # (a) the forward alone, capturing every head's z
    t_batch = jnp.asarray(batches[0])
    jax.block_until_ready(capture_rows_jit(run_model, t_batch, inputs, contexts.bos_positions))
    best = float("inf")
    for i in range(args.reps):
        t = time.perf_counter()
        jax.block_until_ready(
            capture_rows_jit(run_model, jnp.asarray(batches[i % len(batches)]), inputs, contexts.bos_positions)
        )
        best = min(best, time.perf_counter() - t)
    forward_rate = R / best
    print(f"(a) forward + capture of {n} heads' z: {forward_rate:,.0f} tokens/s")

    def make_sae(sample=None):
        return init_stack("topk", jax.random.key(0), n, d, m, k=k, data=sample)

    from jsae.sae import use_sparse
    from jsae.sae.topk import TopKSAE

    probe = make_sae()
    if not isinstance(probe, TopKSAE):
        raise TypeError(f"init_stack('topk', ...) built a {type(probe).__name__}, not a TopKSAE")
    sparse = use_sparse(probe.sparse, m, k, d)  # the path TopK's loss takes at this size

    # (b) forward + buffer + 270 SAEs, fused
    stamps: list[float] = []
    cfg = TrainConfig(steps=1, batch_size=B, lr=1e-3, chunk_steps=R // B, normalise_activations=True)
    tokens = (args.exchanges + args.buffer_tokens // R) * R
    train_on_model(
        model,
        contexts,
        inputs,
        make_sae,
        cfg,
        tokens=tokens,
        buffer_tokens=args.buffer_tokens,
        progress=False,
        on_exchange=lambda i: stamps.append(time.perf_counter()),
    )
    trained = np.diff(stamps)[1:]  # stamps follow trained exchanges; the first two include compilation
    stream_rate = R / float(np.mean(trained))
    print(
        f"(b) stream: forward + buffer + {n} SAEs: {stream_rate:,.0f} tokens/s "
        f"({stream_rate / forward_rate:.2f} x the forward alone)"
    )

    # (c) the same stack from an on-disk cache of the same contexts
    root = Path(tempfile.mkdtemp(prefix="jsae-bench-cache-"))
    try:
        n_chunks = len(batches)
        writer = create(
            root / "cache",
            n_rows=n,
            d=d,
            chunk_tokens=R,
            n_chunks=n_chunks,
            dtype="bfloat16",
            config={"bench": "stream"},
        )
        t = time.perf_counter()
        on_device = None  # the first batch's rows, for (d)
        for i, b in enumerate(batches):
            rows = capture_rows_jit(run_model, jnp.asarray(b), inputs, contexts.bos_positions)
            writer.write_chunk(i, rows)
            if i == 0:
                on_device = rows
        writer.finish()
        cache_write_s = time.perf_counter() - t
        cache = open_cache(root / "cache")
        times = []
        for steps in args.cache_steps:
            c = TrainConfig(steps=steps, batch_size=B, lr=1e-3, chunk_steps=min(16, *args.cache_steps))
            t = time.perf_counter()
            train_from_cache(cache, make_sae(), c, progress=False)  # what `jsae train --cache` runs
            times.append(time.perf_counter() - t)
        cache_rate = B * (args.cache_steps[1] - args.cache_steps[0]) / (times[1] - times[0])
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"(c) from the cache: {cache_rate:,.0f} tokens/s ({cache_rate / stream_rate:.2f} x the stream)")

    # (d) the steps alone: the same stack on rows already on the device
    assert on_device is not None  # [N, R, d]
    select_rate = encode_and_select_rate(make_sae(), on_device[:, :B], k, args.reps)
    times = []
    for steps in args.cache_steps:
        c = TrainConfig(steps=steps, batch_size=B, lr=1e-3, chunk_steps=min(16, *args.cache_steps))
        t = time.perf_counter()
        train(make_sae(), on_device, c, progress=False)
        times.append(time.perf_counter() - t)
    del on_device
    step_rate = B * (args.cache_steps[1] - args.cache_steps[0]) / (times[1] - times[0])
    stream_bound = 1.0 / (1.0 / forward_rate + 1.0 / step_rate)
    print(
        f"(d) the SAE steps alone: {step_rate:,.0f} tokens/s; bounds: stream <= {stream_bound:,.0f} "
        f"({stream_bound / forward_rate:.2f} x the forward), cache <= {step_rate:,.0f}"
    )
    print(f"    of which the pre-activations and their top-k alone: {select_rate:,.0f} tokens/s")

    forward_gflop = forward_gflop_per_token(model, contexts.context_size)
    flops_token = forward_gflop + sae_gflop_per_token(n, d, m, k, sparse)
    estimate = {
        name: {
            "seconds_for_100M_tokens": 1e8 * flops_token * 1e9 / (peak * 1e12 * ASSUMED_UTILISATION),
            "peak_tflops": peak,
        }
        for name, peak in PEAKS_TFLOPS.items()
    }
    result = {
        "machine": machine(),
        "case": {
            "model": "smollm2-135m" + (f" (layers 0..{model.cfg.n_layers - 1})" if smoke else ""),
            "smoke": smoke,
            "points": "z",
            "n_saes": n,
            "d_in": d,
            "d_sae": m,
            "k": k,
            "batch_size": B,
            "contexts": [contexts.batch_contexts, contexts.context_size],
            "buffer_tokens": args.buffer_tokens,
            "topk_path": "sparse" if sparse else "dense",
        },
        "n_saes": n,
        "forward_tokens_per_s": forward_rate,
        "stream_train_tokens_per_s": stream_rate,
        "cache_train_tokens_per_s": cache_rate,
        "step_tokens_per_s": step_rate,
        "stream_bound_tokens_per_s": stream_bound,
        "encode_and_select_tokens_per_s": select_rate,
        "cache_write_s": cache_write_s,
        "stream_over_forward": stream_rate / forward_rate,
        "cache_over_stream": cache_rate / stream_rate,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "flop_estimate": {
            "label": "an estimate from FLOP counts, not a measurement",
            "gflop_per_token": flops_token,
            "forward_gflop_per_token": forward_gflop,
            "sae_gflop_per_token": flops_token - forward_gflop,
            "assumed_utilisation": ASSUMED_UTILISATION,
            **estimate,
        },
    }
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        write_json(args.out, result)
        print(f"wrote {args.out}")
        return Path(args.out)
    return None
