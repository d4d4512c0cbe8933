"""The vmapped trainer: one program trains N SAEs of any architecture, with any optax optimizer.

- ``train(sae, source, cfg, ...)``: the engine, the one host loop (checkpoints, progress, NaN checks,
  scale folding) over any :class:`Source` of batches: arrays, iterators, the model stream
  (``jsae.pipeline.ModelSource``) and the activation cache (``jsae.pipeline.CacheSource``).
- ``fit(sae_or_state, data, cfg, ...)``: a whole run as one pure, jittable function.
- ``make_step`` / ``make_stack_step``: one SAE's pure step and a stack's, from an optimizer and a loss.
"""

from jsae.runtime import use_cpu_cores
from jsae.train._checkpoint import CheckpointError
from jsae.train._config import TrainConfig
from jsae.train._fit import fit
from jsae.train._grouping import free_device_bytes, group_size
from jsae.train._loop import TrainingDiverged, TrainResult, train
from jsae.train._optim import make_optimizer, set_hyperparams
from jsae.train._sharding import (
    AXIS,
    PerformanceWarning,
    pad_leading,
    padded_size,
    replicate,
    sae_mesh,
    shard_leading,
)
from jsae.train._source import ArraySource, Chunk, Feed, IteratorSource, Source, as_source
from jsae.train._step import LossFn, TrainState, init_sae_state, init_state, make_stack_step, make_step, sae_loss

__all__ = [
    # the engine and its sources
    "train",
    "TrainConfig",
    "TrainResult",
    "TrainingDiverged",
    "CheckpointError",
    "Source",
    "Chunk",
    "Feed",
    "ArraySource",
    "IteratorSource",
    "as_source",
    # a whole run as one pure function
    "fit",
    # steps, state and optimizers
    "make_step",
    "make_stack_step",
    "sae_loss",
    "LossFn",
    "TrainState",
    "init_sae_state",
    "init_state",
    "make_optimizer",
    "set_hyperparams",
    # devices
    "sae_mesh",
    "group_size",
    "use_cpu_cores",
    "PerformanceWarning",
    "AXIS",
    "pad_leading",
    "padded_size",
    "shard_leading",
    "replicate",
    "free_device_bytes",
]
