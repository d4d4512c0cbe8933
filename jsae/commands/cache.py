"""``jsae cache``: write the activations of chosen hook points to disk once, for sweeps (``jsae train --cache``)."""

from __future__ import annotations

import time

from jsae.commands.train import add_model_options, open_contexts, parse_tokens


def register(sub) -> None:
    p = sub.add_parser(
        "cache",
        help="write a model's activations at chosen hook points to an on-disk cache",
        description="One model pass over the text writes the activations of every chosen hook "
        "point as a chunked, checksummed zarr array; `jsae train --cache DIR` then trains any number "
        "of stacks from it, shuffled across chunks. An interrupted run resumes where it stopped "
        "when run again with the same arguments.",
    )
    p.add_argument("out", help="cache folder to write (or to resume)")
    add_model_options(p, tokens="2M")
    p.add_argument(
        "--dtype",
        default="bfloat16",
        choices=("float32", "bfloat16"),
        help="on-disk dtype; bfloat16 halves the disk, reads give float32 (default: %(default)s)",
    )


def run(args) -> None:
    from jsae.activations import parse_inputs
    from jsae.models import load
    from jsae.pipeline import write_cache

    if not args.model:
        raise ValueError("jsae cache needs --model NAME (e.g. smollm2-135m)")
    model, tok, meta = load(args.model)
    inputs = parse_inputs(model.cfg, args.points, heads=args.heads, layers=args.layers)
    contexts = open_contexts(args, tok)
    t0 = time.perf_counter()
    cache = write_cache(
        model,
        contexts,
        inputs,
        args.out,
        tokens=parse_tokens(args.tokens),
        dtype=args.dtype,
        config={"model": args.model, "points": args.points, "heads": args.heads, "layers": args.layers},
    )
    gb = cache.n_rows * cache.n_tokens * cache.d * (2 if args.dtype == "bfloat16" else 4) / 2**30
    print(
        f"jsae cache: {cache.n_tokens:,} tokens x {cache.n_rows} inputs x d={cache.d} ({gb:.2f} GB, {args.dtype}) "
        f"in {time.perf_counter() - t0:.0f} s -> {args.out}\n(next: jsae train --cache {args.out})"
    )
