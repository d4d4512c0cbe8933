"""The streaming pipeline: text -> model -> thousands of SAEs, fused on the device.

The drawing is one-way: ``jsae.sae`` <- ``jsae.train`` <- ``jsae.pipeline`` -> ``jsae.activations`` ->
``jsae.models``. ``jsae.train`` never imports a model; this package joins a reader of token contexts,
the activation layer (capture + shuffle buffer) and the trainer's pure step.
"""

from .contexts import ArrayContexts, ContextBatches
from .memory import MemoryEstimate, available_bytes, check_fits, estimate
from .stream import StreamPlan, plan, train_on_model

__all__ = [
    "ArrayContexts",
    "ContextBatches",
    "MemoryEstimate",
    "StreamPlan",
    "available_bytes",
    "check_fits",
    "estimate",
    "plan",
    "train_on_model",
]
