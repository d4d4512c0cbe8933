"""The vmapped trainer: one program trains N SAEs of any architecture, with any optax optimizer."""

from jsae.runtime import use_cpu_cores
from jsae.train.checkpoint import CheckpointError
from jsae.train.config import TrainConfig
from jsae.train.grouping import group_size
from jsae.train.loop import TrainingDiverged, TrainResult, train
from jsae.train.optim import make_optimizer, set_hyperparams
from jsae.train.sharding import PerformanceWarning, sae_mesh
from jsae.train.step import (
    LossFn,
    TrainState,
    init_sae_state,
    init_state,
    make_stack_step,
    make_step,
    sae_loss,
    sae_step,
)

__all__ = [
    "TrainConfig",
    "train",
    "TrainResult",
    "TrainingDiverged",
    "CheckpointError",
    "sae_mesh",
    "use_cpu_cores",
    "PerformanceWarning",
    "group_size",
    "TrainState",
    "make_optimizer",
    "set_hyperparams",
    "make_step",
    "make_stack_step",
    "init_sae_state",
    "init_state",
    "sae_loss",
    "LossFn",
    "sae_step",
]
