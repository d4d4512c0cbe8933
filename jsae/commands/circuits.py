"""``jsae circuits``: find a task's circuit among all attention heads with discrete SAE codes and grade
it, with baselines, against activation patching (or a published circuit)."""

from __future__ import annotations

import time

import jax

from jsae.io import new_run_dir, write_json

TASK_NAMES = ("ioi", "greater_than", "docstring")
DEFAULT_METHODS = ("sae_stack_paired", "sae_per_head_paired", "sae_shared", "attribution_patching", "random")
DOCSTRING_L1 = 0.05  # O'Neill & Bui's lambda for the docstring task


def register(sub) -> None:
    from jsae.analysis.circuits import CODES, DISCOVERY_METHODS, WEIGHTS, SAECodeConfig

    default = SAECodeConfig()  # the SAE options' defaults are the library's

    p = sub.add_parser(
        "circuits",
        help="discover a task's circuit of attention heads with discrete SAE codes",
        description="Harvest every head's output on positive (clean, answered right) and "
        "negative (corrupted) prompts, train SAEs (one shared, or one per head, all at once), "
        "discretise each (prompt, head) to its argmax latent and score heads by codes seen only "
        "on positives (O'Neill & Bui 2024). Baselines and the reference (head-level activation "
        "patching, or a published circuit) are graded with ROC AUC and precision/recall/F1.",
    )
    p.add_argument("--model", default="smollm2-135m", help="model name or path (default: %(default)s)")
    p.add_argument(
        "--task", default="ioi", choices=TASK_NAMES + ("greater-than",), help="circuit task (default: %(default)s)"
    )
    p.add_argument(
        "--methods",
        nargs="+",
        default=list(DEFAULT_METHODS),
        choices=DISCOVERY_METHODS,
        help="methods to run and grade (default: %(default)s)",
    )
    p.add_argument(
        "--reference",
        default="activation_patching",
        choices=("activation_patching", "published"),
        help="what to grade against: activation patching of every head, or the published circuit "
        "(GPT-2 small IOI/greater-than, attn-only-4l docstring) (default: %(default)s)",
    )
    p.add_argument(
        "--prompts",
        type=int,
        default=200,
        help="clean prompts (and as many corrupted) for discovery (default: %(default)s)",
    )
    p.add_argument(
        "--reference-prompts",
        type=int,
        default=12,
        help="prompts for activation patching; its cost is heads x prompts forwards (default: %(default)s)",
    )
    p.add_argument(
        "--reference-k",
        type=int,
        default=None,
        help="size of the activation-patching reference circuit (default: 10%% of the heads)",
    )
    p.add_argument(
        "--l1",
        type=float,
        default=None,
        help=f"the paper's L1 coefficient lambda (default: {default.l1}; {DOCSTRING_L1} for docstring)",
    )
    p.add_argument("--d-sae", type=int, default=default.d_sae, help="latents of the shared SAE (default: %(default)s)")
    p.add_argument(
        "--per-head-d-sae",
        type=int,
        default=default.per_head_d_sae,
        help="latents of each per-head SAE (default: %(default)s)",
    )
    p.add_argument(
        "--per-head-l1",
        type=float,
        default=default.per_head_l1,
        help="lambda of the per-head SAEs (on per-head standardised activations) (default: %(default)s)",
    )
    p.add_argument(
        "--epochs",
        type=int,
        default=default.epochs,
        help="full-batch Adam steps of the shared SAEs (default: %(default)s)",
    )
    p.add_argument(
        "--per-head-epochs",
        type=int,
        default=default.per_head_epochs,
        help="full-batch Adam steps of the per-head SAEs (default: %(default)s)",
    )
    p.add_argument(
        "--per-head-lr",
        type=float,
        default=default.per_head_lr,
        help="learning rate of the per-head SAEs (default: %(default)s)",
    )
    p.add_argument(
        "--per-head-seeds",
        type=int,
        default=default.per_head_seeds,
        help="per-head SAEs per head (independent seeds, one stack) of sae_stack_paired (default: %(default)s)",
    )
    p.add_argument(
        "--per-head-code",
        default=default.per_head_code,
        choices=CODES,
        help="each row's code in sae_stack_paired: its argmax latent, its top-k latents, or every active one "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--per-head-top-k",
        type=int,
        default=default.per_head_top_k,
        help="latents in a top-k code (default: %(default)s)",
    )
    p.add_argument(
        "--per-head-weight",
        default=default.per_head_weight,
        choices=WEIGHTS,
        help="how a code change counts in sae_stack_paired: none (Jaccard distance of the latent sets) or "
        "decoder (the changed latents' decoder norms in the residual stream) (default: %(default)s)",
    )
    p.add_argument(
        "--per-head-full-width",
        action="store_true",
        help="train the per-head SAEs at the head's full width even when the prompts are few (default: with "
        "at most half as many rows as the width, train in the rows' own coordinates, the same geometry)",
    )
    p.add_argument(
        "--n-train", type=int, default=default.n_train, help="training prompts, half positive (default: %(default)s)"
    )
    p.add_argument(
        "--point",
        default="result",
        choices=("result", "z"),
        help="per-head activation: result (after W_O) or z (before) (default: %(default)s)",
    )
    p.add_argument(
        "--positions",
        default="mean",
        choices=("mean", "last"),
        help="average over positions (paper) or take the last one (default: %(default)s)",
    )
    p.add_argument("--top", type=int, default=15, help="ranked heads to print per method (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="PRNG seed for prompts and SAEs (default: %(default)s)")
    p.add_argument("--out", default="runs", help="folder for run directories (default: %(default)s)")


def _published(meta: dict, model, task: str):
    from jsae.analysis.circuits import PUBLISHED_CIRCUITS, head_mask_from_list

    name = str(meta.get("name", "")).lower()
    family = "gpt2" if name == "gpt2" else name
    if (family, task) not in PUBLISHED_CIRCUITS:
        known = ", ".join(f"{m} {t}" for m, t in PUBLISHED_CIRCUITS)
        raise ValueError(
            f"no published circuit for model {name!r} and task {task!r} (known: {known}); "
            "use --reference activation_patching"
        )
    heads, source = PUBLISHED_CIRCUITS[(family, task)]
    return head_mask_from_list(heads, model.cfg.n_layers, model.cfg.n_heads), f"published ({source})"


def run(args) -> None:
    from jsae.analysis.circuits import ACTIVATION_METHODS, SAECodeConfig, plot_roc, run_comparison, stack_variant
    from jsae.models import load
    from jsae.tasks import TASKS

    task_name = args.task.replace("-", "_")
    for name in ("prompts", "reference_prompts", "epochs", "per_head_epochs", "n_train", "d_sae", "per_head_d_sae"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.n_train < 2:
        raise ValueError("--n-train must be >= 2 (at least one positive and one negative prompt)")
    l1 = args.l1 if args.l1 is not None else (DOCSTRING_L1 if task_name == "docstring" else SAECodeConfig().l1)
    if args.per_head_l1 < 0:
        raise ValueError(f"--per-head-l1 must be >= 0, got {args.per_head_l1}")
    if args.per_head_lr <= 0:
        raise ValueError(f"--per-head-lr must be > 0, got {args.per_head_lr}")
    sae_cfg = SAECodeConfig(
        d_sae=args.d_sae,
        per_head_d_sae=args.per_head_d_sae,
        l1=l1,
        epochs=args.epochs,
        n_train=args.n_train,
        per_head_l1=args.per_head_l1,
        per_head_epochs=args.per_head_epochs,
        per_head_lr=args.per_head_lr,
        per_head_basis=not args.per_head_full_width,
        per_head_seeds=args.per_head_seeds,
        per_head_code=args.per_head_code,
        per_head_top_k=args.per_head_top_k,
        per_head_weight=args.per_head_weight,
    )
    stack_variant(sae_cfg)  # checks the per-head code settings (one clear error) before the model runs
    t0 = time.perf_counter()
    model, tok, meta = load(args.model)
    if tok is None:
        raise ValueError(f"model {args.model!r} has no tokenizer; circuit tasks need one (tokenizer.json)")
    gen = TASKS[task_name]
    task = gen(tok, args.prompts, seed=args.seed)
    reference_task = gen(tok, args.reference_prompts, seed=args.seed + 1)
    reference_heads, reference_name = None, "activation_patching"
    if args.reference == "published":
        reference_heads = _published(meta, model, task_name)
        reference_name = reference_heads[1]
    cfg = model.cfg
    print(
        f"jsae circuits: {task_name} on {meta.get('name', args.model)} ({cfg.n_layers} layers x {cfg.n_heads} heads = "
        f"{cfg.n_layers * cfg.n_heads} heads), {len(task)} clean + {len(task)} corrupted prompts; {task.note}"
    )
    # time the first SAE method on the reference prompts too, against patching of every head on them
    sae_methods = [m for m in args.methods if m in ACTIVATION_METHODS and m != "activation_difference"]
    res = run_comparison(
        model,
        tok,
        task,
        reference_task,
        args.methods,
        key=jax.random.key(args.seed),
        sae_config=sae_cfg,
        reference_k=args.reference_k,
        reference_heads=reference_heads,
        point=args.point,
        positions=args.positions,
        equal_prompts_method=sae_methods[0] if sae_methods else None,
    )
    details = res.pop("_details")
    print(
        f"model accuracy {res['model_accuracy']:.2f}: {res['n_pos']} positives, {res['n_neg']} negatives; "
        f"reference: {reference_name}, {details['reference_k']} heads"
    )
    print(
        f"  {'method':<22s} {'AUC':>6s} {'P@k':>6s} {'R@k':>6s} {'F1@k':>6s} {'bestF1':>7s} "
        f"{'TPR/TNR-F1':>11s} {'seconds':>8s}"
    )
    for method, m in res["methods"].items():
        ev = details["evaluation"][method]
        print(
            f"  {method:<22s} {m['auc']:6.3f} {ev['at_k']['precision']:6.2f} {ev['at_k']['recall']:6.2f} "
            f"{ev['at_k']['f1']:6.2f} {ev['best']['f1']:7.2f} {ev['best_authors_f1_tpr_tnr']:11.2f} {m['seconds']:8.1f}"
        )
    reference_set = set(details["reference_heads"])
    for method, m in res["methods"].items():
        ranked = " ".join(h + ("*" if h in reference_set else "") for h in m["top_heads"][: args.top])
        print(f"  top heads, {method}: {ranked}")
    print("  (* = in the reference circuit)")
    if "speed_at_equal_prompts" in res:
        eq = res["speed_at_equal_prompts"]
        print(
            f"speed on the same {eq['n_prompts']} clean + {eq['n_prompts']} corrupted prompts: {eq['method']} "
            f"{eq['sae_seconds']:.1f} s (harvest + train + score; AUC {eq['sae_auc']:.3f}) vs activation patching "
            f"of every head {eq['activation_patching_seconds']:.1f} s: {eq['speedup']:.1f}x faster"
        )
    for method in sae_methods:
        print(
            f"  {method} on all {res['n_pos'] + res['n_neg']} discovery prompts, harvest included: "
            f"{res['methods'][method]['seconds']:.1f} s"
        )
    run_dir = new_run_dir(args.out, f"circuits-{task_name}")
    write_json(run_dir / "config.json", {"command": "circuits", **vars(args), "l1": l1})
    write_json(run_dir / "results.json", {**res, "details": details})
    plot_roc([{**res, "_details": details}], run_dir / "roc.png", f"{task_name} on {meta.get('name', args.model)}")
    print(f"{time.perf_counter() - t0:.0f} s in all; results in {run_dir}")
