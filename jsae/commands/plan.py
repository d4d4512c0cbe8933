"""``jsae plan``: will a streaming run fit, and about how fast could it go? Reads only the model's config.

Prints, per device, the memory of the weights (sharded by heads over a multi-chip preset), one forward's
activations, the SAEs' parameters with Adam, one SAE step and the shuffle buffer; the largest batch of
contexts that fits; and a FLOP-count speed estimate (labelled as one). A run that cannot fit is refused
(exit status 2) with how much it is over and what to change. Nothing is written.

    jsae plan smollm2-135m --device tpu-v5e-1
    jsae plan path/to/Llama-3.1-8B/config.json --device tpu-v5e-8 --weights-dtype bfloat16
"""

from __future__ import annotations

from jsae.plan import DTYPES, PRESETS


def register(sub) -> None:
    import argparse

    from jsae.sae import registry

    p = sub.add_parser(
        "plan",
        help="per-device memory, largest batch and a speed estimate of a streaming run (no weights read)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", help="smollm2-135m, a .gguf file, a config.json or a checkpoint directory holding one")
    p.add_argument(
        "--device",
        default="local",
        help=f"device preset(s), comma-separated: {', '.join(PRESETS)} (local: this machine's first device) "
        "(default: %(default)s)",
    )
    p.add_argument("--points", default="z", help="hook point(s), as jsae train (default: %(default)s)")
    p.add_argument("--heads", default="all", help="heads for z/result, as jsae train (default: %(default)s)")
    p.add_argument("--layers", default="all", help="layers for residual points, as jsae train (default: %(default)s)")
    p.add_argument("--arch", default="topk", choices=registry.names(), help="SAE architecture (default: %(default)s)")
    p.add_argument("--d-sae", type=int, default=512, help="latents per SAE (default: %(default)s)")
    p.add_argument("--k", type=int, default=16, help="active latents per token (default: %(default)s)")
    p.add_argument("--batch", type=int, default=1024, help="tokens per SAE per step (default: %(default)s)")
    p.add_argument("--batch-contexts", type=int, default=32, help="contexts per forward (default: %(default)s)")
    p.add_argument("--context", type=int, default=128, help="tokens per context (default: %(default)s)")
    p.add_argument("--buffer-tokens", type=int, default=16384, help="shuffle buffer per SAE (default: %(default)s)")
    for what, default in (("weights", "float32"), ("buffer", "float32"), ("activation", "float32")):
        p.add_argument(
            f"--{what}-dtype", default=default, choices=tuple(DTYPES), help=f"{what} dtype (default: %(default)s)"
        )
    p.add_argument(
        "--utilisation",
        type=float,
        default=0.4,
        help="fraction of the nominal peak FLOP/s the speed estimate assumes (default: %(default)s)",
    )


def run(args) -> None:
    from jsae.plan import device, plan_run, read_model_config

    cfg, notes = read_model_config(args.model)
    plans = [
        plan_run(
            cfg,
            device(name.strip()),
            points=args.points,
            heads=args.heads,
            layers=args.layers,
            d_sae=args.d_sae,
            arch=args.arch,
            k=args.k,
            batch=args.batch,
            batch_contexts=args.batch_contexts,
            context=args.context,
            buffer_tokens=args.buffer_tokens,
            weights_dtype=args.weights_dtype,
            buffer_dtype=args.buffer_dtype,
            activation_dtype=args.activation_dtype,
            utilisation=args.utilisation,
            model=str(args.model),
            notes=tuple(notes),
        )
        for name in args.device.split(",")
        if name.strip()
    ]
    print("\n\n".join(p.describe() for p in plans))
    refused = [p for p in plans if not p.fits]
    if refused:
        raise ValueError("; ".join(p.refusal() for p in refused))
