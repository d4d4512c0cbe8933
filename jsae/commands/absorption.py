"""``jsae absorption``: feature absorption of SAEs on a language model's residual stream (first-letter task).

Pipeline: first-letter ICL prompts -> activations at the word token of ``--layer`` -> 26-way probe ->
k-sparse probing over each SAE's latents (main latents, feature splits) -> SAEBench's absorption
fraction and full-absorption rate, and the paper's IG-based absorption rate.

SAEs come from ``--sae PATH`` (SAELens directories, read with ``jsae.io``) or, without it, are trained
on the fly: one vmapped ReLU-L1 sweep over ``--sparsity`` per width in ``--widths``, on the residual
stream of ``--layer`` over **training text that needs no download**: the Python reference manual
shipped in the standard library (``pydoc_data.topics``, ~465k characters, ~110k SmolLM2 tokens),
cut into windows of ``--ctx`` tokens (the first token of each window is dropped: it is an attention
sink with an outsized norm).
"""

from __future__ import annotations

import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from jsae.rundir import new_run_dir, to_jsonable, write_json


def register(sub) -> None:
    p = sub.add_parser(
        "absorption",
        help="measure feature absorption (first-letter task) of SAEs on a model",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
    )
    p.add_argument("--model", default="smollm2-135m", help="model name or path (default: %(default)s)")
    p.add_argument("--layer", type=int, default=3, help="residual stream layer (resid_post) (default: %(default)s)")
    p.add_argument(
        "--sae",
        nargs="+",
        default=None,
        help="SAELens directories of SAEs trained on this layer's resid_post; without it SAEs are trained",
    )
    p.add_argument(
        "--widths",
        type=int,
        nargs="+",
        default=[1152, 2304],
        help="latents per SAE for on-the-fly training, one stack per width (default: %(default)s)",
    )
    p.add_argument(
        "--sparsity",
        type=float,
        nargs="+",
        default=[1.0, 2.0, 4.0],
        help="L1 coefficients of the on-the-fly ReLU sweep, one SAE each (default: %(default)s)",
    )
    p.add_argument("--steps", type=int, default=1500, help="training steps per SAE (default: %(default)s)")
    p.add_argument("--batch", type=int, default=512, help="tokens per SAE per step (default: %(default)s)")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default: %(default)s)")
    p.add_argument(
        "--text-tokens",
        type=int,
        default=120_000,
        help="training tokens harvested from the stdlib reference manual (default: %(default)s)",
    )
    p.add_argument("--ctx", type=int, default=128, help="tokens per training window (default: %(default)s)")
    p.add_argument("--n-train", type=int, default=3000, help="probe training words (default: %(default)s)")
    p.add_argument("--n-test", type=int, default=1000, help="test words (default: %(default)s)")
    p.add_argument("--max-k", type=int, default=10, help="k-sparse probing: largest k (default: %(default)s)")
    p.add_argument("--tau-fs", type=float, default=0.03, help="feature-split F1 jump threshold (default: %(default)s)")
    p.add_argument(
        "--selection",
        default="mean_diff",
        choices=("mean_diff", "l1"),
        help="k-sparse probing latent selection (default: %(default)s)",
    )
    p.add_argument(
        "--ig-steps", type=int, default=4, help="integrated-gradient steps, paper metric (default: %(default)s)"
    )
    p.add_argument(
        "--paper-candidates",
        type=int,
        default=2,
        help="paper metric: candidates per letter sent through IG (0 skips it) (default: %(default)s)",
    )
    p.add_argument(
        "--min-probe-f1",
        type=float,
        default=0.6,
        help="letters below this probe F1 are excluded (default: %(default)s)",
    )
    p.add_argument("--seed", type=int, default=0, help="PRNG seed (default: %(default)s)")
    p.add_argument("--out", default="runs", help="folder for run directories (default: %(default)s)")


# --- training data and on-the-fly SAEs --------------------------------------------------------------


def stdlib_text() -> str:
    """The Python reference manual shipped with the interpreter (``pydoc_data.topics``), topics in
    sorted order, separated by blank lines."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[k] for k in sorted(topics))


def text_windows(tokenizer, text: str, ctx: int, max_tokens: int) -> np.ndarray:
    """``[n, ctx]`` consecutive token windows of ``text`` (at most ``max_tokens`` tokens in all)."""
    if ctx < 2:
        raise ValueError(f"--ctx must be >= 2, got {ctx}")
    ids = np.asarray(tokenizer.encode(text), np.int32)
    n = min(len(ids), max_tokens) // ctx
    if n == 0:
        raise ValueError(f"the training text has {len(ids)} tokens, fewer than one window of {ctx}")
    return ids[: n * ctx].reshape(n, ctx)


def training_activations(
    model, tokenizer, layer: int, *, max_tokens: int, ctx: int = 128, batch_size: int = 16
) -> np.ndarray:
    """resid_post of ``layer`` at every token but the first of each window, ``[n_tokens, d_model]``."""
    from jsae.models import capture, forward, layer_range

    windows = text_windows(tokenizer, stdlib_text(), ctx, max_tokens)
    short = layer_range(model, 0, layer + 1)
    spec = capture("resid_post")
    out = []
    for s in range(0, len(windows), batch_size):
        rows = windows[s : s + batch_size]
        pad = np.concatenate([rows, np.repeat(rows[:1], batch_size - len(rows), axis=0)])
        _, cache = forward(short, jnp.asarray(pad), hooks=spec, logits=False)
        out.append(np.asarray(cache["resid_post"][layer])[: len(rows), 1:].reshape(-1, model.cfg.d_model))
    return np.concatenate(out)


def train_relu_sweep(
    acts: np.ndarray, widths: list[int], sparsity: list[float], *, steps: int, batch: int, lr: float, seed: int
) -> list[dict]:
    """One vmapped ReLU-L1 stack per width over the ``sparsity`` coefficients; a list of
    ``{"width", "sparsity", "sae", "train_metrics", "train_seconds"}`` (one per SAE)."""
    from jsae.sae import index
    from jsae.sae.registry import init_stack
    from jsae.train import TrainConfig, train

    out = []
    for w_i, width in enumerate(widths):
        key = jax.random.fold_in(jax.random.key(seed), w_i)
        stack = init_stack("relu", key, len(sparsity), acts.shape[1], width)
        cfg = TrainConfig(
            steps=steps,
            batch_size=batch,
            lr=lr,
            sparsity_coef=list(sparsity),
            lr_warmup_steps=min(100, steps // 10),
            lr_decay="linear",
            sparsity_warmup_steps=steps // 5,
            chunk_steps=min(steps, 500),
            normalise_activations=True,
            dead_after_tokens=batch * 200,
            seed=seed,
        )
        res = train(stack, acts, cfg, progress=False)
        for i, coef in enumerate(sparsity):
            out.append(
                {
                    "width": width,
                    "sparsity": coef,
                    "sae": index(res.sae, i),
                    "train_metrics": {k: float(v[i]) for k, v in res.metrics.items()},
                    "train_seconds": res.seconds / len(sparsity),
                }
            )
    return out


def load_saes(paths: list[str], layer: int) -> list[dict]:
    """SAELens directories -> ``[{"width", "sparsity": None, "sae", "path"}]``; each must read
    resid_post of ``layer`` when its cfg names a hook."""
    from jsae.io import load_saelens, parse_hook_name

    out = []
    for p in paths:
        sae, cfg = load_saelens(p)
        hook = cfg.get("hook_name")
        if hook:
            h_layer, point = parse_hook_name(hook)
            if (h_layer, point) != (layer, "resid_post"):
                raise ValueError(
                    f"{p} was trained on {hook} ({point} of layer {h_layer}), but --layer {layer} "
                    f"measures resid_post of layer {layer}; pass --layer {h_layer} or another SAE"
                )
        out.append({"width": int(sae.d_sae), "sparsity": None, "sae": sae, "path": str(p)})
    return out


# --- evaluation -------------------------------------------------------------------------------------


@eqx.filter_jit
def _encode(sae, x):
    return sae.encode(x)


def evaluate_sae(
    sae,
    data,
    model,
    layer: int,
    answer_ids,
    *,
    max_k: int = 10,
    tau_fs: float = 0.03,
    selection: str = "mean_diff",
    ig_steps: int = 4,
    paper_candidates: int = 2,
    min_probe_f1: float = 0.6,
    seed: int = 0,
) -> dict:
    """k-sparse probing + both absorption metrics for one SAE; a JSON-ready dict with per-letter rows."""
    from jsae.analysis.absorption import aggregate, letter_absorption
    from jsae.analysis.sparse_probing import k_sparse_probing

    t0 = time.perf_counter()
    lat_train = np.asarray(_encode(sae, jnp.asarray(data.train_acts)))
    lat_test = np.asarray(_encode(sae, jnp.asarray(data.test_acts)))
    sp = k_sparse_probing(
        lat_train, data.train_letters, lat_test, data.test_letters, 26, max_k=max_k, method=selection, tau_fs=tau_fs
    )
    letters = letter_absorption(
        sae,
        data,
        sp.main_latents,
        model=model,
        layer=layer,
        answer_ids=answer_ids,
        ig_steps=ig_steps,
        max_paper_candidates=paper_candidates,
        min_probe_f1=min_probe_f1,
        seed=seed,
    )
    summary = aggregate(letters, min_probe_f1)
    l0 = float(np.mean(np.sum(lat_test != 0, axis=1)))
    return {
        "width": int(sae.d_sae),
        "l0": l0,
        **summary,
        "seconds": time.perf_counter() - t0,
        "k_sparse_f1": sp.f1,
        "per_letter": [vars(r) for r in letters],
    }


def plot_results(results: list[dict], run: Path) -> list[Path]:
    """absorption vs L0 (coloured by width) and per-letter absorption fraction, as PNGs."""
    from jsae.plots import figure, save
    from jsae.tasks.first_letter import LETTERS

    fig, axes = figure(13, 4, ncols=3)
    widths = sorted({r["width"] for r in results})
    for metric, ax in zip(("absorption_fraction", "full_absorption", "paper_absorption_rate"), axes):
        for w in widths:
            rs = sorted((r for r in results if r["width"] == w), key=lambda r: r["l0"])
            ax.plot([r["l0"] for r in rs], [r[metric] for r in rs], "o-", label=f"width {w}")
        ax.set_xscale("log")
        ax.set_xlabel("L0 on first-letter tokens")
        ax.set_ylabel(metric.replace("_", " "))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("feature absorption vs sparsity and width")
    paths = [save(fig, run / "absorption_vs_l0.png", dpi=110)]

    fig, ax = figure(12, 4)
    bw = 0.8 / max(1, len(results))
    for i, r in enumerate(results):
        vals = [row["absorption_fraction"] for row in r["per_letter"]]
        ax.bar(np.arange(26) + i * bw, np.nan_to_num(vals), bw, label=f"w{r['width']} L0 {r['l0']:.0f}")
    ax.set_xticks(np.arange(26) + 0.4 - bw / 2, list(LETTERS))
    ax.set_ylabel("absorption fraction (SAEBench)")
    ax.set_title("absorption per first letter (letters with probe F1 < threshold are blank)")
    ax.legend(fontsize=7, ncol=3)
    paths.append(save(fig, run / "absorption_per_letter.png", dpi=110))
    return paths


def run(args) -> None:
    from jsae.analysis.absorption import prepare_probe_data
    from jsae.models import load
    from jsae.tasks.first_letter import answer_token_ids

    t0 = time.perf_counter()
    model, tokenizer, _ = load(args.model)
    if tokenizer is None:
        raise ValueError(f"model {args.model!r} came without a tokenizer; the first-letter task needs one")
    if not 0 <= args.layer < model.cfg.n_layers:
        raise ValueError(f"--layer {args.layer} is out of range; {args.model} has layers 0..{model.cfg.n_layers - 1}")
    saes = load_saes(args.sae, args.layer) if args.sae else None  # bad paths fail before the slow setup
    data = prepare_probe_data(model, tokenizer, args.layer, n_train=args.n_train, n_test=args.n_test, seed=args.seed)
    answer_ids = answer_token_ids(tokenizer)
    setup_s = time.perf_counter() - t0
    print(
        f"jsae absorption: {args.model} layer {args.layer}; probe on {len(data.train_letters)} words, "
        f"{int((data.probe_f1 >= args.min_probe_f1).sum())}/26 letters with test F1 >= {args.min_probe_f1} "
        f"(mean F1 {data.probe_f1.mean():.3f}); setup {setup_s:.1f} s"
    )
    if saes is not None:
        train_s = 0.0
    else:
        t1 = time.perf_counter()
        acts = training_activations(model, tokenizer, args.layer, max_tokens=args.text_tokens, ctx=args.ctx)
        saes = train_relu_sweep(
            acts, args.widths, args.sparsity, steps=args.steps, batch=args.batch, lr=args.lr, seed=args.seed
        )
        train_s = time.perf_counter() - t1
        print(f"trained {len(saes)} ReLU SAEs on {len(acts)} stdlib-text tokens in {train_s:.1f} s")
    results = []
    for entry in saes:
        r = evaluate_sae(
            entry["sae"],
            data,
            model,
            args.layer,
            answer_ids,
            max_k=args.max_k,
            tau_fs=args.tau_fs,
            selection=args.selection,
            ig_steps=args.ig_steps,
            paper_candidates=args.paper_candidates,
            min_probe_f1=args.min_probe_f1,
            seed=args.seed,
        )
        r.update({k: v for k, v in entry.items() if k != "sae"})
        results.append(r)
        print(
            f"  width {r['width']:5d}  L0 {r['l0']:7.1f}  absorption fraction {r['absorption_fraction']:.3f}  "
            f"full {r['full_absorption']:.3f}  paper {r['paper_absorption_rate']:.3f}  "
            f"({r['n_letters']} letters, {r['seconds']:.1f} s)"
        )
    out = new_run_dir(args.out, "absorption")
    write_json(out / "config.json", {"command": "absorption", **vars(args)})
    write_json(
        out / "results.json",
        {"setup_seconds": setup_s, "train_seconds": train_s, "probe_f1": data.probe_f1, "saes": to_jsonable(results)},
    )
    plot_results(results, out)
    print(f"results in {out}")
