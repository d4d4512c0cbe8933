"""Pieces shared by the training subcommands: build the stack, the config, the metric table and plot."""

from __future__ import annotations

import numpy as np

from jsae.sae import registry
from jsae.sae.registry import init_stack
from jsae.train import TrainConfig


def add_train_options(p, *, steps: int | None, d_sae: int, k: int = 8, batch: int | None = 256) -> None:
    """Options shared by the subcommands that train SAEs (a None default is resolved by the command)."""
    records = [registry.get(name) for name in registry.names()]
    with_k = "/".join(r.name for r in records if r.uses_k)
    sparsity = "; ".join(
        f"{r.name}: {r.sparsity}, default {r.hyperparams['sparsity_coef']}" for r in records if r.sparsity
    )
    p.add_argument("--arch", default="topk", choices=registry.names(), help="SAE architecture (default: %(default)s)")
    p.add_argument("--d-sae", type=int, default=d_sae, help="latents per SAE (default: %(default)s)")
    p.add_argument("--k", type=int, default=k, help=f"active latents per token for {with_k} (default: %(default)s)")
    p.add_argument(
        "--sparsity",
        type=float,
        nargs="+",
        default=None,
        help=f"sparsity coefficient(s) ({sparsity}); several values sweep them, one SAE each",
    )
    p.add_argument(
        "--steps",
        type=int,
        default=steps,
        help="optimizer steps (default: %(default)s"
        + ("" if steps else "; from --tokens when streaming, one epoch of a cache, 2000 for a .npy")
        + ")",
    )
    p.add_argument(
        "--batch",
        type=int,
        default=batch,
        help="tokens per SAE per step (default: %(default)s"
        + ("" if batch else "; 1024 streaming or from a cache, 256 for a .npy")
        + ")",
    )
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="PRNG seed (default: %(default)s)")
    p.add_argument("--out", default="runs", help="folder for run directories (default: %(default)s)")
    p.add_argument("--checkpoint", default=None, help="checkpoint directory: resume from it if it holds this run")


def stack_and_config(args, key, n: int, d_in: int, sample=None):
    """The SAE stack and TrainConfig an argparse namespace asks for (a sparsity sweep sets N). The
    config names every loss hyperparameter the architecture reads (its record's defaults where the
    command line gives none), so a run's config.json says what it trained with."""
    record = registry.get(args.arch)
    sparsity: list[float] = list(args.sparsity or [])
    if record.sparsity is None and sparsity:
        raise ValueError(f"--sparsity does not apply to {args.arch}" + (" (it uses --k)" if record.uses_k else ""))
    default = record.hyperparams.get("sparsity_coef")
    if record.sparsity is not None and not sparsity:
        if default is None:
            raise ValueError(f"{args.arch} has no default sparsity coefficient: pass --sparsity")
        sparsity = [default]
    if len(sparsity) > 1 and n not in (1, len(sparsity)):
        raise ValueError(f"{len(sparsity)} --sparsity values for {n} SAEs: give one value or one per SAE")
    n = max(n, len(sparsity))
    sae = init_stack(args.arch, key, n, d_in, args.d_sae, k=args.k if record.uses_k else None, data=sample)
    chunk = min(args.steps, 250)
    cfg = TrainConfig(
        steps=args.steps,
        batch_size=args.batch,
        lr=args.lr,
        seed=args.seed,
        sparsity_coef=None if not sparsity else sparsity if len(sparsity) > 1 else sparsity[0],
        aux_coef=record.hyperparams.get("aux_coef"),
        lr_warmup_steps=min(100, args.steps // 10),
        lr_decay="linear",
        chunk_steps=chunk,
        checkpoint_every=chunk if args.checkpoint else 0,
        normalise_activations=True,
        dead_after_tokens=max(args.batch * 200, 10_000),
    )
    return sae, cfg


def metric_table(metrics: dict[str, np.ndarray], extra: dict[str, np.ndarray] | None = None, max_rows: int = 12) -> str:
    """A short text table: one row per SAE (the first and last few when there are many)."""
    cols = {
        "L0": metrics["l0"],
        "expl.var": metrics["explained_variance"],
        "dead": metrics["dead_fraction"],
        **(extra or {}),
    }
    n = len(metrics["l0"])
    rows = list(range(n)) if n <= max_rows else [*range(max_rows // 2), -1, *range(n - max_rows // 2, n)]
    lines = ["  SAE  " + "".join(f"{c:>10}" for c in cols)]
    for i in rows:
        if i < 0:
            lines.append("  ...")
            continue
        lines.append(f"{i:5d}  " + "".join(f"{float(v[i]):10.3f}" for v in cols.values()))
    lines.append("  mean " + "".join(f"{float(np.mean(v)):10.3f}" for v in cols.values()))
    return "\n".join(lines)


def plot_l0_vs_ev(metrics: dict[str, np.ndarray], path, title: str) -> None:
    from jsae.plots import figure, save

    fig, ax = figure(5, 4)
    ax.scatter(metrics["l0"], metrics["explained_variance"], s=12, alpha=0.7)
    ax.set_xlabel("L0 (active latents per token)")
    ax.set_ylabel("explained variance")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    save(fig, path)
