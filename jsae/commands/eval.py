"""``jsae eval``: evaluate SAEs (a ``jsae train`` run directory or SAELens folders) on a model: activation metrics
and spliced CE/KL, each SAE on the activations it reads."""

from __future__ import annotations

import time
from pathlib import Path

import jax
import numpy as np

from jsae.data import SAMPLE_TEXT  # the built-in corpus: runs offline; pass --text for real evaluations
from jsae.io import new_run_dir, write_json


def register(sub) -> None:
    p = sub.add_parser(
        "eval",
        help="evaluate SAEs on a model: L0, MSE, explained variance, dead latents, CE/KL recovered",
        description="Load SAEs -- a run directory written by `jsae train` (RUN_DIR with "
        "sae_stack.json), one SAELens folder, or a folder of SAELens folders forming a stack -- run "
        "each on the activations it reads (its layer, hook point and head) and report activation "
        "metrics and the fraction of cross-entropy and KL divergence recovered when it is spliced "
        "into the model, relative to zero-ablating its hook.",
    )
    p.add_argument(
        "--sae",
        required=True,
        help="run directory of `jsae train`, a SAELens folder (cfg.json + sae_weights.safetensors) or a folder of them",
    )
    p.add_argument(
        "--model",
        default=None,
        help="model name or path (default: the model the run or the cfg.json files name, else smollm2-135m)",
    )
    p.add_argument(
        "--layer",
        type=int,
        default=None,
        help="hook layer for every SAE (default: from the run's inputs or each cfg.json hook_name)",
    )
    p.add_argument(
        "--hook",
        default=None,
        help="hook point for every SAE, e.g. resid_post, mlp_out, z (default: "
        "from the run's inputs or cfg.json hook_name)",
    )
    p.add_argument(
        "--head",
        type=int,
        default=None,
        help="head for per-head z/result SAEs (default: the run's "
        "inputs or cfg.json hook_head_index, else all heads flattened)",
    )
    p.add_argument("--text", default=None, help="UTF-8 text file to evaluate on (default: a short built-in sample)")
    p.add_argument("--context", type=int, default=64, help="tokens per sequence (default: %(default)s)")
    p.add_argument("--max-sequences", type=int, default=64, help="at most this many sequences (default: %(default)s)")
    p.add_argument("--batch", type=int, default=8, help="sequences per forward pass (default: %(default)s)")
    p.add_argument(
        "--dense-threshold",
        type=float,
        default=0.1,
        help="a latent firing on more than this fraction of tokens counts as dense (default: %(default)s)",
    )
    p.add_argument(
        "--splice-max",
        type=int,
        default=32,
        metavar="N",
        help="splice per-head (z/result) SAEs for CE/KL only when a stack holds at most N of them: each "
        "needs its own forward pass of the layers from its hook on (default: %(default)s; residual-point "
        "SAEs are always spliced)",
    )
    p.add_argument(
        "--max-activating",
        type=int,
        nargs="*",
        default=[],
        metavar="LATENT",
        help="also print the top contexts of these latents of the first SAE",
    )
    p.add_argument("--out", default="runs", help="folder for run directories (default: %(default)s)")


def _load(args):
    """``(stack, per-SAE hook records, architecture, paths, the model the SAEs name or None)``."""
    from jsae.io import is_run_dir, load_run, load_saelens_stack, parse_hook_name

    path = Path(args.sae)
    if is_run_dir(path):
        sae, inputs, meta = load_run(path)
        records = [dict(i, source=f"{path} (SAE {n}, trained on unknown activations)") for n, i in enumerate(inputs)]
        return sae, records, meta["architecture"], [str(path / d) for d in meta["saelens_dirs"]], meta["model_name"]
    sae, cfgs = load_saelens_stack(path)
    records = []
    for c in cfgs:
        layer, point = parse_hook_name(c["hook_name"]) if c.get("hook_name") else (None, None)
        records.append(
            {
                "layer": layer,
                "point": point,
                "head": c.get("hook_head_index"),
                "source": f"{c['path']} (its cfg.json has no metadata.hook_name)",
            }
        )
    names = {c.get("model_name") for c in cfgs}
    return sae, records, cfgs[0]["architecture"], [c["path"] for c in cfgs], names.pop() if len(names) == 1 else None


def _hooks(records: list[dict], args, model_cfg) -> list[tuple[int, str, int | None]]:
    """``(layer, point, head)`` of every SAE: its own record, overridden by --layer/--hook/--head."""
    from jsae.io import HEAD_POINTS, RESIDUAL_POINTS

    hooks = []
    for r in records:
        layer = args.layer if args.layer is not None else r["layer"]
        point = args.hook or r["point"]
        if layer is None or point is None:
            raise ValueError(
                f"no hook is recorded for {r['source']}: pass --layer and --hook (and --head for an "
                "SAE on one head's z or result) to say where its activations come from"
            )
        if point not in RESIDUAL_POINTS + HEAD_POINTS:
            raise ValueError(
                f"--hook {point!r} is not a point SAEs read; choose one of {', '.join(RESIDUAL_POINTS + HEAD_POINTS)}"
            )
        head = args.head if args.head is not None else (r["head"] if point in HEAD_POINTS else None)
        if head is not None and point not in HEAD_POINTS:
            raise ValueError(f"--head applies to the per-head points {' and '.join(HEAD_POINTS)}, not {point!r}")
        if not 0 <= layer < model_cfg.n_layers:
            raise ValueError(f"layer {layer} is out of range: the model has layers 0..{model_cfg.n_layers - 1}")
        if head is not None and not 0 <= head < model_cfg.n_heads:
            raise ValueError(f"head {head} is out of range: the model has heads 0..{model_cfg.n_heads - 1}")
        hooks.append((int(layer), point, None if head is None else int(head)))
    return hooks


def _groups(hooks: list[tuple[int, str, int | None]]) -> dict[tuple[str, bool], np.ndarray]:
    """SAE indices by (point, reads one head): each group is harvested and spliced together."""
    out: dict[tuple[str, bool], list[int]] = {}
    for i, (_, point, head) in enumerate(hooks):
        out.setdefault((point, head is not None), []).append(i)
    return {k: np.asarray(v) for k, v in out.items()}


def _label(hook: tuple[int, str, int | None]) -> str:
    layer, point, head = hook
    return f"L{layer} {point}" + ("" if head is None else f" h{head}")


def _tokens(tok, args) -> tuple[np.ndarray, np.ndarray]:
    from jsae.analysis import contexts_from_stream

    text = Path(args.text).read_text(encoding="utf-8") if args.text else SAMPLE_TEXT
    stream = tok.encode(text)
    if len(stream) < 2:
        raise ValueError("the evaluation text has fewer than 2 tokens")
    tokens, lengths = contexts_from_stream(stream, args.context)
    keep = lengths >= 2
    return tokens[keep][: args.max_sequences], lengths[keep][: args.max_sequences]


def _plot_density(freq: np.ndarray, path: Path) -> None:
    from jsae.analysis import density_histogram
    from jsae.plots import figure, save

    counts, edges = density_histogram(freq)
    fig, ax = figure(6, 4)
    centres = (edges[1:] + edges[:-1]) / 2
    for i, c in enumerate(counts[:8]):
        ax.step(centres, c, where="mid", label=f"SAE {i}")
    ax.set_xlabel("log10 firing frequency (first bin: dead or rarer)")
    ax.set_ylabel("latents")
    ax.set_title("feature density")
    ax.legend(fontsize=7)
    save(fig, path)


def _evaluate(model, sae, hooks, tokens, lengths, args) -> tuple[dict[str, np.ndarray], list[str]]:
    """Activation metrics of every SAE on its own input and spliced losses where affordable: ``{name: [N]}``
    (NaN where not computed) and notes on what was skipped."""
    from jsae.analysis import activation_metrics, hook_activations, hook_width, spliced_losses
    from jsae.io import HEAD_POINTS

    n = sae.W_enc.shape[0]
    out: dict[str, np.ndarray] = {}
    notes = []
    for (point, one_head), idx in _groups(hooks).items():
        want = hook_width(model.cfg, point, one_head)
        if sae.d_in != want:
            raise ValueError(
                f"the SAEs read d_in={sae.d_in} but {point!r}{' of one head' if one_head else ''} has "
                f"width {want} in this model: is --model the model they were trained on (or --hook/--head "
                "right)?"
            )
        sub = jax.tree.map(lambda a, idx=idx: a[idx], sae)
        layers = [hooks[i][0] for i in idx]
        heads = [hooks[i][2] for i in idx] if one_head else None
        x = hook_activations(model, tokens, lengths, layers=layers, point=point, heads=heads, batch_size=args.batch)
        parts = activation_metrics(sub, x, dense_threshold=args.dense_threshold)
        if point in HEAD_POINTS and len(idx) > args.splice_max:
            notes.append(
                f"CE/KL not computed for the {len(idx)} SAEs at {point}: more than --splice-max "
                f"{args.splice_max} per-head SAEs (each splice runs the layers after its hook once); "
                f"pass --splice-max {len(idx)} to compute them"
            )
        else:
            parts.update(
                spliced_losses(
                    model, sub, tokens, lengths, layer=layers, point=point, head=heads, batch_size=args.batch
                )
            )
        for k, v in parts.items():
            v = np.asarray(v, np.float64)
            if k not in out:
                out[k] = np.full((n, *v.shape[1:]), np.nan)
            out[k][idx] = v
    return out, notes


def _table(hooks, cols: dict[str, np.ndarray], max_rows: int = 24) -> str:
    n = len(hooks)
    rows = list(range(n)) if n <= max_rows else [*range(max_rows // 2), -1, *range(n - max_rows // 2, n)]
    width = max(len(_label(h)) for h in hooks) + 2
    lines = ["  SAE " + "hook".rjust(width) + "".join(f"{c:>10}" for c in cols)]
    for i in rows:
        if i < 0:
            lines.append(f"  ... ({n - max_rows} more in results.json)")
            continue
        lines.append(f"{i:5d} " + _label(hooks[i]).rjust(width) + "".join(f"{v[i]:10.3f}" for v in cols.values()))
    if n > 1:
        with np.errstate(all="ignore"):
            lines.append(
                "  mean"
                + " " * (width + 1)
                + "".join(f"{np.nanmean(v) if np.isfinite(v).any() else np.nan:10.3f}" for v in cols.values())
            )
    return "\n".join(lines)


def run(args) -> None:
    from jsae.analysis import max_activating_examples
    from jsae.models import UnknownModelError, load
    from jsae.sae import index

    if args.splice_max < 0:
        raise ValueError(f"--splice-max must be >= 0, got {args.splice_max}")
    sae, records, arch, paths, run_model = _load(args)
    n = sae.W_enc.shape[0]
    model_name = args.model or run_model or "smollm2-135m"
    try:
        model, tok, meta = load(model_name)
    except UnknownModelError as e:
        if args.model:
            raise
        raise UnknownModelError(
            f"the SAEs name their model {model_name!r}, which jsae cannot load here ({e}); pass --model NAME_OR_PATH"
        ) from e
    if tok is None:
        raise ValueError(f"model {model_name} has no tokenizer; evaluation needs one to read the text")
    hooks = _hooks(records, args, model.cfg)
    tokens, lengths = _tokens(tok, args)
    points = sorted({p for _, p, _ in hooks})
    layers = sorted({layer for layer, _, _ in hooks})
    span = (
        f"{layers[0]}..{layers[-1]}"
        if len(layers) > 2 and layers == list(range(layers[0], layers[-1] + 1))
        else ", ".join(map(str, layers))
    )
    print(
        f"jsae eval: {n} {arch} SAE(s) (d_in {sae.d_in}, d_sae {sae.d_sae}) at {', '.join(points)} of layer"
        f"{'s' if len(layers) > 1 else ''} {span} of {meta['name']}; {int(lengths.sum())} tokens in {len(lengths)} "
        "sequences"
    )
    t0 = time.perf_counter()
    per_sae, notes = _evaluate(model, sae, hooks, tokens, lengths, args)
    seconds = time.perf_counter() - t0
    nan = np.full(n, np.nan)
    cols = {
        "L0": per_sae["l0"],
        "expl.var": per_sae["explained_variance"],
        "cos": per_sae["cosine_similarity"],
        "dead": per_sae["dead_fraction"],
        "CE_sae": per_sae.get("ce_sae", nan),
        "CE_score": per_sae.get("ce_loss_score", nan),
        "KL_score": per_sae.get("kl_div_score", nan),
    }
    print(_table(hooks, cols))
    clean = per_sae.get("ce_clean", nan)
    print((f"clean CE {np.nanmax(clean):.3f}; " if np.isfinite(clean).any() else "") + f"{seconds:.1f} s")
    for note in notes:
        print(f"note: {note}")
    run_dir = new_run_dir(args.out, "eval")
    heads = [h for _, _, h in hooks]
    results = {
        "model": meta["name"],
        "point": points[0] if len(points) == 1 else [p for _, p, _ in hooks],
        "layers": [layer for layer, _, _ in hooks],
        "heads": None if all(h is None for h in heads) else heads,
        "tokens": int(lengths.sum()),
        "seconds": seconds,
        "sae_paths": paths,
        "notes": notes,
        "per_sae": {k: v for k, v in per_sae.items() if k != "firing_frequency"},
    }
    if args.max_activating:
        layer, point, head = hooks[0]
        examples = max_activating_examples(
            model,
            tok,
            index(sae, 0),
            tokens,
            lengths,
            latents=args.max_activating,
            layer=layer,
            point=point,
            head=head,
            k=5,
            batch_size=args.batch,
        )
        for lat, exs in examples.items():
            print(f"latent {lat}:" + ("" if exs else " never fires on this text"))
            for e in exs:
                print(f"  {e.activation:8.3f}  {e.text!r}")
        results["max_activating"] = {str(lat): [e.__dict__ for e in exs] for lat, exs in examples.items()}
    write_json(run_dir / "config.json", {"command": "eval", **vars(args), "model": model_name})
    write_json(run_dir / "results.json", results)
    np.save(run_dir / "firing_frequency.npy", per_sae["firing_frequency"].astype(np.float32))
    _plot_density(per_sae["firing_frequency"], run_dir / "feature_density.png")
    print(f"results in {run_dir}")
