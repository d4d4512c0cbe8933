"""Training configuration: plain data, saved as JSON beside every checkpoint."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from jsae.sae import Architecture

PerSAE = float | Sequence[float]
"""A hyperparameter shared by every SAE of a stack (a float) or one value per SAE (a length-N list)."""


@dataclass(frozen=True)
class TrainConfig:
    """How to train a stack of N SAEs.

    Per-SAE hyperparameters (``lr``, ``sparsity_coef``, ``aux_coef`` and any entry of ``extra_hp``)
    take a float (same for all N) or N floats. Structural choices (d_sae, k, architecture) live in the
    SAE stack itself. ``sparsity_coef`` and ``aux_coef`` left at None take the architecture's defaults
    (its record's ``hyperparams``, e.g. Gated's aux 1.0, TopK's 1/32; see :meth:`per_sae`).

    Attributes:
      steps: optimizer steps per SAE.
      batch_size: tokens per SAE per step.
      lr: Adam learning rate (per SAE allowed). ``lr``, ``lr_warmup_steps``, ``lr_decay``,
        ``lr_decay_start``, ``adam_*`` and ``grad_clip`` describe the default optimizer
        (``jsae.train.make_optimizer``); a run given its own ``optimizer=`` does not read them.
      lr_warmup_steps: linear warm-up of the learning rate from 0.
      lr_decay: "constant", "linear" or "cosine" decay to 0 over the last ``1 - lr_decay_start`` of steps
        (Anthropic's April-2024 recipe: linear over the last 20%).
      sparsity_coef: L1 / L0 coefficient (per SAE allowed; None: the architecture's default); TopK-style
        architectures have none and ignore it.
      sparsity_warmup_steps: the sparsity coefficient ramps linearly from 0 over these steps.
      aux_coef: weight of an architecture's auxiliary loss (AuxK, gated aux; None: the architecture's
        default).
      dead_after_tokens: a latent that has not fired for this many tokens counts as dead (AuxK, metrics).
      normalise_activations: scale each SAE's inputs to mean norm sqrt(d_in) during training and fold
        the scale back into the weights at the end (the returned SAEs read raw activations).
      chunk_steps: steps per jit-compiled ``lax.scan`` chunk; the host (progress bar, checks,
        checkpoints) sees the loop only between chunks.
      checkpoint_every: save every this many steps (a multiple of chunk_steps; 0 = only at the end when
        a checkpoint directory is given).
      sae_group: SAEs computed together inside a step (0 = automatic, by the device's kind and memory:
        see ``jsae.train.group_size``). Results are the same for any value up to float
        rounding; it only changes speed and memory.
      seed: drives the data order.
      compute_dtype: dtype of the SAE matmuls in the loss, "float32" or "bfloat16" (None: bfloat16 on
        TPU, float32 elsewhere, resolved for the device the run trains on). Parameters and optimizer
        state stay float32 (see ``jsae.train._precision``).
      extra_hp: further per-SAE hyperparameters passed to the architecture's loss.
    """

    steps: int
    batch_size: int = 1024
    lr: PerSAE = 3e-4
    lr_warmup_steps: int = 0
    lr_decay: Literal["constant", "linear", "cosine"] = "constant"
    lr_decay_start: float = 0.8
    adam_b1: float = 0.9
    adam_b2: float = 0.999
    adam_eps: float = 1e-8
    grad_clip: float | None = 1.0
    sparsity_coef: PerSAE | None = None
    sparsity_warmup_steps: int = 0
    aux_coef: PerSAE | None = None
    dead_after_tokens: int = 1_000_000
    normalise_activations: bool = False
    chunk_steps: int = 100
    checkpoint_every: int = 0
    sae_group: int = 0
    seed: int = 0
    extra_hp: dict[str, PerSAE] = field(default_factory=dict)
    compute_dtype: str | None = None

    def __post_init__(self):
        positive = ("steps", "batch_size", "chunk_steps", "dead_after_tokens")
        for name in positive:
            if int(getattr(self, name)) < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.lr_decay not in ("constant", "linear", "cosine"):
            raise ValueError(f"TrainConfig.lr_decay={self.lr_decay!r}; use 'constant', 'linear' or 'cosine'")
        if not 0.0 <= self.lr_decay_start <= 1.0:
            raise ValueError(f"TrainConfig.lr_decay_start must be in [0, 1], got {self.lr_decay_start}")
        if self.checkpoint_every < 0 or self.checkpoint_every % self.chunk_steps:
            raise ValueError(
                f"TrainConfig.checkpoint_every={self.checkpoint_every} must be a multiple of "
                f"chunk_steps={self.chunk_steps} (checkpoints are taken between chunks)"
            )
        if self.compute_dtype not in (None, "float32", "bfloat16"):
            raise ValueError(
                f"TrainConfig.compute_dtype={self.compute_dtype!r}; use 'float32', 'bfloat16' or None "
                "(bfloat16 on TPU, float32 elsewhere)"
            )
        for name in ("lr_warmup_steps", "sparsity_warmup_steps", "sae_group"):
            if getattr(self, name) < 0:
                raise ValueError(f"TrainConfig.{name} must be >= 0, got {getattr(self, name)}")

    def per_sae(self, n: int, architecture: Architecture) -> dict[str, np.ndarray]:
        """Every per-SAE hyperparameter of a run of ``architecture`` as a float32 array [n]: ``lr``, each
        loss hyperparameter the architecture reads (given here, else its record's default) and every
        other value given (``extra_hp``, or a coefficient the architecture ignores). A hyperparameter
        with no default that the run does not give, or a wrong length, raises one clear error."""
        return {name: per_sae_array(name, v, n) for name, v in self.hyperparams(architecture).items()}

    def hyperparams(self, architecture: Architecture) -> dict[str, PerSAE]:
        """The per-SAE values of :meth:`per_sae` before they become arrays (a float or N floats each)."""
        given = {"sparsity_coef": self.sparsity_coef, "aux_coef": self.aux_coef, **self.extra_hp}
        values: dict[str, PerSAE] = {"lr": self.lr}
        for name, default in architecture.hyperparams.items():
            value = given.get(name)
            if value is None:
                value = default
            if value is None:
                fields = ("sparsity_coef", "aux_coef")
                hint = f"TrainConfig({name}=...)" if name in fields else f"TrainConfig(extra_hp={{{name!r}: ...}})"
                raise ValueError(
                    f"the {architecture.name!r} architecture needs the per-SAE hyperparameter {name!r}, which "
                    f"has no default: pass {hint}"
                )
            values[name] = value
        values.update({name: v for name, v in given.items() if v is not None and name not in values})
        return values

    def __hash__(self) -> int:  # extra_hp is a dict; hash the JSON form (used as a jit static argument)
        return hash(json.dumps(self.to_json(), sort_keys=True))

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}

    @classmethod
    def from_json(cls, d: dict) -> TrainConfig:
        """The config of ``to_json``; a field missing from ``d`` (a config saved before it existed) takes
        its default."""
        return cls(**d)

    @classmethod
    def complete_json(cls, d: dict) -> dict:
        """``d`` with every field it lacks set to its default (fields added since ``d`` was written)."""
        defaults = {
            f.name: (f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default)
            for f in dataclasses.fields(cls)
            if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        }
        return {**defaults, **d}


def per_sae_array(name: str, v: PerSAE, n: int) -> np.ndarray:
    """One hyperparameter (a float, or one value per SAE) as a float32 array [n]; a wrong length or a
    NaN/inf raises one clear error."""
    a = np.asarray(v, dtype=np.float32)
    if a.ndim == 0:
        a = np.full((n,), a, dtype=np.float32)
    elif a.shape != (n,):
        raise ValueError(
            f"hyperparameter {name!r} has {a.size} values but the stack holds {n} SAEs: "
            f"give one float or exactly {n} values"
        )
    if not np.all(np.isfinite(a)):
        raise ValueError(f"hyperparameter {name!r} contains NaN or inf: {a}")
    return a
