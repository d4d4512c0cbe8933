"""Checkpoints of a training run (orbax): the whole TrainState, the step (= data position) and the
config, saved atomically every ``checkpoint_every`` steps; resuming restores against the structure of
the run being resumed and refuses anything that is not its own checkpoint.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp

from jsae.train._config import TrainConfig

FORMAT = "jsae.train/1"


class CheckpointError(ValueError):
    """A checkpoint directory that cannot be used: foreign, corrupt, or from a different run."""


def _leaves(state) -> dict[str, np.ndarray]:
    return {f"{i:05d}": a for i, a in enumerate(jax.tree.leaves(state))}


def _describe(state) -> list[list[int]]:
    return [list(np.shape(a)) for a in jax.tree.leaves(state)]


class Checkpointer:
    """Save and restore one run's TrainState in ``directory`` (keeps the newest ``keep``)."""

    def __init__(self, directory: str | os.PathLike, keep: int = 2):
        self.directory = Path(directory).absolute()
        if self.directory.exists() and not self.directory.is_dir():
            raise CheckpointError(f"checkpoint path {self.directory} is a file, not a directory")
        self._manager = ocp.CheckpointManager(
            self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
        )
        steps = self._manager.all_steps()
        others = [p.name for p in self.directory.iterdir() if not p.name.isdigit() and not p.name.startswith(".")]
        if not steps and others:
            raise CheckpointError(
                f"{self.directory} is not empty but holds no jsae checkpoint (found {sorted(others)[:5]}); "
                "pass an empty or new checkpoint directory"
            )

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(
        self, step: int, state, config: TrainConfig, architecture: str, n_saes: int, extra: dict | None = None
    ) -> None:
        """Save ``state`` at ``step``; ``extra`` (JSON) rides along in the metadata, e.g. a data position."""
        meta = {
            "format": FORMAT,
            "step": int(step),
            "architecture": architecture,
            "n_saes": int(n_saes),
            "leaf_shapes": _describe(state),
            "config": config.to_json(),
            "extra": extra or {},
        }
        self._manager.save(
            int(step),
            args=ocp.args.Composite(state=ocp.args.StandardSave(_leaves(state)), meta=ocp.args.JsonSave(meta)),
        )

    def close(self) -> None:
        """Wait for pending (asynchronous) saves and release the manager."""
        self._manager.wait_until_finished()
        self._manager.close()

    def read_meta(self, step: int) -> dict:
        try:
            meta = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        except Exception as e:  # noqa: BLE001 - orbax raises many kinds
            raise CheckpointError(
                f"checkpoint {self.directory / str(step)} has no readable jsae metadata ({type(e).__name__}: {e}); "
                "it is corrupt or was not written by jsae: delete that step's folder to fall back to an "
                "earlier one, or use a new directory"
            ) from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise CheckpointError(
                f"{self.directory / str(step)} is not a jsae training checkpoint (format "
                f"{meta.get('format') if isinstance(meta, dict) else None!r}, expected {FORMAT!r}); use a new directory"
            )
        return meta

    def restore(self, template, config: TrainConfig, architecture: str, n_saes: int):
        """The newest checkpoint as a (step, state) pair shaped like ``template``; None if there is none."""
        step = self.latest_step()
        if step is None:
            return None
        meta = self.read_meta(step)
        mine = {"architecture": architecture, "n_saes": n_saes, "leaf_shapes": _describe(template)}
        for k, v in mine.items():
            if meta.get(k) != v:
                raise CheckpointError(
                    f"checkpoint {self.directory / str(step)} belongs to a different run: its {k} is "
                    f"{_short(meta.get(k))}, this run's is {_short(v)}; pass a new checkpoint directory"
                )
        # fields added to TrainConfig since the checkpoint was written count as their defaults
        theirs, ours = TrainConfig.complete_json(meta.get("config") or {}), config.to_json()
        if theirs != ours:
            diff = {k: (theirs.get(k), ours[k]) for k in ours if theirs.get(k) != ours[k]}
            raise CheckpointError(
                f"checkpoint {self.directory / str(step)} was written with a different TrainConfig "
                f"(checkpoint vs now: {diff}); resume with the same config or pass a new checkpoint directory"
            )
        abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a), a.dtype), _leaves(template))
        try:
            leaves = self._manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))[
                "state"
            ]
        except Exception as e:  # noqa: BLE001 - orbax raises many kinds
            raise CheckpointError(
                f"checkpoint {self.directory / str(step)} is corrupt ({type(e).__name__}: {str(e)[:200]}); "
                "delete that step's folder to resume from an earlier one, or use a new directory"
            ) from None
        treedef = jax.tree.structure(template)
        return step, jax.tree.unflatten(treedef, [leaves[k] for k in sorted(leaves)])


def _short(v) -> str:
    s = json.dumps(v)
    return s if len(s) < 80 else s[:77] + "..."
