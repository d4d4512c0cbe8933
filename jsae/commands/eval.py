"""``jsae eval``: evaluate SAEs (SAELens folders) on a model: activation metrics and spliced CE/KL."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from jsae.rundir import new_run_dir, write_json

# A small built-in corpus so the command runs offline with no arguments beyond --sae; pass --text for real
# evaluations (numbers from a few hundred tokens are noisy).
SAMPLE_TEXT = """\
The history of the city goes back more than two thousand years, when a small settlement grew up on the river.
In the morning she walked to the station, bought a newspaper and waited for the train to arrive.
def add(a, b):
    return a + b
The committee will meet again next week to discuss the budget and the plans for the new school.
Photosynthesis converts light energy into chemical energy stored in glucose, releasing oxygen as a by-product.
When Mary and John went to the store, John gave a drink to Mary.
The war lasted from 1914 to 1918, and the treaty was signed in the following year.
He said that the results were surprising, but the data clearly showed a strong effect of the treatment.
Prices rose by 3 percent in March, the largest monthly increase since the beginning of the year.
The cat sat on the mat and watched the birds in the garden while the rain fell softly outside.
"""


def register(sub) -> None:
    p = sub.add_parser("eval", help="evaluate SAEs on a model: L0, MSE, explained variance, dead latents, CE/KL recovered",
                       description="Load SAEs in the SAELens format (one folder, or a folder of SAE folders forming a "
                       "stack), splice each into the model at its hook and report activation metrics and the "
                       "fraction of cross-entropy and KL divergence recovered relative to zero-ablating the hook.")
    p.add_argument("--sae", required=True, help="SAELens folder (cfg.json + sae_weights.safetensors) or a folder of them")
    p.add_argument("--model", default="smollm2-135m", help="model name or path (default: %(default)s)")
    p.add_argument("--layer", type=int, default=None, help="hook layer for every SAE (default: from each cfg.json hook_name)")
    p.add_argument("--hook", default=None, help="hook point, e.g. resid_post, mlp_out, z (default: from cfg.json hook_name)")
    p.add_argument("--head", type=int, default=None, help="head for per-head z/result SAEs (default: cfg.json "
                   "hook_head_index, else all heads flattened)")
    p.add_argument("--text", default=None, help="UTF-8 text file to evaluate on (default: a short built-in sample)")
    p.add_argument("--context", type=int, default=64, help="tokens per sequence (default: %(default)s)")
    p.add_argument("--max-sequences", type=int, default=64, help="at most this many sequences (default: %(default)s)")
    p.add_argument("--batch", type=int, default=8, help="sequences per forward pass (default: %(default)s)")
    p.add_argument("--dense-threshold", type=float, default=0.1,
                   help="a latent firing on more than this fraction of tokens counts as dense (default: %(default)s)")
    p.add_argument("--max-activating", type=int, nargs="*", default=[], metavar="LATENT",
                   help="also print the top contexts of these latents of the first SAE")
    p.add_argument("--out", default="runs", help="folder for run directories (default: %(default)s)")


def _hooks(cfgs: list[dict], args) -> tuple[list[int], str, list[int] | None]:
    from jsae.io import parse_hook_name

    layers, points, heads = [], [], []
    for c in cfgs:
        layer, point = (None, None)
        if c.get("hook_name"):
            layer, point = parse_hook_name(c["hook_name"])
        layer = args.layer if args.layer is not None else layer
        point = args.hook or point
        if layer is None or point is None:
            raise ValueError("an SAE's cfg.json has no usable metadata.hook_name: pass --layer and --hook")
        layers.append(layer)
        points.append(point)
        heads.append(args.head if args.head is not None else c.get("hook_head_index"))
    if len(set(points)) != 1:
        raise ValueError(f"the SAEs read different hook points ({', '.join(sorted(set(points)))}); "
                         "evaluate each point separately or pass --hook")
    if len({h is None for h in heads}) != 1:
        raise ValueError("some SAEs name a head and others do not; pass --head or evaluate them separately")
    return layers, points[0], None if heads[0] is None else heads


def _tokens(tok, args) -> tuple[np.ndarray, np.ndarray]:
    from jsae.analysis.max_activating import contexts_from_stream

    text = Path(args.text).read_text(encoding="utf-8") if args.text else SAMPLE_TEXT
    stream = tok.encode(text)
    if len(stream) < 2:
        raise ValueError("the evaluation text has fewer than 2 tokens")
    tokens, lengths = contexts_from_stream(stream, args.context)
    keep = lengths >= 2
    return tokens[keep][: args.max_sequences], lengths[keep][: args.max_sequences]


def _plot_density(freq: np.ndarray, path: Path) -> None:
    from jsae.analysis.evals import density_histogram
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


def run(args) -> None:
    from jsae.analysis.evals import activation_metrics, hook_activations, spliced_losses
    from jsae.analysis.max_activating import max_activating_examples
    from jsae.io import load_saelens_stack
    from jsae.models import load
    from jsae.sae import index

    sae, cfgs = load_saelens_stack(args.sae)
    n = sae.W_enc.shape[0]
    model, tok, meta = load(args.model)
    if tok is None:
        raise ValueError(f"model {args.model} has no tokenizer; evaluation needs one to read the text")
    layers, point, heads = _hooks(cfgs, args)
    tokens, lengths = _tokens(tok, args)
    print(f"jsae eval: {n} {cfgs[0]['architecture']} SAE(s) (d_in {sae.d_in}, d_sae {sae.d_sae}) at {point} of layers "
          f"{sorted(set(layers))} of {meta['name']}; {int(lengths.sum())} tokens in {len(lengths)} sequences")
    t0 = time.perf_counter()
    x = hook_activations(model, tokens, lengths, layers=layers, point=point, heads=heads, batch_size=args.batch)
    metrics = activation_metrics(sae, x, dense_threshold=args.dense_threshold)
    losses = spliced_losses(model, sae, tokens, lengths, layer=layers, point=point, head=heads, batch_size=args.batch)
    seconds = time.perf_counter() - t0
    cols = {"layer": np.asarray(layers, float), "L0": metrics["l0"], "expl.var": metrics["explained_variance"],
            "cos": metrics["cosine_similarity"], "dead": metrics["dead_fraction"], "CE_sae": losses["ce_sae"],
            "CE_score": losses["ce_loss_score"], "KL_score": losses["kl_div_score"]}
    print("  SAE " + "".join(f"{c:>10}" for c in cols))
    for i in range(n):
        print(f"{i:5d} " + "".join(f"{v[i]:10.3f}" for v in cols.values()))
    print(f"clean CE {losses['ce_clean'][0]:.3f}; {seconds:.1f} s")
    run_dir = new_run_dir(args.out, "eval")
    results = {"model": meta["name"], "point": point, "layers": layers, "heads": heads, "tokens": int(lengths.sum()),
               "seconds": seconds, "sae_paths": [c["path"] for c in cfgs],
               "per_sae": {**{k: v for k, v in metrics.items() if k != "firing_frequency"}, **losses}}
    if args.max_activating:
        examples = max_activating_examples(model, tok, index(sae, 0), tokens, lengths, latents=args.max_activating,
                                           layer=layers[0], point=point, head=None if heads is None else heads[0],
                                           k=5, batch_size=args.batch)
        for lat, exs in examples.items():
            print(f"latent {lat}:" + ("" if exs else " never fires on this text"))
            for e in exs:
                print(f"  {e.activation:8.3f}  {e.text!r}")
        results["max_activating"] = {str(lat): [e.__dict__ for e in exs] for lat, exs in examples.items()}
    write_json(run_dir / "config.json", {"command": "eval", **vars(args)})
    write_json(run_dir / "results.json", results)
    np.save(run_dir / "firing_frequency.npy", metrics["firing_frequency"])
    _plot_density(metrics["firing_frequency"], run_dir / "feature_density.png")
    print(f"results in {run_dir}")
