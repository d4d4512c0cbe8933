"""The method registry: every circuit method has one signature, and :func:`discover` looks it up."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np

from jsae.analysis.circuits._baselines import (
    activation_difference_scores,
    activation_patching,
    attribution_patching,
    random_scores,
)
from jsae.analysis.circuits._codes import SAE_METHODS, SAECodeConfig, sae_code_scores
from jsae.analysis.circuits._harvest import TaskActivations, harvest_task
from jsae.analysis.circuits._scores import HeadScores
from jsae.analysis.circuits._variants import CodeVariant, PairedRows, family_scores
from jsae.models.hooks import Reduce
from jsae.tasks import Task

# ---------------------------------------------------------------------------------------------------
# The method registry: every method has one signature


@dataclass(frozen=True)
class MethodInputs:
    """What a circuit method may read: the model, tokenizer and task, a jax key, the SAE settings, and
    (for the methods that score harvested activations) the task's :class:`TaskActivations`."""

    model: Any
    tokenizer: Any
    task: Task
    key: jax.Array
    sae_config: SAECodeConfig = SAECodeConfig()
    activations: TaskActivations | None = None

    def acts(self) -> TaskActivations:
        if self.activations is None:
            raise ValueError("this method scores harvested activations; pass activations=harvest_task(...)")
        return self.activations


@dataclass(frozen=True)
class CircuitMethod:
    """A circuit method: ``run(MethodInputs) -> HeadScores``. ``needs_activations``: it scores
    :func:`harvest_task`'s activations (which :func:`discover` harvests when not given); ``signed``: its
    scores are signed effects, so heads rank by ``|score|`` (the patching methods)."""

    run: Callable[[MethodInputs], HeadScores]
    needs_activations: bool = False
    signed: bool = False


def _sae_method(name: str) -> CircuitMethod:
    def run(x: MethodInputs) -> HeadScores:
        a = x.acts()
        return sae_code_scores(x.key, a.acts, a.positive, name, x.sae_config, a.pair)

    return CircuitMethod(run, needs_activations=True)


def stack_variant(cfg: SAECodeConfig) -> CodeVariant:
    """The :class:`CodeVariant` that ``sae_stack_paired`` runs under ``cfg`` (its ``per_head_*`` fields)."""
    return CodeVariant(
        d_sae=cfg.per_head_d_sae,
        l1=cfg.per_head_l1,
        epochs=cfg.per_head_epochs,
        lr=cfg.per_head_lr,
        seeds=cfg.per_head_seeds,
        code=cfg.per_head_code,
        top_k=cfg.per_head_top_k,
        weight=cfg.per_head_weight,
    )


def _stack_paired(x: MethodInputs) -> HeadScores:
    """Per-head SAEs over ``per_head_seeds`` seeds, one stack, trained on every row (the right clean
    prompts and all corruptions; ``n_train`` does not apply), heads scored by how much each pair's code
    changes (:func:`~jsae.analysis.circuits.family_scores`)."""
    a = x.acts()
    if a.pair is None or len(a.pair) != int(a.positive.sum()):
        raise ValueError("sae_stack_paired needs pair: harvest the activations with harvest_task")
    w_o = None
    if a.point == "z":  # a z row's decoder directions reach the residual stream through W_O
        cfg = x.model.cfg
        w_o = np.asarray(x.model.blocks.W_O).reshape(cfg.n_layers * cfg.n_heads, cfg.d_head, cfg.d_model)
    rows = PairedRows(np.asarray(a.acts), np.flatnonzero(a.positive), np.asarray(a.pair), w_o)
    scores, info = family_scores(x.key, rows, [stack_variant(x.sae_config)])
    return HeadScores("sae_stack_paired", scores[0], info)


METHODS: dict[str, CircuitMethod] = {
    "sae_stack_paired": CircuitMethod(_stack_paired, needs_activations=True),
    **{name: _sae_method(name) for name in SAE_METHODS},
    "activation_difference": CircuitMethod(
        lambda x: activation_difference_scores(x.acts().acts, x.acts().positive, x.acts().pair),
        needs_activations=True,
    ),
    "attribution_patching": CircuitMethod(lambda x: attribution_patching(x.model, x.tokenizer, x.task), signed=True),
    "activation_patching": CircuitMethod(lambda x: activation_patching(x.model, x.tokenizer, x.task), signed=True),
    "random": CircuitMethod(lambda x: random_scores(x.key, x.model.cfg.n_layers * x.model.cfg.n_heads)),
}
ACTIVATION_METHODS = tuple(m for m, c in METHODS.items() if c.needs_activations)
DISCOVERY_METHODS = tuple(METHODS)


def discover(
    model,
    tokenizer,
    task: Task,
    method: str = "sae_stack_paired",
    *,
    key=None,
    sae_config: SAECodeConfig = SAECodeConfig(),
    point: str = "result",
    positions: Reduce = "mean",
    activations: TaskActivations | None = None,
) -> HeadScores:
    """Per-head circuit scores ``[n_layers * n_heads]`` for ``task`` by ``method`` (a key of :data:`METHODS`;
    the default, ``sae_stack_paired``, is the SAE-code variant that ``sae_config``'s ``per_head_*`` fields
    name).

    Methods that score activations use ``activations`` (or harvest them with :func:`harvest_task` at
    ``point``/``positions``); the patching methods run on all of ``task``'s prompts; ``random`` is the
    chance baseline.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    spec = METHODS[method]
    if spec.needs_activations and activations is None:
        activations = harvest_task(model, tokenizer, task, point=point, positions=positions)
    key = jax.random.key(0) if key is None else key
    return spec.run(MethodInputs(model, tokenizer, task, key, sae_config, activations))
