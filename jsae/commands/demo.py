"""``jsae demo``: the main job, offline. Per-head SAEs for every attention head of SmolLM2-135M (270) trained
at once, the IOI circuit discovered from their discrete codes, ranked heads, AUC against activation
patching and timings (``jsae circuits`` with the demo's methods). ``--synthetic`` instead trains many SAEs
on synthetic data whose true features are known."""

from __future__ import annotations

import time

import jax
import numpy as np

from jsae.analysis import mean_max_cosine
from jsae.commands._common import add_train_options, metric_table, plot_l0_vs_ev, stack_and_config
from jsae.io import new_run_dir, write_json
from jsae.synthetic import sparse_dictionary_data
from jsae.train import train

DEMO_METHODS = ("sae_per_head_paired", "sae_per_head", "sae_shared", "attribution_patching", "random")


def register(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="the main job: per-head SAEs on all 270 SmolLM2 heads find the IOI circuit",
        description="Train one SAE per attention head of SmolLM2-135M (all 270 at once), discover "
        "the IOI circuit from their discrete codes and grade it against activation patching of "
        "every head, with attribution patching, the paper's shared SAE and random as baselines "
        "(the same as `jsae circuits --methods " + " ".join(DEMO_METHODS) + "`). With "
        "--synthetic: train N SAEs at once (one per synthetic 'head', each with its own "
        "ground-truth dictionary) and report L0, explained variance, dead latents and how "
        "well each recovered its true features.",
    )
    p.add_argument("--synthetic", action="store_true", help="the synthetic-data demo instead of the circuit job")
    p.add_argument(
        "--n-saes", type=int, default=144, help="--synthetic: number of SAEs / synthetic heads (default: %(default)s)"
    )
    p.add_argument("--d-in", type=int, default=64, help="--synthetic: activation width (default: %(default)s)")
    p.add_argument(
        "--n-features", type=int, default=96, help="--synthetic: true features per head (default: %(default)s)"
    )
    p.add_argument("--tokens", type=int, default=8192, help="--synthetic: tokens per head (default: %(default)s)")
    add_train_options(p, steps=1500, d_sae=192)


def run(args) -> None:
    if args.synthetic:
        synthetic_demo(args)
    else:
        circuit_demo(args)


def circuit_demo(args) -> None:
    """``jsae circuits --model smollm2-135m --task ioi`` with the demo's methods and the given seed/out."""
    import argparse

    from jsae.commands import circuits

    parser = argparse.ArgumentParser(prog="jsae")
    circuits.register(parser.add_subparsers())
    circuits.run(
        parser.parse_args(
            [
                "circuits",
                "--model",
                "smollm2-135m",
                "--task",
                "ioi",
                "--methods",
                *DEMO_METHODS,
                "--seed",
                str(args.seed),
                "--out",
                args.out,
            ]
        )
    )


def synthetic_demo(args) -> None:
    key_data, key_sae = jax.random.split(jax.random.key(args.seed))
    x, feats = sparse_dictionary_data(key_data, args.n_saes, args.d_in, args.n_features, args.tokens)
    sae, cfg = stack_and_config(args, key_sae, args.n_saes, args.d_in)
    if sae.W_enc.shape[0] != args.n_saes:
        raise ValueError("give one --sparsity value per SAE or a single one")
    run = new_run_dir(args.out, "demo")
    print(
        f"jsae demo: {args.n_saes} {args.arch} SAEs (d_in {args.d_in}, d_sae {args.d_sae}) trained at once "
        f"on {args.tokens} synthetic tokens each, {args.steps} steps of {args.batch} tokens on "
        f"{jax.device_count()} {jax.devices()[0].platform} device(s)"
    )
    t0 = time.perf_counter()
    result = train(sae, x, cfg, checkpoint_dir=args.checkpoint)
    recovery = np.asarray(mean_max_cosine(feats, result.sae.W_dec))
    print(metric_table(result.metrics, {"recovery": recovery}))
    summary = {
        "n_saes": args.n_saes,
        "seconds": time.perf_counter() - t0,
        "sae_tokens_per_s": result.tokens_per_s * args.n_saes,
        "mean_l0": float(np.mean(result.metrics["l0"])),
        "mean_explained_variance": float(np.mean(result.metrics["explained_variance"])),
        "mean_recovery": float(np.mean(recovery)),
        "per_sae": {**{k: v for k, v in result.metrics.items()}, "recovery": recovery},
    }
    write_json(run / "config.json", {"command": "demo", **vars(args), "train_config": cfg.to_json()})
    write_json(run / "results.json", summary)
    plot_l0_vs_ev(result.metrics, run / "l0_vs_explained_variance.png", f"{args.n_saes} {args.arch} SAEs")
    print(
        f"recovered true features: mean max cosine {summary['mean_recovery']:.3f} "
        f"(1.0 = every true feature has a matching latent)"
    )
    print(f"{summary['seconds']:.1f} s in all, {summary['sae_tokens_per_s']:,.0f} SAE-tokens/s; results in {run}")
