"""``jsae train``: a stack of SAEs from a model streamed over text, from an activation cache, or from a .npy file.

- ``jsae train --model smollm2-135m`` (defaults: every head's ``z``, the offline corpus, 2M tokens, TopK
  k=16, d_sae=512): the forward, the shuffle buffer and the update of all SAEs run fused on the device.
- ``jsae train --cache DIR``: SAEs on an activation cache written by ``jsae cache`` (sweeps: one model pass).
- ``jsae train X.npy``: activations saved with numpy, ``[T, d]`` (shared) or ``[N, T, d]`` (one SAE each).

Every mode writes a run directory that ``jsae eval --sae RUN_DIR`` and ``jsae.io.load_saelens`` read.
"""

from __future__ import annotations

import time
from pathlib import Path

import jax
import numpy as np

from jsae.commands._common import add_train_options, metric_table, plot_l0_vs_ev, stack_and_config
from jsae.io import new_run_dir, write_json

STREAM_BATCH, ARRAY_BATCH = 1024, 256


def parse_tokens(s: str) -> int:
    """``"2M"`` -> 2_000_000, ``"500k"`` -> 500_000, ``"1e6"`` -> 1_000_000."""
    text = str(s).strip().lower().replace("_", "")
    scale = {"k": 10**3, "m": 10**6, "g": 10**9, "b": 10**9}.get(text[-1:], 1)
    try:
        value = float(text[:-1] if scale > 1 else text) * scale
    except ValueError:
        raise ValueError(f"cannot read a token count from {s!r}; write e.g. 2M, 500k or 100000") from None
    if value < 1:
        raise ValueError(f"the token count must be positive, got {s!r}")
    return int(value)


def add_model_options(p, *, tokens: str) -> None:
    """Options that pick a model, its hook points and the text it reads (shared with ``jsae cache``)."""
    p.add_argument("--model", default=None, help="model name or path, e.g. smollm2-135m (streams text through it)")
    p.add_argument(
        "--points",
        default="z",
        help="hook point(s), comma-separated: z, result, resid_pre, resid_mid, "
        "resid_post, attn_out, mlp_out (one stack has one width: z alone, or d_model points) "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--heads", default="all", help="heads for z/result: all, L.H pairs like 3.5,4.2, or L.* (default: %(default)s)"
    )
    p.add_argument(
        "--layers", default="all", help="layers for residual points: all or a list like 3,6,9 (default: %(default)s)"
    )
    p.add_argument(
        "--text",
        default=None,
        help="a .txt/.jsonl/.parquet file or a folder of them "
        "(default: the offline corpus shipped with Python: its documentation and stdlib docstrings)",
    )
    p.add_argument(
        "--dataset",
        default=None,
        help="a Hugging Face dataset name or saved-dataset folder instead of --text (needs the `datasets` package)",
    )
    p.add_argument("--split", default="train", help="dataset split (default: %(default)s)")
    p.add_argument("--field", default="text", help="text field of .jsonl/.parquet/dataset rows (default: %(default)s)")
    p.add_argument("--tokens", default=tokens, help="text tokens to read, e.g. 2M, 500k (default: %(default)s)")
    p.add_argument("--context", type=int, default=128, help="text tokens per context (default: %(default)s)")
    p.add_argument("--batch-contexts", type=int, default=32, help="contexts per forward pass (default: %(default)s)")
    p.add_argument("--repeat", action="store_true", help="read the text again from the start when it runs out")


def register(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train a stack of SAEs: from a model over text, an activation cache or a .npy",
        description=__doc__,
        formatter_class=_raw(),
    )
    p.add_argument(
        "data", nargs="?", default=None, help="a .npy array [T, d] or [N, T, d] (instead of --model/--cache)"
    )
    p.add_argument(
        "--n-saes",
        type=int,
        default=1,
        help="SAEs to train on shared [T, d] data (default: %(default)s; ignored for [N, T, d])",
    )
    p.add_argument("--cache", default=None, help="train on an activation cache written by `jsae cache`")
    add_model_options(p, tokens="2M")
    p.add_argument(
        "--buffer-tokens",
        type=int,
        default=16384,
        help="shuffle buffer per SAE input, in tokens; it "
        "mixes activations across contexts (0: no shuffle) (default: %(default)s)",
    )
    p.add_argument(
        "--buffer-dtype",
        default="float32",
        choices=("float32", "bfloat16"),
        help="dtype of the shuffle buffer (default: %(default)s)",
    )
    add_train_options(p, steps=None, d_sae=512, k=16, batch=None)


def _raw():
    import argparse

    return argparse.RawDescriptionHelpFormatter


def run(args) -> None:
    modes = [m for m, on in (("a .npy file", args.data), ("--model", args.model), ("--cache", args.cache)) if on]
    if len(modes) != 1:
        got = f"; got {' and '.join(modes)}" if modes else ""
        raise ValueError(
            f"give exactly one of: a .npy file, --model NAME (stream text through a model) or --cache DIR{got}"
        )
    if args.model:
        return _stream(args)
    if args.cache:
        return _from_cache(args)
    return _from_npy(args)


def _stream(args) -> None:
    from jsae.activations import input_width, parse_inputs
    from jsae.models import load
    from jsae.pipeline import available_bytes, check_fits, estimate, n_params, plan, train_on_model

    model, tok, meta = load(args.model)
    inputs = parse_inputs(model.cfg, args.points, heads=args.heads, layers=args.layers)
    contexts = open_contexts(args, tok)
    args.batch = args.batch or STREAM_BATCH
    tokens = parse_tokens(args.tokens)
    pl = plan(tokens, contexts, args.batch, args.buffer_tokens)
    if pl.buffer_tokens < args.buffer_tokens:
        print(
            f"jsae train: the shuffle buffer holds {pl.buffer_tokens:,} tokens instead of {args.buffer_tokens:,}: "
            f"{pl.tokens:,} tokens cannot fill more (ask for more --tokens to shuffle across more contexts)"
        )
    args.steps = pl.steps
    d_in = input_width(model.cfg, inputs[0].point)
    buffer_dtype = _dtype(args.buffer_dtype)
    check_fits(
        estimate(
            model.cfg,
            n_params=n_params(model),
            n_saes=len(inputs),
            d_in=d_in,
            d_sae=args.d_sae,
            batch_size=args.batch,
            buffer_tokens=pl.buffer_tokens,
            batch_contexts=contexts.batch_contexts,
            context_len=contexts.bos_positions + contexts.context_size,
            buffer_itemsize=np.dtype(buffer_dtype).itemsize,
        ),
        available_bytes(),
    )
    template, cfg = stack_and_config(args, jax.random.key(args.seed), len(inputs), d_in)
    cfg = _per_exchange(cfg, pl.steps_per_exchange, args.checkpoint)

    def init(sample):
        return stack_and_config(args, jax.random.key(args.seed), len(inputs), d_in, sample=sample)[0]

    print(
        f"jsae train: {len(inputs)} {args.arch} SAEs on {args.points} of {meta['name']}, {pl.tokens:,} tokens "
        f"({pl.steps} steps of {args.batch}), buffer {pl.buffer_tokens:,} tokens"
    )
    t0 = time.perf_counter()
    result = train_on_model(
        model,
        contexts,
        inputs,
        init,
        cfg,
        tokens=tokens,
        buffer_tokens=args.buffer_tokens,
        buffer_dtype=buffer_dtype,
        checkpoint_dir=args.checkpoint,
    )
    seconds = time.perf_counter() - t0
    _finish(
        args,
        result,
        cfg,
        inputs=[i.to_json() for i in inputs],
        model_name=args.model,
        seconds=seconds,
        extra={
            "text": contexts.describe(),
            "tokens": pl.tokens,
            "buffer_tokens": pl.buffer_tokens,
            "model_tokens_per_s": result.tokens_per_s,
        },
    )


def _from_cache(args) -> None:
    from jsae.activations import open_cache
    from jsae.pipeline import cached_inputs, train_from_cache

    cache = open_cache(args.cache)
    inputs = cached_inputs(cache)
    args.batch = args.batch or STREAM_BATCH
    args.steps = args.steps or max(1, cache.n_tokens // args.batch)
    template, cfg = stack_and_config(args, jax.random.key(args.seed), cache.n_rows, cache.d)

    def init(sample):
        return stack_and_config(args, jax.random.key(args.seed), cache.n_rows, cache.d, sample=sample)[0]

    t0 = time.perf_counter()
    result = train_from_cache(cache, init, cfg, checkpoint_dir=args.checkpoint)
    _finish(
        args,
        result,
        cfg,
        inputs=[i.to_json() for i in inputs] or None,
        model_name=cache.config.get("model"),
        seconds=time.perf_counter() - t0,
        extra={"cache": str(Path(args.cache).absolute())},
    )


def _from_npy(args) -> None:
    from jsae.train import train

    path = Path(args.data)
    if not path.is_file():
        raise FileNotFoundError(f"no activation file at {path}; save one with numpy.save([T, d] or [N, T, d])")
    x = np.load(path, mmap_mode="r")
    if x.ndim not in (2, 3):
        raise ValueError(f"{path} holds an array of shape {x.shape}; expected [T, d] or [N, T, d]")
    n = x.shape[0] if x.ndim == 3 else args.n_saes
    args.batch = args.batch or ARRAY_BATCH
    args.steps = args.steps or 2000
    sae, cfg = stack_and_config(args, jax.random.key(args.seed), n, x.shape[-1])
    t0 = time.perf_counter()
    result = train(sae, np.asarray(x, np.float32), cfg, checkpoint_dir=args.checkpoint)
    _finish(args, result, cfg, inputs=None, model_name=None, seconds=time.perf_counter() - t0, extra={})


def open_contexts(args, tokenizer):
    """The batches of token contexts that ``--text``/``--dataset`` and the context options ask for."""
    from jsae.data import ContextStream, open_text

    if tokenizer is None:
        raise ValueError(
            f"model {args.model!r} has no tokenizer; streaming text needs one (a GGUF file or a "
            "directory with tokenizer.json)"
        )
    if args.text and args.dataset:
        raise ValueError("give --text or --dataset, not both")
    source = open_text(args.text, field=args.field, dataset=args.dataset, split=args.split)
    return ContextStream(
        source, tokenizer, context_size=args.context, batch_contexts=args.batch_contexts, repeat=args.repeat
    )


def _finish(args, result, cfg, *, inputs, model_name, seconds: float, extra: dict) -> None:
    from jsae.io import UNKNOWN_INPUT, save_run

    print(metric_table(result.metrics))
    run = new_run_dir(args.out, "train")
    config = {"command": "train", **vars(args), "train_config": cfg.to_json(), **extra}
    # activations from a .npy file: where they came from is unknown (`jsae eval` then asks for --layer/--hook)
    save_run(
        run,
        result.sae,
        inputs=inputs or UNKNOWN_INPUT,
        model_name=model_name,
        history=result.history,
        metrics=result.metrics,
        config=config,
    )
    write_json(
        run / "results.json",
        {"per_sae": result.metrics, "seconds": seconds, "steps": result.steps, "resumed_from": result.resumed_from},
    )
    plot_l0_vs_ev(result.metrics, run / "l0_vs_explained_variance.png", f"{result.sae.W_enc.shape[0]} {args.arch} SAEs")
    hint = "" if inputs else " --layer L --hook POINT --model MODEL"
    print(f"{seconds:.0f} s; results in {run}  (next: jsae eval --sae {run}{hint})")


def _dtype(name: str):
    import jax.numpy as jnp

    return {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[name]


def _per_exchange(cfg, steps_per_exchange: int, checkpoint: str | None):
    """Chunks of one exchange each; checkpoints about every 200 steps (whole exchanges)."""
    import dataclasses

    every = max(1, 200 // steps_per_exchange) * steps_per_exchange if checkpoint else 0
    return dataclasses.replace(cfg, chunk_steps=steps_per_exchange, checkpoint_every=every)
