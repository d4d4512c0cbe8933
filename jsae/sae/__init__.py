"""SAE architectures: each one short file with an equinox module and its ``init``.

Build one with ``jsae.sae.<arch>.init(key, d_in, d_sae, ...)`` or many with
``jsae.sae.stack(jsae.sae.<arch>.init, keys, d_in, d_sae, ...)``. Each architecture's module exports
its record, ``ARCHITECTURE`` (a :class:`jsae.sae.Architecture`: name, ``init``, whether it takes
``k``, default hyperparameters, SAELens conversion); ``jsae.sae.registry`` collects them
(``registry.get(name)``, ``registry.of(sae)``, ``registry.register(record)``).
"""

from jsae.sae import batchtopk, gated, jumprelu, matryoshka, registry, relu, topk
from jsae.sae._auxk import use_sparse
from jsae.sae._base import (
    SAE,
    BDecInit,
    Hyper,
    Metrics,
    decoder_norms,
    geometric_median,
    init_tied_weights,
    initial_b_dec,
    normalisation_scale,
    reconstruction_metrics,
    squared_error,
)
from jsae.sae._record import BASE_TENSORS, Architecture, SAELensForm, base_tensors, saelens_b_dec_to_input
from jsae.sae._stack import concat, index, n_saes, stack, unstack
from jsae.sae.batchtopk import BatchTopKSAE, to_jumprelu
from jsae.sae.gated import GatedSAE
from jsae.sae.jumprelu import JumpReLUSAE
from jsae.sae.matryoshka import MatryoshkaSAE
from jsae.sae.relu import ReLUSAE
from jsae.sae.topk import TopKSAE

__all__ = [
    "SAE",
    "Hyper",
    "Metrics",
    "Architecture",
    "SAELensForm",
    "relu",
    "topk",
    "batchtopk",
    "jumprelu",
    "gated",
    "matryoshka",
    "registry",
    "ReLUSAE",
    "TopKSAE",
    "BatchTopKSAE",
    "JumpReLUSAE",
    "GatedSAE",
    "MatryoshkaSAE",
    "to_jumprelu",
    "stack",
    "index",
    "unstack",
    "concat",
    "n_saes",
    "geometric_median",
    "normalisation_scale",
    "reconstruction_metrics",
    "use_sparse",
    # the kit for writing an architecture of your own (docs/ARCHITECTURE.md, "Adding an architecture")
    "BDecInit",
    "decoder_norms",
    "init_tied_weights",
    "initial_b_dec",
    "squared_error",
    "BASE_TENSORS",
    "base_tensors",
    "saelens_b_dec_to_input",
]
