"""Circuit discovery on attention heads: discrete SAE codes (O'Neill & Bui 2024) and the baselines they are
graded against (activation patching, attribution patching, activation difference, random), plus ROC
evaluation and the comparison workflow of ``jsae circuits``.

Heads are flattened layer-major: index ``layer * n_heads + head`` (``H = n_layers * n_heads``).
Every method is an entry of :data:`METHODS` (name -> :class:`CircuitMethod`), called with one signature;
:func:`discover` looks it up. :func:`run_comparison` is the whole workflow (harvest, every method timed,
activation patching, grading) that the CLI and ``experiments/circuits_smollm2.py`` run.

Typical use::

    model, tok, _ = jsae.models.load("smollm2-135m")
    task = jsae.tasks.ioi(tok, 500)
    acts = harvest_task(model, tok, task)                       # once, shared by the activation methods
    found = {m: discover(model, tok, task, m, key=jax.random.key(0), activations=acts)
             for m in ("sae_shared", "activation_difference", "random")}
    patched = activation_patching(model, tok, task.subset(range(16)))
    graded = compare_methods(found, reference_mask(patched, 27))
    print(graded.auc)                                            # {method: AUC}

The implementation is in private modules: ``_ground_truth`` (published circuits), ``_grading`` (ROC AUC,
precision/recall), ``_harvest`` (per-head activations of a task), ``_baselines`` (patching, activation
difference, random), ``_codes`` (the SAE-code methods), ``_methods`` (the registry) and ``_compare``
(grading several methods, the comparison workflow) and ``_variants`` (families of per-head
SAE-code variants, each family one stack).
"""

from jsae.analysis.circuits._baselines import (
    PatchingEffects,
    activation_difference_scores,
    activation_patching,
    attribution_patching,
    metrics_with_heads_replaced,
    patching_effects,
    random_scores,
    single_head_masks,
)
from jsae.analysis.circuits._codes import (
    PAIRED_METHODS,
    SAE_METHODS,
    Codes,
    CodeScore,
    SAECodeConfig,
    SAEMethod,
    fit_per_head,
    fit_stack,
    per_head_codes,
    row_basis,
    sae_code_scores,
    shared_codes,
    standardise_heads,
    standardise_with_scale,
)
from jsae.analysis.circuits._compare import (
    Comparison,
    compare_methods,
    plot_roc,
    ranking_scores,
    reference_mask,
    run_comparison,
    run_methods,
)
from jsae.analysis.circuits._grading import average_ranks, evaluate, roc_auc, roc_curve, top_k_mask
from jsae.analysis.circuits._ground_truth import (
    ATTN_ONLY_4L_DOCSTRING_HEADS,
    GPT2_GREATER_THAN_HEADS,
    GPT2_IOI_HEADS,
    PUBLISHED_CIRCUITS,
    head_mask_from_list,
    head_names,
)
from jsae.analysis.circuits._harvest import TaskActivations, harvest_task
from jsae.analysis.circuits._methods import (
    ACTIVATION_METHODS,
    DISCOVERY_METHODS,
    METHODS,
    CircuitMethod,
    MethodInputs,
    discover,
    stack_variant,
)
from jsae.analysis.circuits._scores import HeadScores
from jsae.analysis.circuits._variants import (
    CODES,
    WEIGHTS,
    CodeVariant,
    PairedRows,
    code_change_scores,
    combine_seeds,
    decoder_norms,
    family_scores,
    key_positions,
    paired_rows,
    variant_scores,
)

__all__ = [
    "CODES",
    "WEIGHTS",
    "standardise_with_scale",
    "fit_stack",
    "variant_scores",
    "paired_rows",
    "key_positions",
    "family_scores",
    "decoder_norms",
    "combine_seeds",
    "code_change_scores",
    "PairedRows",
    "CodeVariant",
    "ACTIVATION_METHODS",
    "ATTN_ONLY_4L_DOCSTRING_HEADS",
    "DISCOVERY_METHODS",
    "GPT2_GREATER_THAN_HEADS",
    "GPT2_IOI_HEADS",
    "METHODS",
    "PAIRED_METHODS",
    "PUBLISHED_CIRCUITS",
    "SAE_METHODS",
    "CircuitMethod",
    "CodeScore",
    "Codes",
    "Comparison",
    "HeadScores",
    "MethodInputs",
    "PatchingEffects",
    "SAECodeConfig",
    "SAEMethod",
    "TaskActivations",
    "activation_difference_scores",
    "activation_patching",
    "attribution_patching",
    "average_ranks",
    "compare_methods",
    "discover",
    "stack_variant",
    "evaluate",
    "fit_per_head",
    "harvest_task",
    "head_mask_from_list",
    "head_names",
    "metrics_with_heads_replaced",
    "patching_effects",
    "per_head_codes",
    "plot_roc",
    "random_scores",
    "ranking_scores",
    "reference_mask",
    "roc_auc",
    "roc_curve",
    "row_basis",
    "run_comparison",
    "run_methods",
    "sae_code_scores",
    "shared_codes",
    "single_head_masks",
    "standardise_heads",
    "top_k_mask",
]
