"""Functional hooks: capture, ablate, patch or edit activations at named points of every layer.

A :class:`HookSpec` is an argument of :func:`jsae.models.forward`; it holds no state. Everything that
varies between calls (masks, replacement values, deltas, SAE parameters) is an *array* inside the
spec, so ``jax.vmap`` over "which head to patch" and ``jax.grad`` w.r.t. an additive per-head delta
both work, and one compiled forward serves every value. The Python parts (which points to capture,
which edit classes/functions) are static: changing them recompiles.

Hook points (one per layer; shapes as seen by an edit for one layer, ``B`` batch, ``T`` positions,
``H`` flat query heads, ``dh`` head size, ``D`` d_model):

=============  ====================  =====================================================
point          shape                 meaning
=============  ====================  =====================================================
resid_pre      [B, T, D]             residual stream entering the block
z              [B, T, H, dh]         per-head attention-weighted values (before W_O)
result         [B, T, H, D]          per-head output (after W_O; heads stay an axis)
pattern        [B, H, T, T]          attention probabilities [query, key]
attn_out       [B, T, D]             sum of ``result`` over heads + output bias
resid_mid      [B, T, D]             residual after attention
mlp_out        [B, T, D]             MLP output
resid_post     [B, T, D]             residual leaving the block
=============  ====================  =====================================================

GQA models (e.g. SmolLM2: 9 query heads, 3 KV heads) report the flat query-head axis; query head
``h`` reads key/value head ``h // (H // H_kv)``.

Edits get the per-layer slice of their array fields (all array fields carry a leading ``[L]`` layer
axis) and return the edited activation of the same shape. Captured activations come back stacked
layer-major: ``cache[point]`` has shape ``[L, *shape]`` (or with ``T`` reduced, see ``reduce``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Literal

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ._config import ModelConfig
from ._errors import HookError

if TYPE_CHECKING:  # transformer imports hooks
    from ._transformer import Transformer

POINTS: tuple[str, ...] = (
    "resid_pre",
    "z",
    "result",
    "pattern",
    "attn_out",
    "resid_mid",
    "mlp_out",
    "resid_post",
)
HEAD_AXIS: dict[str, int] = {"z": 2, "result": 2, "pattern": 1}  # head axis in the per-layer shape
Reduce = Literal["all", "last", "mean"]


def _check_point(point: str) -> None:
    if point not in POINTS:
        raise HookError(f"unknown hook point {point!r}; choose one of {', '.join(POINTS)}")


def _expand_mask(point: str, mask: Array, ndim: int) -> Array:
    """Broadcast a per-layer mask ``[H]`` (head points) or ``[]`` onto an activation of rank ``ndim``."""
    if mask.ndim == 0:
        return mask
    if point in HEAD_AXIS and mask.ndim == 1:
        axis = HEAD_AXIS[point]
        return mask.reshape((1,) * axis + (-1,) + (1,) * (ndim - axis - 1))
    return mask  # already broadcastable to the activation


class Edit(eqx.Module):
    """An edit at one hook point. Array fields have a leading ``[L]`` layer axis, sliced per layer.

    Subclasses implement :meth:`apply` for one layer. ``shared`` fields (see :class:`Apply`) are not
    sliced.
    """

    def per_layer(self) -> Any:
        """The pytree scanned over layers (leading axis ``L``)."""
        raise NotImplementedError

    def apply(self, point: str, x: Array, layer: Array, sliced: Any) -> Array:
        raise NotImplementedError


class Replace(Edit):
    """``x <- x + mask * (value - x)``: zero/mean ablation and activation patching.

    mask: ``[L, H]`` for head points (1 = replace that head), ``[L]`` otherwise, or any
      ``[L, ...]`` broadcastable to the activation (e.g. ``[L, B, T, H, 1]`` for positions).
    value: ``[L, ...]`` broadcastable to the activation, e.g. ``[L, H, d]`` means or
      ``[L, B, T, H, d]`` from another run's cache.
    """

    mask: Float[Array, "L ..."]
    value: Float[Array, "L ..."]

    def per_layer(self):
        return (self.mask, self.value)

    def apply(self, point, x, layer, sliced):
        mask, value = sliced
        m = _expand_mask(point, mask, x.ndim).astype(x.dtype)
        return x + m * (value.astype(x.dtype) - x)


class Add(Edit):
    """``x <- x + delta``; delta ``[L, ...]`` broadcastable to the activation (steering, gradients)."""

    delta: Float[Array, "L ..."]

    def per_layer(self):
        return self.delta

    def apply(self, point, x, layer, sliced):
        return x + sliced.astype(x.dtype)


class Apply(Edit):
    """A user function ``fn(x, layer, per_layer, shared) -> x`` (e.g. SAE splicing).

    ``per_layer`` arrays carry a leading ``[L]`` axis and are sliced; ``shared`` is passed whole.
    ``fn`` is static: reuse the same function object to avoid recompiling. Example, splice an SAE
    into layer 3's residual stream::

        Apply(lambda x, l, _, sae: jnp.where(l == 3, sae.decode(sae.encode(x)), x), shared=sae)
    """

    fn: Callable = eqx.field(static=True)
    per_layer_arrays: Any = None
    shared: Any = None

    def per_layer(self):
        return self.per_layer_arrays

    def apply(self, point, x, layer, sliced):
        return self.fn(x, layer, sliced, self.shared)


class HookSpec(eqx.Module):
    """What to capture and how to edit, for all layers in one forward.

    capture: hook point names whose activations are returned in the cache.
    reduce: ``"all"`` keeps the position axis; ``"last"`` keeps position ``lengths - 1`` of each row;
      ``"mean"`` averages over the first ``lengths`` positions (``lengths`` is a forward argument;
      ``pattern`` supports only ``"all"``).
    edits: point -> tuple of :class:`Edit`, applied in order before the point is captured and used.
    """

    capture: tuple[str, ...] = eqx.field(static=True)
    reduce: Reduce = eqx.field(static=True)
    edits: dict[str, tuple[Edit, ...]]

    def __init__(
        self,
        capture: Iterable[str] | str = (),
        reduce: Reduce = "all",
        edits: Mapping[str, Edit | Iterable[Edit]] | None = None,
    ):
        self.capture = (capture,) if isinstance(capture, str) else tuple(capture)
        self.reduce = reduce
        norm = {}
        for point, es in (edits or {}).items():
            es = (es,) if isinstance(es, Edit) or not isinstance(es, (list, tuple)) else tuple(es)
            for e in es:
                if not isinstance(e, Edit):
                    raise HookError(
                        f"edits[{point!r}] must hold Edit objects (Replace, Add, Apply), got {type(e).__name__}"
                    )
            norm[point] = es
        self.edits = norm

    def __check_init__(self):
        for p in self.capture:
            _check_point(p)
        for p in self.edits:
            _check_point(p)
        if self.reduce not in ("all", "last", "mean"):
            raise HookError(f"reduce must be 'all', 'last' or 'mean', got {self.reduce!r}")
        if self.reduce != "all" and "pattern" in self.capture:
            raise HookError("pattern can only be captured with reduce='all'")

    def merge(self, other: HookSpec) -> HookSpec:
        """Union of captures, edits of ``self`` then ``other``. Reductions must agree."""
        if self.capture and other.capture and self.reduce != other.reduce:
            raise HookError(f"cannot merge specs reducing by {self.reduce!r} and {other.reduce!r}")
        edits = dict(self.edits)
        for p, es in other.edits.items():
            edits[p] = tuple(edits.get(p, ())) + tuple(es)
        capture = tuple(dict.fromkeys(self.capture + other.capture))
        reduce = self.reduce if self.capture else other.reduce
        return HookSpec(capture=capture, reduce=reduce, edits=edits)

    def __add__(self, other: HookSpec) -> HookSpec:
        return self.merge(other)


# ---------------------------------------------------------------------------------------------------
# Convenience constructors


def capture(*points: str, reduce: Reduce = "all") -> HookSpec:
    """Capture ``points`` (default: every point except ``pattern``)."""
    pts = points or tuple(p for p in POINTS if p != "pattern")
    return HookSpec(capture=tuple(pts), reduce=reduce)


def head_mask(model: Transformer, heads: Iterable[tuple[int, int]] | np.ndarray | None = None) -> np.ndarray:
    """A ``[L, H]`` float32 mask with 1 at each (layer, head) of ``model`` in ``heads`` (None: all heads)."""
    cfg = _cfg(model)
    if heads is None:
        return np.ones((cfg.n_layers, cfg.n_heads), np.float32)
    if isinstance(heads, np.ndarray) and heads.shape == (cfg.n_layers, cfg.n_heads):
        return heads.astype(np.float32)
    m = np.zeros((cfg.n_layers, cfg.n_heads), np.float32)
    for layer, head in heads:
        if not (0 <= layer < cfg.n_layers and 0 <= head < cfg.n_heads):
            raise HookError(
                f"(layer, head) = ({layer}, {head}) is out of range; the model has {cfg.n_layers} "
                f"layers and {cfg.n_heads} heads"
            )
        m[layer, head] = 1.0
    return m


def _cfg(model: object) -> ModelConfig:
    cfg = getattr(model, "cfg", None)
    if not isinstance(cfg, ModelConfig):
        raise HookError(f"head edits take the model (a jsae Transformer), got {type(model).__name__}")
    return cfg


def _head_point(point: str) -> None:
    _check_point(point)
    if point not in ("z", "result"):
        raise HookError(f"head ablation/patching works on 'z' or 'result', not {point!r}")


def zero_ablate(model: Transformer, heads=None, point: str = "result") -> HookSpec:
    """Set the chosen heads' ``point`` activation to zero (``heads``: (layer, head) pairs or [L, H] mask)."""
    _head_point(point)
    mask = jnp.asarray(head_mask(model, heads))
    return HookSpec(edits={point: (Replace(mask, jnp.zeros(mask.shape + (1,), jnp.float32)),)})


def mean_ablate(model: Transformer, means: Float[Array, "L H d"], heads=None, point: str = "result") -> HookSpec:
    """Replace the chosen heads' activation by ``means`` ``[L, H, d]`` (e.g. ``head_means(harvest(...), L)``)."""
    _head_point(point)
    mask = jnp.asarray(head_mask(model, heads))
    means = jnp.asarray(means)
    if means.shape[:2] != mask.shape:
        raise HookError(f"means must have shape [L, H, d] = [{mask.shape[0]}, {mask.shape[1]}, d], got {means.shape}")
    return HookSpec(edits={point: (Replace(mask, means),)})


def patch(model: Transformer, source: Float[Array, "L B T H d"], heads=None, point: str = "result") -> HookSpec:
    """Replace the chosen heads' activation by ``source`` (another run's ``cache[point]``, same shape)."""
    _head_point(point)
    mask = jnp.asarray(head_mask(model, heads))
    return HookSpec(edits={point: (Replace(mask, jnp.asarray(source)),)})


def add(point: str, delta: Array) -> HookSpec:
    """Add ``delta`` ``[L, ...]`` (broadcastable to the point's per-layer shape) at ``point``."""
    _check_point(point)
    return HookSpec(edits={point: (Add(jnp.asarray(delta)),)})


def edit(point: str, fn: Callable, per_layer: Any = None, shared: Any = None) -> HookSpec:
    """Apply ``fn(x, layer, per_layer_slice, shared) -> x`` at ``point`` in every layer."""
    _check_point(point)
    return HookSpec(edits={point: (Apply(fn, per_layer, shared),)})


def as_spec(hooks: HookSpec | Mapping | None) -> HookSpec:
    if hooks is None:
        return HookSpec()
    if isinstance(hooks, HookSpec):
        return hooks
    raise HookError(f"hooks must be a HookSpec (see jsae.models.hooks), got {type(hooks).__name__}")


def hook_width(cfg, point: str, head_given: bool) -> int:
    """Width an SAE at ``point`` reads: d_model, or per head d_head (z) / d_model (result), or H times that."""
    per_head = {"z": cfg.d_head, "result": cfg.d_model}
    if point in per_head:
        return per_head[point] if head_given else cfg.n_heads * per_head[point]
    return cfg.d_model
