"""Analysis of SAEs on language models: circuits of attention heads from discrete SAE codes, feature
absorption, evaluations, steering, faithfulness, max-activating examples, probes and k-sparse probing.

The names researchers use most are here; each submodule holds the rest of its area::

    from jsae.analysis import discover, harvest_task, compare_methods   # circuits
    from jsae.analysis import prepare_probe_data, evaluate_saes          # absorption
    from jsae.analysis import activation_metrics, spliced_losses         # evals
    jsae.analysis.circuits.roc_auc(...)                                   # the rest of an area

Submodules: :mod:`~jsae.analysis.circuits` (discovery, baselines, grading, the comparison workflow),
:mod:`~jsae.analysis.codes` (discrete codes and their scores), :mod:`~jsae.analysis.absorption` (the
absorption metrics) and :mod:`~jsae.analysis.absorption_run` (a whole run on a model: probe data, every
metric for a stack; its function ``absorption_run`` is reached through the module, whose name it shares),
:mod:`~jsae.analysis.toy_absorption`, :mod:`~jsae.analysis.evals`, :mod:`~jsae.analysis.steering`,
:mod:`~jsae.analysis.faithfulness`, :mod:`~jsae.analysis.max_activating`, :mod:`~jsae.analysis.probes`,
:mod:`~jsae.analysis.sparse_probing` and :mod:`~jsae.analysis.dictionary`.
"""

from jsae.analysis import (
    absorption,
    absorption_run,
    circuits,
    codes,
    dictionary,
    evals,
    faithfulness,
    max_activating,
    probes,
    sparse_probing,
    steering,
    toy_absorption,
)
from jsae.analysis.absorption import paper_absorption, saebench_absorption
from jsae.analysis.absorption_run import (
    AbsorptionConfig,
    AbsorptionResult,
    ProbeData,
    evaluate_saes,
    prepare_probe_data,
    train_relu_sweep,
    training_activations,
)
from jsae.analysis.circuits import (
    METHODS,
    Comparison,
    HeadScores,
    SAECodeConfig,
    TaskActivations,
    activation_patching,
    attribution_patching,
    compare_methods,
    discover,
    harvest_task,
    reference_mask,
    run_comparison,
)
from jsae.analysis.codes import discretise, edge_scores, node_scores
from jsae.analysis.dictionary import mean_max_cosine
from jsae.analysis.evals import activation_metrics, density_histogram, spliced_losses
from jsae.analysis.faithfulness import FaithfulnessCurve, faithfulness_curve
from jsae.analysis.max_activating import ActivatingExample, max_activating_examples
from jsae.analysis.probes import LinearProbe, train_probe
from jsae.analysis.sparse_probing import SparseProbingResult, k_sparse_probing
from jsae.analysis.steering import decoder_direction, generate, next_token_probs, steering_hooks

__all__ = [
    "METHODS",
    "AbsorptionConfig",
    "AbsorptionResult",
    "ActivatingExample",
    "Comparison",
    "FaithfulnessCurve",
    "HeadScores",
    "LinearProbe",
    "ProbeData",
    "SAECodeConfig",
    "SparseProbingResult",
    "TaskActivations",
    "absorption",
    "absorption_run",
    "activation_metrics",
    "activation_patching",
    "attribution_patching",
    "circuits",
    "codes",
    "compare_methods",
    "decoder_direction",
    "density_histogram",
    "dictionary",
    "discover",
    "discretise",
    "edge_scores",
    "evals",
    "evaluate_saes",
    "faithfulness",
    "faithfulness_curve",
    "generate",
    "harvest_task",
    "k_sparse_probing",
    "max_activating",
    "max_activating_examples",
    "mean_max_cosine",
    "next_token_probs",
    "node_scores",
    "paper_absorption",
    "prepare_probe_data",
    "probes",
    "reference_mask",
    "run_comparison",
    "saebench_absorption",
    "sparse_probing",
    "spliced_losses",
    "steering",
    "steering_hooks",
    "toy_absorption",
    "train_probe",
    "train_relu_sweep",
    "training_activations",
]
