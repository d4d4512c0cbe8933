"""``jsae absorption``: feature absorption of SAEs on a language model's residual stream (first-letter task).

Pipeline: first-letter ICL prompts -> activations at the word token of ``--layer`` -> 26-way probe ->
k-sparse probing over each SAE's latents (main latents, feature splits) -> SAEBench's absorption
fraction and full-absorption rate, and the paper's IG-based absorption rate.

SAEs come from ``--sae PATH`` (SAELens directories, read with ``jsae.io``) or, without it, are trained
on the fly: one vmapped ReLU-L1 sweep over ``--sparsity`` per width in ``--widths``, on the residual
stream of ``--layer`` over **training text that needs no download**: the Python reference manual
shipped in the standard library (``pydoc_data.topics``, ~465k characters, ~110k SmolLM2 tokens),
read through ``jsae.data`` (``ContextStream``: topics joined by EOS) in windows of ``--ctx`` tokens (the
first token of each window is dropped: it is an attention sink with an outsized norm).
"""

from __future__ import annotations

import time

from jsae.io import new_run_dir, write_json


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


def run(args) -> None:
    from jsae.analysis import (
        AbsorptionConfig,
        evaluate_saes,
        plot_absorption,
        prepare_probe_data,
        train_relu_sweep,
        training_activations,
    )
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
    cfg = AbsorptionConfig(
        max_k=args.max_k,
        tau_fs=args.tau_fs,
        selection=args.selection,
        ig_steps=args.ig_steps,
        paper_candidates=args.paper_candidates,
        min_probe_f1=args.min_probe_f1,
        seed=args.seed,
    )
    results = evaluate_saes(saes, data, model, args.layer, answer_ids, cfg)
    for r, entry in zip(results, saes):
        r.update({k: v for k, v in entry.items() if k != "sae"})
    for r in results:
        print(
            f"  width {r['width']:5d}  L0 {r['l0']:7.1f}  absorption fraction {r['absorption_fraction']:.3f}  "
            f"full {r['full_absorption']:.3f}  paper {r['paper_absorption_rate']:.3f}  "
            f"({r['n_letters']} letters, {r['seconds']:.1f} s)"
        )
    out = new_run_dir(args.out, "absorption")
    write_json(out / "config.json", {"command": "absorption", **vars(args)})
    write_json(
        out / "results.json",
        {"setup_seconds": setup_s, "train_seconds": train_s, "probe_f1": data.probe_f1, "saes": results},
    )
    plot_absorption(results, out)
    print(f"results in {out}")
