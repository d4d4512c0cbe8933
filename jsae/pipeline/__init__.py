"""The streaming pipeline: text -> model -> thousands of SAEs, fused on the device.

The drawing is one-way: ``jsae.sae`` <- ``jsae.train`` <- ``jsae.pipeline`` -> ``jsae.activations`` ->
``jsae.models``. ``jsae.train`` never imports a model; this package joins a reader of token contexts,
the activation layer (capture + shuffle buffer) and the trainer's engine: the model stream
(:class:`ModelSource`) and the activation cache (:func:`cache_source`) are sources of
``jsae.train.train``, and ``train_on_model`` / ``train_from_cache`` are each a source plus ``train``.
"""

from ._cached import cache_source, cached_inputs, train_from_cache, write_cache
from ._contexts import ArrayContexts, ContextBatches
from ._memory import MemoryEstimate, available_bytes, check_fits, estimate, n_params
from ._stream import ModelSource, StreamFeed, StreamPlan, plan, train_on_model

__all__ = [
    # text -> model -> SAEs
    "train_on_model",
    "ModelSource",
    "StreamFeed",
    "StreamPlan",
    "plan",
    # token contexts
    "ArrayContexts",
    "ContextBatches",
    # the activation cache: one model pass, many stacks
    "write_cache",
    "cached_inputs",
    "cache_source",
    "train_from_cache",
    # memory
    "MemoryEstimate",
    "available_bytes",
    "check_fits",
    "estimate",
    "n_params",
]
