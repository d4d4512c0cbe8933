"""Benchmark: one vmapped program training N SAEs vs a Python loop of jitted single-SAE steps vs PyTorch.

    jsae bench train                             # all cases, about 4 minutes on 2 CPU cores
    python experiments/bench_train.py            # the same, writing results/bench_train.json
    python experiments/bench_train.py --quick    # fewer steps

Writes results/bench_train.json. Throughput is SAE-steps/s (one optimizer step of one SAE on a batch of
B tokens); SAE-tokens/s = SAE-steps/s * B. Achieved GFLOP/s counts the dense matmuls of a ReLU SAE step:
forward 4*B*d*m (encoder + decoder), backward 6*B*d*m (dW_dec, dF, dW_enc; no gradient w.r.t. the input),
so FLOP per SAE-step = 10*B*d*m. The float32 matmul peak is measured in the same run (a 2048^3 jnp.dot).

The honest yardstick for small SAEs is not that peak but the "matmul ceiling" of each case, also measured
in the same run: GFLOP/s of exactly the five matmuls of a stack step (encoder, decoder, and the three
backward products), batched over the N SAEs as the vmapped trainer computes them, split over the same
devices, and nothing else. No trainer built from XLA dots can beat it; small per-SAE matrices (d=64) run
far below the big-matmul peak.

On CPU the benchmark first gives JAX one device per core (``jsae.train.use_cpu_cores``, as the CLI does)
and measures the vmapped trainer twice, on every device and on device 0 alone: XLA:CPU computes a
stack's batched small matmuls on one thread, so one device per core is what puts every core to work.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jsae.sae import relu, stack
from jsae.runtime import prepare_process
from jsae.train import TrainConfig, sae_mesh, train
from jsae.train.sharding import AXIS
from jsae.train.step import init_state, sae_step

CASES = [
    {"name": "per-head tiny", "n_saes": 144, "d_in": 64, "d_sae": 256, "batch": 64},
    {"name": "wide batch", "n_saes": 24, "d_in": 64, "d_sae": 512, "batch": 1024},
    {"name": "thousands", "n_saes": 1152, "d_in": 64, "d_sae": 256, "batch": 64},
]


def flops_per_sae_step(d: int, m: int, b: int) -> float:
    return 10.0 * b * d * m


def matmul_peak_gflops(n: int = 2048, reps: int = 10) -> float:
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    f = jax.jit(jnp.dot)
    f(a, b).block_until_ready()
    best = min(_timed(lambda: f(a, b).block_until_ready()) for _ in range(reps))
    return 2 * n**3 / best / 1e9


def step_matmuls_gflops(n: int, d: int, m: int, b: int, mesh, reps: int = 10) -> float:
    """GFLOP/s of the five matmuls of one stack step of N ReLU SAEs (batched over N as in the trainer,
    each device of ``mesh`` computing its slice): f = x W_enc, x_hat = f W_dec, dF = g W_dec^T,
    dW_dec = f^T g, dW_enc = x^T dpre (10*B*d*m per SAE). N must divide by the device count."""
    keys = jax.random.split(jax.random.key(0), 5)
    spec = jax.sharding.PartitionSpec(AXIS)
    put = lambda a: jax.device_put(a, jax.sharding.NamedSharding(mesh, spec))  # noqa: E731
    x, g = put(jax.random.normal(keys[0], (n, b, d))), put(jax.random.normal(keys[1], (n, b, d)))
    dpre = put(jax.random.normal(keys[2], (n, b, m)))
    W_enc, W_dec = put(jax.random.normal(keys[3], (n, d, m))), put(jax.random.normal(keys[4], (n, m, d)))

    def local(x, g, dpre, W_enc, W_dec):
        f = jnp.einsum("nbd,ndm->nbm", x, W_enc)
        return (jnp.einsum("nbm,nmd->nbd", f, W_dec), jnp.einsum("nbd,nmd->nbm", g, W_dec),
                jnp.einsum("nbm,nbd->nmd", f, g), jnp.einsum("nbd,nbm->ndm", x, dpre))

    five = jax.jit(jax.shard_map(local, mesh=mesh, in_specs=spec, out_specs=spec))
    jax.block_until_ready(five(x, g, dpre, W_enc, W_dec))
    best = min(_timed(lambda: jax.block_until_ready(five(x, g, dpre, W_enc, W_dec))) for _ in range(reps))
    return n * flops_per_sae_step(d, m, b) / best / 1e9


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


REPEATS = 3  # every rate is the best of this many timed runs (compilation excluded)


def bench_vmapped(sae, data, cfg: TrainConfig, mesh) -> float:
    """SAE-steps/s of jsae.train.train on ``mesh`` (best of REPEATS calls after a compiling one)."""
    train(sae, data, cfg, progress=False, mesh=mesh)
    best = min(train(sae, data, cfg, progress=False, mesh=mesh).seconds for _ in range(REPEATS))
    return sae.W_enc.shape[0] * cfg.steps / best


def bench_loop(sae, data, cfg: TrainConfig, n_saes_timed: int) -> float:
    """SAE-steps/s of a Python loop over SAEs, each step the same jitted single-SAE step."""
    n = sae.W_enc.shape[0]
    state = init_state(sae, cfg, jnp.full((n,), 1e-3), jnp.ones((n,)))
    hp = {"lr": jnp.asarray(1e-3), "sparsity_coef": jnp.asarray(0.1), "aux_coef": jnp.asarray(1 / 32)}
    step = jax.jit(sae_step, static_argnums=6, donate_argnums=(0, 1, 2))
    singles = [jax.tree.map(lambda a: a[i], (state.sae, state.opt_state, state.tokens_since_fired))
               for i in range(n_saes_timed)]
    b, steps = cfg.batch_size, cfg.steps
    batches = [jnp.asarray(data[i % data.shape[0], :b]) for i in range(n_saes_timed)]
    s, o, t, _ = step(*singles[0], batches[0], hp, jnp.asarray(0), cfg)  # compile
    jax.block_until_ready(s)
    singles[0] = (s, o, t)

    def run() -> None:
        for k in range(steps):
            for i in range(n_saes_timed):
                s, o, t, _ = step(*singles[i], batches[i], hp, jnp.asarray(k), cfg)
                singles[i] = (s, o, t)
        jax.block_until_ready(singles)

    return n_saes_timed * steps / min(_timed(run) for _ in range(REPEATS))


def bench_torch(d: int, m: int, b: int, n_saes_timed: int, steps: int) -> float | None:
    """SAE-steps/s of a plain PyTorch eager loop (Adam), one SAE after another; None without torch."""
    try:
        import torch
    except ImportError:
        return None
    torch.manual_seed(0)
    params = []
    for _ in range(n_saes_timed):
        W_enc = torch.randn(d, m) * 0.1
        ps = [W_enc.clone().requires_grad_(), torch.zeros(m, requires_grad=True),
              W_enc.T.clone().requires_grad_(), torch.zeros(d, requires_grad=True)]
        params.append((ps, torch.optim.Adam(ps, lr=1e-3)))
    x = torch.randn(b, d)

    def one(ps, opt):
        W_enc, b_enc, W_dec, b_dec = ps
        f = torch.relu((x - b_dec) @ W_enc + b_enc)
        x_hat = f @ W_dec + b_dec
        loss = ((x_hat - x) ** 2).sum(-1).mean() + 0.1 * (f @ W_dec.norm(dim=-1)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for ps, opt in params[:2]:
        one(ps, opt)

    def run() -> None:
        for _ in range(steps):
            for ps, opt in params:
                one(ps, opt)

    return n_saes_timed * steps / min(_timed(run) for _ in range(REPEATS))


def run_case(case: dict, steps: int, peak: float) -> dict:
    n, d, m, b = case["n_saes"], case["d_in"], case["d_sae"], case["batch"]
    tokens = max(4 * b, 1024)
    data = np.random.default_rng(0).normal(size=(n, tokens, d)).astype(np.float32)
    sae = stack(relu.init, jax.random.split(jax.random.key(0), n), d, m)
    cfg = TrainConfig(steps=steps, batch_size=b, lr=1e-3, sparsity_coef=0.1, chunk_steps=steps)
    mesh = sae_mesh()
    vmapped = bench_vmapped(sae, data, cfg, mesh)
    one_device = bench_vmapped(sae, data, cfg, sae_mesh(jax.devices()[:1])) if mesh.devices.size > 1 else vmapped
    loop_n = min(n, 24)
    loop_steps = max(steps // 10, 5)
    loop = bench_loop(sae, data, TrainConfig(steps=loop_steps, batch_size=b), loop_n)
    torch_rate = bench_torch(d, m, b, min(n, 12), max(steps // 10, 5))
    gflops = vmapped * flops_per_sae_step(d, m, b) / 1e9
    ceiling = step_matmuls_gflops(n, d, m, b, mesh)
    return {**case, "steps": steps, "devices": int(mesh.devices.size), "vmapped_sae_steps_per_s": vmapped,
            "vmapped_one_device_sae_steps_per_s": one_device, "loop_sae_steps_per_s": loop,
            "torch_sae_steps_per_s": torch_rate, "vmapped_sae_tokens_per_s": vmapped * b,
            "vmapped_gflops": gflops, "fraction_of_matmul_peak": gflops / peak,
            "step_matmuls_gflops": ceiling, "step_matmuls_fraction_of_peak": ceiling / peak,
            "fraction_of_step_matmuls": gflops / ceiling,
            "speedup_vs_one_device": vmapped / one_device, "speedup_vs_loop": vmapped / loop, "speedup_vs_torch": (vmapped / torch_rate) if torch_rate else None}


def add_arguments(ap: argparse.ArgumentParser, out: str = "results/bench_train.json") -> None:
    ap.add_argument("--quick", action="store_true", help="fewer steps (a smoke run)")
    ap.add_argument("--out", default=out, help="JSON file to write (default: "
                    + (out or "bench_train.json in a new run directory under --runs") + ")")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(ap)
    run(ap.parse_args(argv))


def run(args: argparse.Namespace) -> None:
    prepare_process()  # one CPU device per core (as the CLI), unless JAX is already running
    print(f"{jax.device_count()} {jax.devices()[0].platform} device(s)")
    peak = matmul_peak_gflops()
    print(f"float32 matmul peak (2048^3 jnp.dot): {peak:.1f} GFLOP/s")
    steps = {True: 20, False: 200}[args.quick]
    cases = []
    for case in CASES:
        r = run_case(case, steps if case["n_saes"] < 1000 else max(steps // 4, 10), peak)
        cases.append(r)
        torch_txt = f"{r['torch_sae_steps_per_s']:,.0f}" if r["torch_sae_steps_per_s"] else "n/a"
        print(f"{r['name']:>14} N={r['n_saes']:5d} d={r['d_in']} m={r['d_sae']} B={r['batch']:5d} | "
              f"vmapped {r['vmapped_sae_steps_per_s']:9,.0f} SAE-steps/s ({r['vmapped_gflops']:.1f} GFLOP/s, "
              f"{100 * r['fraction_of_matmul_peak']:.0f}% of peak; 1 device {r['vmapped_one_device_sae_steps_per_s']:,.0f}) | "
              f"loop {r['loop_sae_steps_per_s']:8,.0f} | "
              f"torch {torch_txt} | x{r['speedup_vs_loop']:.1f} vs loop | its 5 matmuls alone: "
              f"{r['step_matmuls_gflops']:.1f} GFLOP/s ({100 * r['step_matmuls_fraction_of_peak']:.0f}% of peak)")
    peak_after = matmul_peak_gflops()
    print(f"float32 matmul peak again at the end: {peak_after:.1f} GFLOP/s")
    out = {"machine": f"{os.cpu_count()} CPU cores, {jax.devices()[0].platform}", "devices": jax.device_count(),
           "jax": jax.__version__,
           "flops_per_sae_step": "10 * batch * d_in * d_sae", "matmul_peak_gflops": peak,
           "matmul_peak_gflops_at_end": peak_after,
           "step_matmuls": "the 5 matmuls of a stack step alone, batched over N (bounds any XLA trainer)",
           "cases": cases}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
