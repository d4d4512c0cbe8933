"""Benchmark: spliced-CE evaluation of N SAEs on SmolLM2 -- vectorised vs one at a time.

    python experiments/bench_evals.py            # -> results/bench_evals.json (a few minutes on 2 CPU cores)
    python experiments/bench_evals.py --smoke    # checks that it runs: the model's first 2 layers, 2 tiny SAEs,
                                                 # 1 repetition, JSON in a temporary directory; timings mean nothing
    jsae bench evals                             # the same, into a run directory

Three ways to get CE/KL recovered for N TopK SAEs at one hook (resid_post of a middle layer):

- ``vectorised``: one call of ``spliced_losses`` on the stack: the clean forward and the residual entering
  the hook's layer are computed once per token batch; the layers from the hook on run vmapped over SAEs.
- ``vectorised_unbatched``: the same single call with the SAE chunk forced to 1 (``lax.map`` runs the
  SAEs one after another inside one program): separates the gain of sharing the clean pass from the
  gain of vmapping.
- ``one_at_a_time``: ``spliced_losses`` called N times on a stack of one (the clean pass and the
  zero-ablation baseline recomputed for each SAE, as a per-SAE evaluation loop does).
- ``full_forward_loop``: the plain approach: for each SAE, one full-model forward with the SAE spliced in
  (``jsae.models.edit``), CE from its logits; no KL, no ablation baseline (a lower bound on what a
  per-SAE loop of full forwards costs).

Times exclude compilation (each path is run once to warm up; compile+first-run seconds are reported).
All paths must agree on CE with the SAE spliced in (checked, reported as max_abs_ce_difference).
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import cast

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from jsae.analysis import spliced_losses
from jsae.data import SAMPLE_TEXT
from jsae.io import write_json
from jsae.models import edit, forward, layer_range, load
from jsae.plots import grouped_bars
from jsae.runtime import prepare_process
from jsae.sae import index
from jsae.sae.registry import init_stack

N_SAES = 8
D_SAE = 2304  # 4 x d_model
K = 32
LAYER = 15
SEQUENCES, CONTEXT, BATCH = 8, 64, 4
REPEATS = 2
FULL = {
    "n_saes": N_SAES, "d_sae": D_SAE, "k": K, "layer": LAYER, "sequences": SEQUENCES, "context": CONTEXT,
    "batch": BATCH, "repeats": REPEATS,
}  # fmt: skip
SMOKE = {"n_saes": 2, "d_sae": 64, "k": 4, "layer": 1, "sequences": 2, "context": 16, "batch": 2, "repeats": 1}


def timed(fn, repeats: int = REPEATS) -> tuple[float, float, object]:
    """(first call incl. compile, best of ``repeats`` warm calls, result)."""
    t0 = time.perf_counter()
    out = fn()
    first = time.perf_counter() - t0
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return first, best, out


def add_arguments(ap: argparse.ArgumentParser, out: str = "results/bench_evals.json") -> None:
    ap.add_argument(
        "--smoke",
        action="store_true",
        help="check that the benchmark runs: the model's first 2 layers, 2 tiny SAEs, 1 repetition, "
        "output to a temporary directory (its timings mean nothing)",
    )
    ap.add_argument(
        "--out",
        default=out,
        help="JSON file to write (default: " + (out or "bench_evals.json in a new run directory under --runs") + ")",
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(ap)
    run(ap.parse_args(argv))


def run(args: argparse.Namespace) -> Path:
    """Run the benchmark; returns the JSON file written."""
    prepare_process()
    model, tok, _ = load("smollm2-135m")
    assert tok is not None  # SmolLM2 ships its tokenizer
    size = FULL
    if getattr(args, "smoke", False):
        size = SMOKE
        model = layer_range(model, 0, SMOKE["layer"] + 1)
        args.out = str(Path(tempfile.mkdtemp(prefix="jsae-bench-evals-smoke-")) / "bench_evals.json")
    N_SAES, D_SAE, K, LAYER = size["n_saes"], size["d_sae"], size["k"], size["layer"]  # noqa: N806
    SEQUENCES, CONTEXT, BATCH, REPEATS = size["sequences"], size["context"], size["batch"], size["repeats"]  # noqa: N806
    stream = np.asarray(tok.encode(SAMPLE_TEXT * 4), np.int32)[: SEQUENCES * CONTEXT]
    tokens = stream.reshape(SEQUENCES, CONTEXT)
    lengths = np.full(SEQUENCES, CONTEXT, np.int32)
    d = model.cfg.d_model
    saes = init_stack("topk", jax.random.key(0), N_SAES, d, D_SAE, k=K)
    max_logits = 2 << 30

    def vectorised():
        return spliced_losses(model, saes, tokens, lengths, layer=LAYER, batch_size=BATCH, max_logits_bytes=max_logits)

    def vectorised_unbatched():
        return spliced_losses(model, saes, tokens, lengths, layer=LAYER, batch_size=BATCH, max_logits_bytes=1)

    def one_at_a_time():
        outs = [
            spliced_losses(
                model, index(saes, i), tokens, lengths, layer=LAYER, batch_size=BATCH, max_logits_bytes=max_logits
            )
            for i in range(N_SAES)
        ]
        return {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}

    splice = lambda x, layer, _, s: jnp.where(layer == LAYER, s(x), x)  # noqa: E731  (one function object: one compile)

    @eqx.filter_jit
    def ce_full(model, sae, tok):  # the model is an argument: closing over it makes XLA constant-fold 0.5 GB
        logits, _ = forward(model, tok, hooks=edit("resid_post", splice, shared=sae))
        assert logits is not None  # logits=True by default
        logp = jax.nn.log_softmax(logits[:, :-1], axis=-1)
        return -jnp.mean(jnp.take_along_axis(logp, tok[:, 1:, None], axis=-1))

    def full_forward_loop():
        return np.array(
            [
                np.mean(
                    [
                        float(ce_full(model, index(saes, i), jnp.asarray(tokens[j : j + BATCH])))
                        for j in range(0, SEQUENCES, BATCH)
                    ]
                )
                for i in range(N_SAES)
            ]
        )

    results = {}
    for name, fn in (
        ("vectorised", vectorised),
        ("vectorised_unbatched", vectorised_unbatched),
        ("one_at_a_time", one_at_a_time),
        ("full_forward_loop", full_forward_loop),
    ):
        first, best, out = timed(fn, REPEATS)
        results[name] = {
            "seconds": best,
            "seconds_per_sae": best / N_SAES,
            "first_call_seconds": first,
            "ce_sae": (out if isinstance(out, np.ndarray) else cast(dict, out)["ce_sae"]).tolist(),
        }
        if isinstance(out, dict):
            results[name]["ce_clean"] = float(out["ce_clean"][0])
        print(f"{name:>18}: {best:7.2f} s for {N_SAES} SAEs = {best / N_SAES:6.3f} s/SAE (first call {first:.1f} s)")
    ce = {k: np.asarray(v["ce_sae"]) for k, v in results.items()}
    vec = results["vectorised"]
    summary = {
        "setup": {
            "model": "smollm2-135m" + (f" (layers 0..{LAYER})" if getattr(args, "smoke", False) else ""),
            "smoke": bool(getattr(args, "smoke", False)),
            "n_saes": N_SAES,
            "architecture": "topk",
            "d_sae": D_SAE,
            "k": K,
            "hook": f"blocks.{LAYER}.hook_resid_post",
            "sequences": SEQUENCES,
            "context": CONTEXT,
            "tokens": SEQUENCES * CONTEXT,
            "batch_size": BATCH,
            "max_logits_bytes": max_logits,
            "repeats": REPEATS,
            "timing": "best of repeats after one warm-up call",
            "device": f"{jax.device_count()} x {jax.devices()[0].platform}",
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "jax": jax.__version__,
        },
        "results": results,
        "speedup_vectorised_vs_one_at_a_time": results["one_at_a_time"]["seconds"] / vec["seconds"],
        "speedup_vectorised_vs_unbatched": results["vectorised_unbatched"]["seconds"] / vec["seconds"],
        "speedup_vectorised_vs_full_forward_loop": results["full_forward_loop"]["seconds"] / vec["seconds"],
        "max_abs_ce_difference": float(
            max(
                np.max(np.abs(ce["vectorised"] - ce["one_at_a_time"])),
                np.max(np.abs(ce["vectorised"] - ce["full_forward_loop"])),
            )
        ),
    }
    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    write_json(out_path, summary)
    grouped_bars(
        out_path.with_suffix(".png"),
        list(results),
        {"seconds per SAE": [r["seconds_per_sae"] for r in results.values()]},
        ylabel="seconds per SAE (lower is better)",
        title=f"spliced CE of {N_SAES} SAEs on SmolLM2",
    )
    print(
        f"speed-up of the vectorised path: {summary['speedup_vectorised_vs_one_at_a_time']:.2f}x vs one at a time, "
        f"{summary['speedup_vectorised_vs_full_forward_loop']:.2f}x vs a loop of full forwards; "
        f"max |CE difference| {summary['max_abs_ce_difference']:.2e}; wrote {out_path}"
    )
    return out_path


if __name__ == "__main__":
    main()
