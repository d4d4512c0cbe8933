"""Analysis of SAEs on language models: circuits of attention heads from discrete SAE codes, feature
absorption, evaluations, steering, faithfulness, max-activating examples, probes and k-sparse probing.

Everything is imported from here; the circuit-discovery package keeps its own namespace for the rest of
that area::

    from jsae.analysis import discover, harvest_task, compare_methods   # circuits
    from jsae.analysis import prepare_probe_data, evaluate_saes          # absorption
    from jsae.analysis import activation_metrics, spliced_losses         # evals
    jsae.analysis.circuits.roc_auc(...)                                   # the rest of circuits

The implementation is in private modules (``_absorption``, ``_absorption_run``, ``_evals``, ...).
"""

from jsae.analysis import circuits
from jsae.analysis._absorption import paper_absorption, saebench_absorption
from jsae.analysis._absorption_run import (
    AbsorptionConfig,
    AbsorptionResult,
    ProbeData,
    absorption_run,
    evaluate_saes,
    plot_absorption,
    prepare_probe_data,
    text_windows,
    train_relu_sweep,
    training_activations,
)
from jsae.analysis._codes import discretise, edge_scores, node_scores
from jsae.analysis._dictionary import mean_max_cosine
from jsae.analysis._evals import activation_metrics, density_histogram, hook_activations, hook_width, spliced_losses
from jsae.analysis._faithfulness import FaithfulnessCurve, faithfulness_curve, log_grid
from jsae.analysis._max_activating import ActivatingExample, contexts_from_stream, max_activating_examples
from jsae.analysis._probes import LinearProbe, train_probe
from jsae.analysis._sparse_probing import SparseProbingResult, k_sparse_probing
from jsae.analysis._steering import decoder_direction, generate, next_token_probs, steering_hooks
from jsae.analysis._toy_absorption import (
    ToyHierarchy,
    toy_absorption_scores,
    toy_activations,
    toy_features,
    train_toy_saes,
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

__all__ = [
    "AbsorptionConfig",
    "AbsorptionResult",
    "ActivatingExample",
    "Comparison",
    "FaithfulnessCurve",
    "HeadScores",
    "LinearProbe",
    "METHODS",
    "ProbeData",
    "SAECodeConfig",
    "SparseProbingResult",
    "TaskActivations",
    "ToyHierarchy",
    "absorption_run",
    "activation_metrics",
    "activation_patching",
    "attribution_patching",
    "circuits",
    "compare_methods",
    "contexts_from_stream",
    "decoder_direction",
    "density_histogram",
    "discover",
    "discretise",
    "edge_scores",
    "evaluate_saes",
    "faithfulness_curve",
    "generate",
    "harvest_task",
    "hook_activations",
    "hook_width",
    "k_sparse_probing",
    "log_grid",
    "max_activating_examples",
    "mean_max_cosine",
    "next_token_probs",
    "node_scores",
    "paper_absorption",
    "plot_absorption",
    "prepare_probe_data",
    "reference_mask",
    "run_comparison",
    "saebench_absorption",
    "spliced_losses",
    "steering_hooks",
    "text_windows",
    "toy_absorption_scores",
    "toy_activations",
    "toy_features",
    "train_probe",
    "train_relu_sweep",
    "train_toy_saes",
    "training_activations",
]
