"""Benchmark: one vmapped program training N SAEs vs a Python loop of jitted single-SAE steps vs PyTorch.

    jsae bench train                             # all cases
    python experiments/bench_train.py            # the same, writing results/bench_train.json
    python experiments/bench_train.py --quick    # small stacks, a few steps, 3 of the 6 sizes
    python experiments/bench_train.py --smoke    # checks that it runs: toy sizes, JSON in a temporary directory

Writes results/bench_train.json. Throughput is SAE-steps/s (one optimizer step of one SAE on a batch of
B tokens); SAE-tokens/s = SAE-steps/s * B. Achieved GFLOP/s counts the dense matmuls of a ReLU SAE step:
forward 4*B*d*m (encoder + decoder), backward 6*B*d*m (dW_dec, dF, dW_enc; no gradient w.r.t. the input),
so FLOP per SAE-step = 10*B*d*m. The float32 matmul peak is measured in the same run (a 2048^3 jnp.dot).

The honest yardstick for small SAEs is not that peak but the "matmul ceiling" of each case, also measured
in the same run: GFLOP/s of exactly the five matmuls of a stack step (encoder, decoder, and the three
backward products), batched over the N SAEs as the vmapped trainer computes them, split over the same
devices, and nothing else. No trainer built from XLA dots can beat it; small per-SAE matrices (d=64) run
far below the big-matmul peak.

Architecture cases (``ARCH_SIZES``): ReLU, dense TopK and sparse TopK (``jsae.sae._sparse``; k=16) at
B=1024, d_in 64 and 576, d_sae 512, 2048 and 8192, all measured in the same run, each with ``arch``,
``sparse`` and ``sae_steps_per_s``; GFLOP/s there count the dense ReLU step's 10*B*d*m for every
architecture (a sparse step does fewer FLOP: its figure is "dense-equivalent"). No latent dies in these
short runs, so TopK's AuxK term is skipped, as in real training until latents die. Where ``sae_lens`` is
importable, SAELens' own trainer (``SAETrainer``, one head after another) is timed beside the d=64,
d_sae=512, B=1024 cases (``saelens_sae_steps_per_s``). The run ends with sparse TopK's rate over dense
ReLU's and over dense TopK's at each size (``sparse_topk_ratios``) and every target with its measured
figure and whether it is met (``targets``).

On CPU the benchmark first gives JAX one device per core (``jsae.train.use_cpu_cores``, as the CLI does)
and measures the vmapped trainer twice, on every device and on device 0 alone: XLA:CPU computes a
stack's batched small matmuls on one thread, so one device per core is what puts every core to work.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jsae.bench import _saelens as saelens
from jsae.bench import machine
from jsae.io import write_json
from jsae.runtime import prepare_process
from jsae.sae import relu, stack, topk
from jsae.train import AXIS, TrainConfig, init_sae_state, make_optimizer, make_step, sae_mesh, train

CASES = [
    {"name": "per-head tiny", "n_saes": 144, "d_in": 64, "d_sae": 256, "batch": 64},
    {"name": "wide batch", "n_saes": 24, "d_in": 64, "d_sae": 512, "batch": 1024, "saelens": True},
    {"name": "thousands", "n_saes": 1152, "d_in": 64, "d_sae": 256, "batch": 64},
]


K = 16  # TopK's active latents in the architecture cases
BATCH = 1024
# (d_in, d_sae) -> (n_saes, steps): about the same dense FLOP per timed run for every size, so each case
# takes about as long; stacks of at least one SAE per device (2 CPU cores -> 2 devices)
ARCH_SIZES = {
    (64, 512): (24, 25),
    (64, 2048): (8, 20),
    (64, 8192): (2, 20),
    (576, 512): (4, 20),
    (576, 2048): (2, 8),
    (576, 8192): (2, 2),
}
ARCHS = (("relu", False), ("topk", False), ("topk", True))
SAELENS_SIZE = (64, 512)  # the wide case's shape: the SAELens column sits there
QUICK_SIZES = ((64, 512), (64, 8192), (576, 8192))  # --quick: the SAELens size and the two ratio targets
# --smoke: every case and architecture at toy sizes (d_sae 8192 kept as a name for the targets, not a size)
SMOKE_CASE = {"n_saes": 2, "d_in": 8, "d_sae": 32, "batch": 16}
SMOKE_SIZES = {(8, 32): (2, 2)}


def flops_per_sae_step(d: int, m: int, b: int) -> float:
    return 10.0 * b * d * m


def matmul_peak_gflops(n: int = 2048, reps: int = 10) -> float:
    """float32 GFLOP/s of an n^3 ``jnp.dot`` (best of ``reps``)."""
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

    def put(a):
        return jax.device_put(a, jax.sharding.NamedSharding(mesh, spec))

    x, g = put(jax.random.normal(keys[0], (n, b, d))), put(jax.random.normal(keys[1], (n, b, d)))
    dpre = put(jax.random.normal(keys[2], (n, b, m)))
    W_enc, W_dec = put(jax.random.normal(keys[3], (n, d, m))), put(jax.random.normal(keys[4], (n, m, d)))

    def local(x, g, dpre, W_enc, W_dec):
        f = jnp.einsum("nbd,ndm->nbm", x, W_enc)
        return (
            jnp.einsum("nbm,nmd->nbd", f, W_dec),
            jnp.einsum("nbd,nmd->nbm", g, W_dec),
            jnp.einsum("nbm,nbd->nmd", f, g),
            jnp.einsum("nbd,nbm->ndm", x, dpre),
        )

    five = jax.jit(jax.shard_map(local, mesh=mesh, in_specs=spec, out_specs=spec))
    jax.block_until_ready(five(x, g, dpre, W_enc, W_dec))
    best = min(_timed(lambda: jax.block_until_ready(five(x, g, dpre, W_enc, W_dec))) for _ in range(reps))
    return n * flops_per_sae_step(d, m, b) / best / 1e9


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


REPEATS = 3  # every rate is the best of this many timed runs (compilation excluded)


def bench_vmapped(sae, data, cfg: TrainConfig, mesh, repeats: int = REPEATS) -> float:
    """SAE-steps/s of jsae.train.train on ``mesh`` (best of ``repeats`` calls after a compiling one)."""
    train(sae, data, cfg, progress=False, mesh=mesh)
    best = min(train(sae, data, cfg, progress=False, mesh=mesh).seconds for _ in range(repeats))
    return sae.W_enc.shape[0] * cfg.steps / best


def bench_loop(sae, data, cfg: TrainConfig, n_saes_timed: int) -> float:
    """SAE-steps/s of a Python loop over SAEs, each step the same jitted single-SAE step (``make_step``)."""
    opt = make_optimizer(cfg, 1e-3)
    step = jax.jit(make_step(opt, dead_after_tokens=cfg.dead_after_tokens), donate_argnums=0)
    hp = {"sparsity_coef": jnp.asarray(0.1), "aux_coef": jnp.asarray(1 / 32)}
    singles = [init_sae_state(jax.tree.map(lambda a: a[i], sae), opt) for i in range(n_saes_timed)]  # noqa: B023  (called at once)
    b, steps = cfg.batch_size, cfg.steps
    batches = [jnp.asarray(data[i % data.shape[0], :b]) for i in range(n_saes_timed)]
    singles[0], _ = step(singles[0], batches[0], hp)  # compile
    jax.block_until_ready(singles[0])

    def run() -> None:
        for _ in range(steps):
            for i in range(n_saes_timed):
                singles[i], _ = step(singles[i], batches[i], hp)
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
        ps = [
            W_enc.clone().requires_grad_(),
            torch.zeros(m, requires_grad=True),
            W_enc.T.clone().requires_grad_(),
            torch.zeros(d, requires_grad=True),
        ]
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


def run_case(case: dict, steps: int, peak: float, quick: bool = False) -> dict:
    n, d, m, b = case["n_saes"], case["d_in"], case["d_sae"], case["batch"]
    if quick:
        n = min(n, 2 * jax.device_count())
    tokens = max(4 * b, 1024)
    data = np.random.default_rng(0).normal(size=(n, tokens, d)).astype(np.float32)
    sae = stack(relu.init, jax.random.split(jax.random.key(0), n), d, m)
    cfg = TrainConfig(steps=steps, batch_size=b, lr=1e-3, sparsity_coef=0.1, chunk_steps=steps)
    mesh = sae_mesh()
    repeats = 1 if quick else REPEATS
    vmapped = bench_vmapped(sae, data, cfg, mesh, repeats)
    one_device = (  # not at smoke size (d_in 8): the same program on a second mesh, compiled again
        bench_vmapped(sae, data, cfg, sae_mesh(jax.devices()[:1]), repeats)
        if mesh.devices.size > 1 and d != SMOKE_CASE["d_in"]
        else vmapped
    )
    loop_n = min(n, 4 if quick else 24)
    loop_steps = max(steps // 10, 5)
    loop = bench_loop(sae, data, TrainConfig(steps=loop_steps, batch_size=b), loop_n)
    torch_rate = bench_torch(d, m, b, min(n, 4 if quick else 12), max(steps // 10, 5))
    sl = saelens_rate("relu", d, m, b, n, steps, quick) if case.get("saelens") else None
    gflops = vmapped * flops_per_sae_step(d, m, b) / 1e9
    ceiling = step_matmuls_gflops(n, d, m, b, mesh)
    return {
        **case,
        "n_saes": n,
        "arch": "relu",
        "sparse": False,
        "steps": steps,
        "devices": int(mesh.devices.size),
        "sae_steps_per_s": vmapped,
        "vmapped_sae_steps_per_s": vmapped,
        "vmapped_one_device_sae_steps_per_s": one_device,
        "loop_sae_steps_per_s": loop,
        "torch_sae_steps_per_s": torch_rate,
        "vmapped_sae_tokens_per_s": vmapped * b,
        "vmapped_gflops": gflops,
        "fraction_of_matmul_peak": gflops / peak,
        "step_matmuls_gflops": ceiling,
        "step_matmuls_fraction_of_peak": ceiling / peak,
        "fraction_of_step_matmuls": gflops / ceiling,
        "speedup_vs_one_device": vmapped / one_device,
        "speedup_vs_loop": vmapped / loop,
        "speedup_vs_torch": (vmapped / torch_rate) if torch_rate else None,
        **saelens_keys(vmapped, sl),
    }


def saelens_rate(arch: str, d: int, m: int, b: int, n: int, steps: int, quick: bool) -> float | None:
    """SAELens' SAETrainer on the same case, one head after another (None without sae_lens). Its heads run
    one after another, so its rate per head does not depend on how many are timed: a few, 50 steps each."""
    return saelens.sae_steps_per_s(arch, d, m, b, n_heads=min(n, 2 if quick else 6), steps=min(steps, 50), k=K)


def saelens_keys(rate: float, saelens_rate: float | None) -> dict:
    if saelens_rate is None:
        return {}
    return {"saelens_sae_steps_per_s": saelens_rate, "speedup_vs_saelens": rate / saelens_rate}


def arch_stack(arch: str, sparse: bool, n: int, d: int, m: int):
    keys = jax.random.split(jax.random.key(0), n)
    if arch == "relu":
        return stack(relu.init, keys, d, m)
    return stack(topk.init, keys, d, m, k=K, sparse=sparse)


def run_arch_case(
    arch: str,
    sparse: bool,
    d: int,
    m: int,
    n: int,
    steps: int,
    b: int,
    peak: float,
    repeats: int,
    with_saelens: bool,
    quick: bool,
) -> dict:
    """SAE-steps/s of ``train`` for one (architecture, path, size) on every device."""
    n = -(-n // jax.device_count()) * jax.device_count()  # a multiple of the device count
    data = np.random.default_rng(0).normal(size=(n, 4 * b, d)).astype(np.float32)
    cfg = TrainConfig(steps=steps, batch_size=b, lr=1e-3, sparsity_coef=0.1, chunk_steps=steps)
    rate = bench_vmapped(arch_stack(arch, sparse, n, d, m), data, cfg, sae_mesh(), repeats)
    gflops = rate * flops_per_sae_step(d, m, b) / 1e9
    # SAELens' TopK beside jsae's dense TopK (the default path at this size); its ReLU sits on the wide case
    sl = saelens_rate(arch, d, m, b, n, steps, quick) if with_saelens and arch == "topk" and not sparse else None
    return {
        "name": f"{arch}{' sparse' if sparse else ''} d={d} m={m}",
        "arch": arch,
        "sparse": sparse,
        "k": K if arch == "topk" else None,
        "n_saes": n,
        "d_in": d,
        "d_sae": m,
        "batch": b,
        "steps": steps,
        "sae_steps_per_s": rate,
        "sae_tokens_per_s": rate * b,
        "dense_equivalent_gflops": gflops,
        "fraction_of_matmul_peak": gflops / peak,
        **saelens_keys(rate, sl),
    }


def run_arch_cases(peak: float, quick: bool, smoke: bool = False) -> list[dict]:
    out = []
    for (d, m), (n, steps) in (SMOKE_SIZES if smoke else ARCH_SIZES).items():
        if quick and not smoke and (d, m) not in QUICK_SIZES:
            continue
        b = SMOKE_CASE["batch"] if smoke else 256 if quick else BATCH
        if quick:
            n, steps = jax.device_count(), 2
        for arch, sparse in ARCHS:
            r = run_arch_case(arch, sparse, d, m, n, steps, b, peak, 1 if quick else 2, (d, m) == SAELENS_SIZE, quick)
            out.append(r)
            sl = (
                f" | SAELens {r['saelens_sae_steps_per_s']:,.1f} (x{r['speedup_vs_saelens']:.2f})"
                if "saelens_sae_steps_per_s" in r
                else ""
            )
            print(
                f"{r['name']:>24} N={r['n_saes']:3d} B={b} | {r['sae_steps_per_s']:9,.1f} SAE-steps/s "
                f"({r['dense_equivalent_gflops']:.1f} dense-equivalent GFLOP/s){sl}",
                flush=True,
            )
    return out


def ratio_table(arch_cases: list[dict]) -> list[dict]:
    """Per size: sparse TopK's rate over dense ReLU's and over dense TopK's."""
    by = {(c["arch"], c["sparse"], c["d_in"], c["d_sae"]): c["sae_steps_per_s"] for c in arch_cases}
    rows = []
    for d, m in dict.fromkeys((c["d_in"], c["d_sae"]) for c in arch_cases):
        sparse, relu_rate, dense = by[("topk", True, d, m)], by[("relu", False, d, m)], by[("topk", False, d, m)]
        rows.append(
            {
                "d_in": d,
                "d_sae": m,
                "sparse_topk_vs_dense_relu": sparse / relu_rate,
                "sparse_topk_vs_dense_topk": sparse / dense,
            }
        )
    return rows


def targets(cases: list[dict], ratios: list[dict], arch_cases: list[dict]) -> dict:
    """Each target of the benchmark: the measured figure, the bar, and whether it is met."""

    def t(value, bar):
        return {"value": value, "target": bar, "met": None if value is None else bool(value >= bar)}

    named = {c["name"]: c for c in cases}
    out = {
        "per_head_tiny_speedup_vs_torch": t(named["per-head tiny"]["speedup_vs_torch"], 10.0),
        "wide_batch_fraction_of_matmul_peak": t(named["wide batch"]["fraction_of_matmul_peak"], 0.6),
    }
    for r in ratios:
        if r["d_sae"] == 8192:
            out[f"d{r['d_in']}_m8192_sparse_topk_vs_dense_relu"] = t(r["sparse_topk_vs_dense_relu"], 1.0)
            out[f"d{r['d_in']}_m8192_sparse_topk_vs_dense_topk"] = t(r["sparse_topk_vs_dense_topk"], 3.0)
    relu_sl = named["wide batch"].get("speedup_vs_saelens")
    topk_sl = next(
        (
            c["speedup_vs_saelens"]
            for c in arch_cases
            if c["arch"] == "topk" and not c["sparse"] and "speedup_vs_saelens" in c
        ),
        None,
    )
    if relu_sl is not None or topk_sl is not None:
        out["wide_batch_relu_speedup_vs_saelens"] = t(relu_sl, 3.0)
        out["wide_batch_topk_speedup_vs_saelens"] = t(topk_sl, 3.0)
    return out


def add_arguments(ap: argparse.ArgumentParser, out: str = "results/bench_train.json") -> None:
    ap.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run: small stacks, a few steps, 3 of the 6 sizes (rates not comparable with a full run)",
    )
    ap.add_argument(
        "--smoke",
        action="store_true",
        help="check that the benchmark runs: toy sizes, 2 steps, output to a temporary directory "
        "(its figures mean nothing)",
    )
    ap.add_argument(
        "--out",
        default=out,
        help="JSON file to write (default: " + (out or "bench_train.json in a new run directory under --runs") + ")",
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(ap)
    run(ap.parse_args(argv))


def run(args: argparse.Namespace) -> Path:
    """Run the benchmark; returns the JSON file written."""
    prepare_process()  # one CPU device per core (as the CLI), unless JAX is already running
    smoke = bool(getattr(args, "smoke", False))
    if smoke:
        args = argparse.Namespace(**{**vars(args), "quick": True})
        args.out = str(Path(tempfile.mkdtemp(prefix="jsae-bench-train-smoke-")) / "bench_train.json")
    print(f"{jax.device_count()} {jax.devices()[0].platform} device(s)")
    peak = matmul_peak_gflops(*((256, 1) if smoke else ()))
    print(f"float32 matmul peak (2048^3 jnp.dot): {peak:.1f} GFLOP/s")
    if not saelens.available():
        print("sae_lens is not installed: no SAELens column (pip install sae-lens)")
    steps = {True: 5, False: 200}[args.quick]
    cases = []
    for case in CASES:
        if smoke:
            case = {**case, **SMOKE_CASE}
        r = run_case(case, steps if case["n_saes"] < 1000 else max(steps // 4, 5), peak, args.quick)
        cases.append(r)
        torch_txt = f"{r['torch_sae_steps_per_s']:,.0f}" if r["torch_sae_steps_per_s"] else "n/a"
        sl_txt = (
            f" | SAELens {r['saelens_sae_steps_per_s']:,.0f} (x{r['speedup_vs_saelens']:.2f})"
            if "saelens_sae_steps_per_s" in r
            else ""
        )
        print(
            f"{r['name']:>14} N={r['n_saes']:5d} d={r['d_in']} m={r['d_sae']} B={r['batch']:5d} | "
            f"vmapped {r['vmapped_sae_steps_per_s']:9,.0f} SAE-steps/s ({r['vmapped_gflops']:.1f} GFLOP/s, "
            f"{100 * r['fraction_of_matmul_peak']:.0f}% of peak; "
            f"1 device {r['vmapped_one_device_sae_steps_per_s']:,.0f}) | "
            f"loop {r['loop_sae_steps_per_s']:8,.0f} | "
            f"torch {torch_txt} | x{r['speedup_vs_loop']:.1f} vs loop | its 5 matmuls alone: "
            f"{r['step_matmuls_gflops']:.1f} GFLOP/s ({100 * r['step_matmuls_fraction_of_peak']:.0f}% of peak)"
            f"{sl_txt}",
            flush=True,
        )
    arch_cases = run_arch_cases(peak, args.quick, smoke)
    ratios = ratio_table(arch_cases)
    print(f"{'d_in':>5} {'d_sae':>6} | sparse TopK / dense ReLU | sparse TopK / dense TopK")
    for r in ratios:
        print(
            f"{r['d_in']:>5} {r['d_sae']:>6} | {r['sparse_topk_vs_dense_relu']:24.2f} | "
            f"{r['sparse_topk_vs_dense_topk']:24.2f}"
        )
    met = targets(cases, ratios, arch_cases)
    if args.quick:
        print("(--quick: a smoke run with small stacks and a few steps; these figures are not the benchmark's)")
    for name, t in met.items():
        value = "n/a" if t["value"] is None else f"{t['value']:.2f}"
        verdict = {True: "met", False: "NOT met", None: ""}[t["met"]]
        print(f"target {name}: {value} (>= {t['target']}) {verdict}")
    peak_after = matmul_peak_gflops(*((256, 1) if smoke else ()))
    print(f"float32 matmul peak again at the end: {peak_after:.1f} GFLOP/s")
    out = {
        "machine": machine(),
        "devices": jax.device_count(),
        "jax": jax.__version__,
        "quick": bool(args.quick),
        "smoke": smoke,
        "flops_per_sae_step": "10 * batch * d_in * d_sae",
        "matmul_peak_gflops": peak,
        "matmul_peak_gflops_at_end": peak_after,
        "step_matmuls": "the 5 matmuls of a stack step alone, batched over N (bounds any XLA trainer)",
        "saelens": _saelens_version(),
        "torch_threads": _torch_threads(),
        "cases": cases + arch_cases,
        "sparse_topk_ratios": ratios,
        "targets": met,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, out)
    print(f"wrote {args.out}")
    return Path(args.out)


def _torch_threads() -> int | None:
    """Torch's intra-op threads (the PyTorch and SAELens columns): with other work on the cores, each
    thread of a multi-threaded eager op waits for the slowest, so those columns are the first to suffer."""
    try:
        import torch
    except ImportError:
        return None
    return torch.get_num_threads()


def _saelens_version() -> str | None:
    if not saelens.available():
        return None
    from importlib.metadata import version

    return version("sae-lens")


if __name__ == "__main__":
    main()
