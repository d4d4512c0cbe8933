"""A model's weights spread over a device mesh: attention by heads, the MLP by its hidden units.

:func:`shard_model` places every weight with a ``NamedSharding`` over one mesh axis (the layout is
justified in docs/ARCHITECTURE.md, "A model over a mesh"):

==================================  =========================================================
weights                             sharded over the mesh axis
==================================  =========================================================
``W_Q [L, D, H, dh]``, ``b_Q``      query heads ``H``
``W_O [L, H, dh, D]``               query heads ``H``
``W_K``, ``W_V [L, D, K, dh]``      key/value heads ``K`` when ``K`` and ``H`` divide the axis,
                                    else replicated
``W_gate``, ``W_in [L, D, F]``      hidden units ``F``
``W_out [L, F, D]``, ``b_in``       hidden units ``F``
embeddings, norms, output biases    replicated
==================================  =========================================================

An axis that does not divide over the devices stays replicated. Nothing else changes: ``forward`` is
the same function, and XLA inserts the two all-reduces per layer (after ``W_O`` and after ``W_out``)
that sum the sharded heads and hidden units; ``z`` and ``result`` come out sharded by heads.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ._errors import ModelError
from ._transformer import Blocks, Transformer

# Blocks field -> (index of the sharded axis, what must divide the mesh axis: "H", "K" or "F")
_SHARDED: dict[str, tuple[int, str]] = {
    "W_Q": (2, "H"),
    "b_Q": (1, "H"),
    "W_O": (1, "H"),
    "W_K": (2, "K"),
    "b_K": (1, "K"),
    "W_V": (2, "K"),
    "b_V": (1, "K"),
    "W_gate": (2, "F"),
    "W_in": (2, "F"),
    "b_in": (1, "F"),
    "W_out": (1, "F"),
}


def partition_specs(model: Transformer, n: int, axis: str) -> dict[str, PartitionSpec]:
    """A ``PartitionSpec`` per weight (``"embed"``, ``"blocks.W_Q"``, ...; absent where the model has None)
    for a mesh axis ``axis`` of ``n`` devices. Weights not in the table above are replicated."""
    cfg = model.cfg
    divides = {"H": cfg.n_heads % n == 0, "F": cfg.d_mlp % n == 0}
    divides["K"] = divides["H"] and cfg.n_kv_heads % n == 0  # device i's query heads read its own K/V heads
    specs = {}
    for f in dataclasses.fields(Blocks):
        a = getattr(model.blocks, f.name)
        if a is None:
            continue
        where = _SHARDED.get(f.name)
        parts: list[str | None] = [None] * a.ndim
        if where is not None and divides[where[1]]:
            parts[where[0]] = axis
        specs["blocks." + f.name] = PartitionSpec(*parts)
    for f in dataclasses.fields(Transformer):
        if f.name not in ("cfg", "blocks") and getattr(model, f.name) is not None:
            specs[f.name] = PartitionSpec()
    return specs


def shard_model(model: Transformer, mesh: Mesh, axis: str | None = None) -> Transformer:
    """``model`` with its weights placed on ``mesh`` (see the module docstring); ``axis``: the mesh axis to
    shard over (default: the mesh's only axis). Returns a new model; ``model`` is unchanged."""
    if not isinstance(model, Transformer):
        raise ModelError(f"shard_model takes a jsae Transformer, got {type(model).__name__}")
    if not isinstance(mesh, Mesh):
        raise ModelError(f"shard_model takes a jax.sharding.Mesh, got {type(mesh).__name__}")
    if axis is None:
        if len(mesh.axis_names) != 1:
            raise ModelError(f"the mesh has axes {mesh.axis_names}; name the one to shard the model over with axis=")
        axis = str(mesh.axis_names[0])
    if axis not in mesh.axis_names:
        raise ModelError(f"the mesh has no axis {axis!r}; its axes are {mesh.axis_names}")
    specs = partition_specs(model, int(mesh.shape[axis]), axis)

    def put(name: str, a) -> Any:  # None where the model has no such weight
        return None if a is None else jax.device_put(a, NamedSharding(mesh, specs[name]))

    blocks = Blocks(
        **{f.name: put("blocks." + f.name, getattr(model.blocks, f.name)) for f in dataclasses.fields(Blocks)}
    )
    rest = {
        f.name: put(f.name, getattr(model, f.name))
        for f in dataclasses.fields(Transformer)
        if f.name not in ("cfg", "blocks")
    }
    return dataclasses.replace(model, blocks=blocks, **rest)


def load_sharded(
    name_or_path, mesh: Mesh, axis: str | None = None, **load_kwargs
) -> tuple[Transformer, Any, dict[str, Any]]:
    """``load(name_or_path, **load_kwargs)`` with the weights then placed on ``mesh`` by :func:`shard_model`:
    ``(model, tokenizer, metadata)``. For the streaming trainer shard over the SAE mesh,
    ``load_sharded(name, jsae.train.sae_mesh())``. (The weights are read onto one device first.)"""
    check_mesh(mesh)
    from ._registry import load

    model, tokenizer, metadata = load(name_or_path, **load_kwargs)
    return shard_model(model, mesh, axis), tokenizer, metadata


def check_mesh(mesh: Any) -> None:
    """Raise a clear error unless ``mesh`` is a ``jax.sharding.Mesh``."""
    if not isinstance(mesh, Mesh):
        raise ModelError(f"expected a jax.sharding.Mesh to shard the model over, got {type(mesh).__name__}")
