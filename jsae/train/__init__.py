"""The vmapped trainer: one program trains N SAEs of any architecture."""

from jsae.train.checkpoint import CheckpointError
from jsae.train.config import TrainConfig
from jsae.train.loop import TrainingDiverged, TrainResult, train
from jsae.train.sharding import PerformanceWarning, sae_mesh, use_cpu_cores
from jsae.train.step import TrainState, make_optimizer, sae_step

__all__ = ["TrainConfig", "train", "TrainResult", "TrainingDiverged", "CheckpointError", "sae_mesh",
           "use_cpu_cores", "PerformanceWarning",
           "TrainState", "make_optimizer", "sae_step"]
