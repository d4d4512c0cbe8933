"""Which lever of the per-head SAE-code method is worth what? Variants against attribution patching.

    python experiments/circuits_reference.py     # first: the 100-prompt reference
    python experiments/circuits_variants.py      # -> results/circuits_variants.json + .png

For each task (IOI and greater-than; docstring once ``circuits_reference.py --tasks docstring`` has
written its reference) on SmolLM2-135M: n = 5, 10, 20 discovery prompts (clean + their corruptions)
drawn from the seed-0 pool of 200 by ``Task.sample(n, draw)`` for 5 draws (as
``circuits_examples.py``). Per draw one forward harvests every head's ``z`` at every position; ``result``
is ``z @ W_O`` per head, and each variant's rows (the per-prompt mean, the final position, the key
positions of :func:`jsae.analysis.circuits.key_positions`, or all positions) come from it. The
variants of :data:`VARIANTS` train in one stack per family (:func:`jsae.analysis.circuits.family_scores`:
seeds x sparsities x 270 heads), keyed by the draw. Every variant trains on all of the draw's pairs
(clean prompts the model gets wrong included: no correctness pass), unlike ``sae_per_head_paired``
(the current default method, also run here), which trains on ``n_train = 10`` rows of the right clean
prompts and all corruptions.

Grading, side by side with attribution patching (|effect|, on the same draw) and activation difference:
AUC against the 100-prompt reference (top 10% by |effect|) and against its heads certain at 2 standard
errors. Faithfulness (:mod:`jsae.analysis._faithfulness`) of each ranking at ``--faithful-sizes`` (n = 10),
draws ``--faithful-draws``: on 20 held-out prompts (seed 4, as ``circuits_faithfulness.py``), heads
outside the top k patched from the corrupted prompt, area and the smallest k recovering 80%. AUCs for
every task come first (draw by draw, each task and n within a draw), then faithfulness; the JSON is
rewritten after every step, so a cut run leaves every finished number (``"complete": false`` until the
end). Every ranking's scores go to ``results/circuits_variants.scores.npz`` (key ``task/n/draw/method``).

    python experiments/circuits_variants.py --smoke   # tiny: IOI, n = 4, one draw, 3 variants
    python experiments/circuits_variants.py --faithful-only --faithful-draws 0 --faithful-methods default ...
    python experiments/circuits_variants.py --add --tasks docstring --variants levers combos   # add a task
    python experiments/circuits_variants.py --add --variants combos --sizes 10    # add variants (COMBOS)

``--add`` keeps what ``--out`` already holds (other tasks, methods, sizes, and each draw's numbers that
this run does not recompute, faithfulness included) and adds or replaces this run's.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from jsae.runtime import prepare_process

prepare_process()  # one CPU device per core, persistent compilation cache

import jax
import jax.numpy as jnp

from jsae.analysis import faithfulness_curve, log_grid
from jsae.analysis.circuits import (
    CodeVariant,
    SAECodeConfig,
    activation_difference_scores,
    attribution_patching,
    paired_rows,
    roc_auc,
    sae_code_scores,
    stack_variant,
    variant_scores,
)
from jsae.io import write_json
from jsae.models import capture, forward, harvest, load, pad_sequences
from jsae.plots import figure, save
from jsae.tasks import Task, docstring, greater_than, held_out, ioi

OUT = Path(__file__).resolve().parent.parent / "results"
TASKS = {"ioi": ioi, "greater_than": greater_than, "docstring": docstring}
POOL_SEED, POOL_N = 0, 200
FAITHFUL_SEED, N_FAITHFUL = 4, 20
EXCLUDE = ((0, 200), (3, 400))  # (seed, n) of the discovery pool and of the reference draw

_D = CodeVariant()
VARIANTS: tuple[CodeVariant, ...] = (
    # result, per-prompt mean: the current SAEs; sparsity sweep, seeds, codes, decoder weighting (one stack)
    _D,
    *(CodeVariant(l1=c) for c in (0.0025, 0.005, 0.02, 0.04, 0.08)),
    CodeVariant(seeds=5),
    CodeVariant(seeds=5, combine="vote"),
    CodeVariant(code="topk", top_k=2),
    CodeVariant(code="topk", top_k=3),
    CodeVariant(code="active"),
    CodeVariant(weight="decoder"),
    CodeVariant(code="active", weight="decoder"),
    # dictionary size
    CodeVariant(d_sae=8),
    CodeVariant(d_sae=32),
    # positions (result)
    *(CodeVariant(positions=p) for p in ("final", "key")),
    *(CodeVariant(positions=p, seeds=5) for p in ("final", "key")),
    *(CodeVariant(positions=p, code="active") for p in ("final", "key")),
    *(CodeVariant(positions=p, weight="decoder") for p in ("final", "key")),
    # hook point z
    *(CodeVariant(point="z", positions=p) for p in ("mean", "final", "key")),
    *(CodeVariant(point="z", positions=p, weight="decoder") for p in ("mean", "final", "key")),
    CodeVariant(point="z", positions="all"),
    CodeVariant(point="z", positions="all", code="active"),
)
COMBOS: tuple[CodeVariant, ...] = (
    # the two levers that help (seeds, top-k codes) together, with decoder weighting; one 10-seed stack
    *(CodeVariant(seeds=5, code="topk", top_k=k, weight=w) for k in (2, 3) for w in ("none", "decoder")),
    CodeVariant(seeds=5, code="active"),
    *(CodeVariant(seeds=10, code="topk", top_k=k) for k in (2, 3)),
)
SMOKE_VARIANTS = (_D, CodeVariant(l1=0.04, code="active"), CodeVariant(point="z", positions="key", weight="decoder"))
LEVERS = (_D, CodeVariant(seeds=5), *(CodeVariant(code="topk", top_k=k) for k in (2, 3)), CodeVariant(code="active"))
LIBRARY = (stack_variant(SAECodeConfig()),)  # the default method of discover (sae_stack_paired)
VARIANT_SETS = {"all": VARIANTS, "combos": COMBOS, "levers": LEVERS, "library": LIBRARY}
BASELINES = ("attribution_patching", "activation_difference", "sae_per_head_paired")


def reference_masks(name: str, n_heads: int) -> dict[str, np.ndarray]:
    """The 100-prompt reference (top 10%) and its heads certain at 2 standard errors, as bool masks."""
    ref = json.loads((OUT / "circuits_reference.json").read_text())
    if name not in ref:
        raise SystemExit(
            f"no reference for {name!r} in results/circuits_reference.json: run circuits_reference.py first"
        )
    out = {}
    for key, heads in (("reference_100", ref[name]["reference_top10"]), ("certain_2se", ref[name]["certain_2se"])):
        m = np.zeros(n_heads, bool)
        m[heads] = True
        out[key] = m
    return out


def discover_all(model, tok, task: Task, variants, key) -> dict[str, np.ndarray]:
    """Every variant's and baseline's ranking scores ``[L*H]`` on one draw (|effect| for patching)."""
    cfg = model.cfg
    H = cfg.n_layers * cfg.n_heads
    tokens = [tok.encode(p) for p in task.clean + task.corrupted]
    z = harvest(model, tokens, point="z", positions="all", progress=False)  # [L*H, N, dh]
    w_o = np.asarray(model.blocks.W_O).reshape(H, cfg.d_head, cfg.d_model)
    lengths = [len(t) for t in tokens]
    n = len(task)
    acts = {"z": z, "result": None}
    rows = {}
    for v in variants:
        if (v.point, v.positions) in rows:
            continue
        if v.point == "result" and acts["result"] is None:
            acts["result"] = np.einsum("hnd,hdD->hnD", z, w_o)
        a = acts[v.point]
        assert a is not None
        rows[(v.point, v.positions)] = paired_rows(
            a, lengths, n, v.positions, tokens=tokens, w_o=w_o if v.point == "z" else None
        )
    scores = variant_scores(key, rows, variants)
    out = {v.name: s for v, s in zip(variants, scores)}
    mean = rows.get(("result", "mean")) or paired_rows(np.einsum("hnd,hdD->hnD", z, w_o), lengths, n, "mean")
    positive = np.arange(2 * n) < n
    out["activation_difference"] = activation_difference_scores(mean.acts, positive, mean.corrupted).scores
    out["sae_per_head_paired"] = sae_code_scores(
        key, mean.acts, positive, "sae_per_head_paired", pair=mean.corrupted
    ).scores
    out["attribution_patching"] = np.abs(attribution_patching(model, tok, task).scores)
    return out


def summarise(rows: list[dict]) -> dict:
    keys = sorted({k for r in rows for k in r if isinstance(r[k], (int, float)) and r[k] is not None})
    out = {}
    for k in keys:
        v = [r[k] for r in rows if r.get(k) is not None]
        out[f"{k}_mean"] = float(np.mean(v))
        out[f"{k}_sd"] = float(np.std(v, ddof=1)) if len(v) > 1 else None
    return {**out, "runs": rows}


def run(args, model=None, tok=None) -> dict:
    t_start = time.perf_counter()
    if model is None:
        model, tok, _ = load("smollm2-135m")
    assert tok is not None
    variants = SMOKE_VARIANTS if args.smoke else tuple(dict.fromkeys(v for s in args.variants for v in VARIANT_SETS[s]))
    names = [v.name for v in variants] + list(BASELINES)
    H = model.cfg.n_layers * model.cfg.n_heads
    path = Path(args.out)
    found: dict = {}  # (task, n, draw) -> {method: scores}
    auc: dict = {}  # task -> method -> n -> [one dict per draw]
    if args.faithful_only or args.add:  # an earlier (possibly cut) run's numbers and rankings
        if not path.exists():
            raise SystemExit(f"--add / --faithful-only read {path}, which does not exist: run without them first")
        results = json.loads(path.read_text())
        auc = {
            t: {m: {int(n): s["runs"] for n, s in per_n.items()} for m, per_n in results[t].items()}
            for t in TASKS
            if t in results
        }
        with np.load(path.with_suffix(".scores.npz")) as z:
            for k in z.files:
                t, n, d, m = k.split("/", 3)
                found.setdefault((t, int(n), int(d)), {})[m] = z[k]
        seconds_before = float(results["settings"].get("seconds", 0.0))
        if args.faithful_only:
            args.tasks = [t for t in args.tasks if t in results]
            args.sizes = list(results["settings"]["sizes"])
        else:
            settings = results["settings"]
            settings["sizes"] = sorted(set(settings["sizes"]) | set(args.sizes))
            settings["draws"] = max(settings["draws"], args.draws)
            settings["variants"] = {**settings["variants"], **{v.name: v.__dict__ for v in variants}}
            results["complete"] = False
    else:
        results = {
            "settings": {
                "model": "smollm2-135m",
                "sizes": args.sizes,
                "draws": args.draws,
                "pool": f"seed {POOL_SEED}, {POOL_N} prompts; Task.sample(n, draw)",
                "reference_100": "results/circuits_reference.json: top 10% by |effect| on 100 held-out prompts",
                "certain_2se": "heads with |effect| >= 2 standard errors on those prompts",
                "variants": {v.name: v.__dict__ for v in variants},
                "baselines": list(BASELINES),
                "smoke": args.smoke,
            },
            "complete": False,
        }
        seconds_before = 0.0
    if not args.faithful_only:
        for t in args.tasks:
            for m in names:
                for n in args.sizes:
                    auc.setdefault(t, {}).setdefault(m, {}).setdefault(n, [])

    def write():
        for t in auc:
            results[t] = {m: {str(n): summarise(r) for n, r in sorted(per_n.items())} for m, per_n in auc[t].items()}
        results["settings"]["draws_done"] = {
            t: min(len(r) for per_n in auc[t].values() for r in per_n.values()) for t in auc
        }
        results["settings"]["seconds"] = seconds_before + time.perf_counter() - t_start
        write_json(path, results)
        np.savez_compressed(
            path.with_suffix(".scores.npz"),
            **{f"{t}/{n}/{d}/{m}": s for (t, n, d), got in found.items() for m, s in got.items()},
        )

    if not args.faithful_only:
        auc_pass(model, tok, args, variants, names, found, auc, write)
    faithful = args.faithful_methods or names
    passes = results["settings"].get("faithfulness", [])  # one entry per faithfulness pass over the rankings
    results["settings"]["faithfulness"] = [
        *(passes if isinstance(passes, list) else [passes]),
        (
            f"{args.faithful_prompts} held-out prompts (seed {FAITHFUL_SEED}); heads outside the top k patched from "
            f"the corrupted prompt; k on log_grid(270, {args.faithful_points}); n in {args.faithful_sizes}, draws "
            f"{args.faithful_draws}, methods: {'all' if faithful == names else faithful}"
        ),
    ]
    ks = log_grid(H, args.faithful_points)
    held = {t: faithfulness_inputs(model, tok, t, args.faithful_prompts) for t in args.tasks}
    for draw in args.faithful_draws:  # draws outermost, as the AUC pass
        for t in args.tasks:
            c, lengths, ft, source = held[t]
            for n in args.faithful_sizes:
                if (t, n, draw) not in found:
                    continue
                for m in faithful:
                    if m not in found[(t, n, draw)] or len(auc[t].get(m, {}).get(n, [])) <= draw:
                        continue
                    if args.add and "faithful_area" in auc[t][m][n][draw]:  # kept: the same ranking as before
                        continue
                    curve = faithfulness_curve(
                        model, c, lengths, ft.correct, ft.incorrect, ft.metric, found[(t, n, draw)][m], source, ks
                    )
                    auc[t][m][n][draw].update(faithful_area=curve.area, faithful_k80=curve.smallest_k(0.8))
                print(f"{t} faithfulness draw {draw} n {n} done", flush=True)
                write()
    if not args.faithful_only:
        results["complete"] = True
    write()
    sizes = results["settings"]["sizes"]
    plot(results, [t for t in TASKS if t in results], path.with_suffix(".png"), n=10 if 10 in sizes else sizes[0])
    print(f"wrote {path} and .png")
    return results


def faithfulness_inputs(model, tok, name: str, n: int):
    """The held-out prompts of a faithfulness curve: clean tokens, lengths, the task, the corrupted run's
    ``result`` (the ablation value)."""
    ft = held_out(tok, TASKS[name], n, FAITHFUL_SEED, EXCLUDE)  # prompts in no discovery or reference draw
    clean = [tok.encode(p) for p in ft.clean]
    T = max(len(s) for s in clean)
    c, lengths = pad_sequences(clean, tok.pad_id, pad_to=T)
    x, _ = pad_sequences([tok.encode(p) for p in ft.corrupted], tok.pad_id, pad_to=T)
    _, cache = forward(model, jnp.asarray(x), hooks=capture("result"), lengths=jnp.asarray(lengths), logits=False)
    return c, lengths, ft, np.asarray(cache["result"])


def auc_pass(model, tok, args, variants, names, found: dict, auc: dict, write) -> None:
    """Every draw's rankings (into ``found``) and their AUCs (into ``auc``), writing after each."""
    H = model.cfg.n_layers * model.cfg.n_heads
    refs = {t: reference_masks(t, H) for t in args.tasks}
    pools = {t: TASKS[t](tok, POOL_N, seed=POOL_SEED) for t in args.tasks}
    for draw in range(args.draws):  # draws outermost: a cut run has every task and n for its first draws
        for t in args.tasks:
            for n in args.sizes:
                task = pools[t].sample(n, draw)
                got = discover_all(model, tok, task, variants, jax.random.key(draw))
                found.setdefault((t, n, draw), {}).update(got)
                for m in names:
                    row = {f"auc_{k}": roc_auc(got[m], ref) for k, ref in refs[t].items()}
                    runs = auc[t][m][n]
                    if len(runs) < draw:
                        raise RuntimeError(f"{t} {m} n={n} holds {len(runs)} draws; cannot add draw {draw}")
                    if len(runs) > draw:  # --add: this draw's faithfulness (if measured) stays
                        runs[draw].update(row)
                    else:
                        runs.append(row)
                print(
                    f"{t} draw {draw} n {n:2d}: "
                    + "  ".join(f"{m[:24]} {auc[t][m][n][draw]['auc_reference_100']:.3f}" for m in names[:4])
                    + f"  attribution {auc[t]['attribution_patching'][n][draw]['auc_reference_100']:.3f}",
                    flush=True,
                )
                write()


def table(results: dict) -> str:
    """Markdown: per method, AUC vs the 100-prompt reference (mean ± sd over the draws done) at each n and
    task, and the faithfulness area / k@80% where measured; sorted by the mean AUC at n = 10."""
    tasks = [t for t in TASKS if t in results]
    sizes = [str(n) for n in results["settings"]["sizes"]]

    def cell(s: dict, k: str) -> str:
        if f"{k}_mean" not in s:
            return ""
        sd = s.get(f"{k}_sd")
        return f"{s[f'{k}_mean']:.3f}" + ("" if sd is None else f" ± {sd:.3f}")

    head = ["method"] + [f"{t} n={n}" for t in tasks for n in sizes] + [f"{t} faithful area / k80" for t in tasks]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    mid = "10" if "10" in sizes else sizes[0]

    def at(t: str, m: str, n: str) -> dict:
        return results[t].get(m, {}).get(n, {})

    methods = list(dict.fromkeys(m for t in tasks for m in results[t]))
    order = sorted(methods, key=lambda m: -np.mean([at(t, m, mid).get("auc_reference_100_mean", 0) for t in tasks]))
    for m in order:
        row = [m] + [cell(at(t, m, n), "auc_reference_100") for t in tasks for n in sizes]
        for t in tasks:
            s = at(t, m, mid)
            area, k80 = cell(s, "faithful_area"), cell(s, "faithful_k80")
            row.append(f"{area} / {k80}" if area else "")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def plot(results: dict, tasks, path: Path, n: int) -> None:
    """Per task, every method's AUC at ``n`` prompts (mean ± sd over draws), sorted; a line at
    attribution patching's mean."""
    fig, axes = figure(6.0 * len(tasks), 0.22 * max(len(results[t]) for t in tasks) + 1.5, ncols=len(tasks))
    for ax, t in zip(np.atleast_1d(axes), tasks):
        rows = [(m, r.get(str(n), {})) for m, r in results[t].items()]
        rows = [
            (m, s["auc_reference_100_mean"], s.get("auc_reference_100_sd") or 0.0) for m, s in rows if s.get("runs")
        ]
        rows.sort(key=lambda r: r[1])
        y = np.arange(len(rows))
        ax.errorbar([r[1] for r in rows], y, xerr=[r[2] for r in rows], fmt="o", ms=3)
        ax.set_yticks(y, [r[0] for r in rows], fontsize=6)
        ax.axvline(results[t]["attribution_patching"][str(n)]["auc_reference_100_mean"], ls=":", c="k")
        ax.set_xlabel(f"AUC vs 100-prompt patching, n = {n} (mean ± sd)")
        ax.set_title(t)
    save(fig, path)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--tasks", nargs="+", choices=tuple(TASKS), default=["ioi", "greater_than"])
    ap.add_argument("--sizes", nargs="+", type=int, default=[5, 10, 20])
    ap.add_argument("--draws", type=int, default=5)
    ap.add_argument(
        "--variants",
        nargs="+",
        choices=tuple(VARIANT_SETS),
        default=["all"],
        help="variant sets to run: all (VARIANTS, every lever alone), combos (COMBOS), levers (LEVERS, the levers "
        "that help, alone), library (the default of discover) (default: %(default)s)",
    )
    ap.add_argument(
        "--add",
        action="store_true",
        help="keep what --out holds (other tasks, methods, sizes, faithfulness) and add or replace this run's",
    )
    ap.add_argument("--faithful-sizes", nargs="+", type=int, default=[10])
    ap.add_argument("--faithful-draws", nargs="*", type=int, default=[0, 1, 2, 3, 4], help="none: AUCs only")
    ap.add_argument("--faithful-prompts", type=int, default=N_FAITHFUL)
    ap.add_argument("--faithful-points", type=int, default=10, help="circuit sizes on the log grid")
    ap.add_argument("--faithful-methods", nargs="+", default=None, help="rankings to draw curves for (default all)")
    ap.add_argument(
        "--faithful-only",
        action="store_true",
        help="no discovery: faithfulness of the rankings in --out's scores (.scores.npz), written into --out",
    )
    ap.add_argument(
        "--table", action="store_true", help="print --out's results as a markdown table, redraw its plot, and stop"
    )
    ap.add_argument("--out", default=str(OUT / "circuits_variants.json"))
    ap.add_argument("--smoke", action="store_true", help="IOI, n = 4, one draw, 3 variants, 4 faithfulness prompts")
    return ap


def parse(argv=None) -> argparse.Namespace:
    args = parser().parse_args(argv)
    if args.smoke:
        args.tasks, args.sizes, args.draws = ["ioi"], [4], 1
        args.faithful_sizes, args.faithful_draws, args.faithful_prompts, args.faithful_points = [4], [0], 4, 3
    return args


if __name__ == "__main__":
    cli = parse()
    if cli.table:
        saved = json.loads(Path(cli.out).read_text())
        print(table(saved))
        done = [t for t in TASKS if t in saved]
        plot(saved, done, Path(cli.out).with_suffix(".png"), n=10 if 10 in saved["settings"]["sizes"] else 5)
    else:
        run(cli)
