"""Per-head attention outputs of a flax model (linen or nnx): harvest them, patch or ablate heads.

The user names, for each layer, the attention's *output projection* module (the linear map whose input
is the heads' concatenated values ``z``) and how its input splits into heads. Its kernel, reshaped to
``[H, dh, D]``, gives each head's output ``result[h] = z[h] @ W_O[h]``: the quantity jsae's own
``result`` hook point holds. Patching replaces heads inside the projection's output:
``out + sum_h mask[h] * (value[h] - result[h])``, so the model's code is not changed.

- linen: :func:`flax.linen.intercept_methods` on the projection's ``__call__`` (no change to the model);
- nnx: module surgery on a functional copy (``nnx.split`` / ``nnx.merge``): the projection is swapped for
  a tap for one call, so the original model object is never modified.

Shapes are checked against the parameters before any compute: the named module must be a projection
(no submodules) whose kernel is ``[H*dh, D]`` or ``[H, dh, D]`` with ``H = n_heads`` and whose input is
``z`` (``[..., H*dh]`` or ``[..., H, dh]``); anything else raises :class:`~jsae.models.HookError` naming
the module and the expected shape. (A module without submodules whose input is not ``z`` but happens to
have ``H*dh`` features cannot be told apart by shapes.)

Everything varying is an array argument (``mask [L, H]``, ``value [L, B, T, H, D]``), so ``jax.vmap``
over masks (patch each head) and ``jax.grad`` w.r.t. the mask (attribution patching) work, as for
jsae's own :class:`~jsae.models.hooks.Replace`.

flax is an optional dependency (``pip install jsae[flax]``); this module imports it lazily.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ._errors import HookError, ModelError


def _flax():
    try:
        import flax  # noqa: F401 - imported only to check that the optional extra is installed
    except ImportError as e:  # pragma: no cover - exercised only without flax
        raise ModelError("jsae.models.flax needs flax: pip install 'jsae[flax]' (or pip install flax)") from e
    import flax.linen as nn
    from flax import nnx

    return nn, nnx


@dataclasses.dataclass(frozen=True)
class AttentionHeads:
    """Where a flax model's heads are.

    out_proj: the output-projection module of each layer's attention, as ``/``-joined paths, layer
      order (linen: module names from the root, e.g. ``"block_0/attn/out"``; nnx: attribute names or
      list indices, e.g. ``"blocks/0/attn/out"``). :meth:`from_template` fills ``{layer}``.
    n_heads: heads per layer.
    layout: how the projection's input features split: ``"hd"`` (head-major: feature ``h * dh + e``,
      the usual ``reshape(B, T, H, dh)``) or ``"dh"`` (feature ``e * H + h``). An input already shaped
      ``[..., H, dh]`` (``DenseGeneral(axis=(-2, -1))``) works with ``"hd"``.
    kernel: the projection's weight parameter name (``[H*dh, D]`` or ``[H, dh, D]``).
    """

    out_proj: tuple[str, ...]
    n_heads: int
    layout: Literal["hd", "dh"] = "hd"
    kernel: str = "kernel"

    def __post_init__(self):
        object.__setattr__(self, "out_proj", tuple(self.out_proj))
        if not self.out_proj:
            raise HookError("AttentionHeads needs at least one output-projection path")
        if self.layout not in ("hd", "dh"):
            raise HookError(f"layout must be 'hd' or 'dh', got {self.layout!r}")

    @classmethod
    def from_template(cls, template: str, n_layers: int, n_heads: int, **kw) -> AttentionHeads:
        """``template`` with ``{layer}``, e.g. ``"block_{layer}/attn/out"``."""
        if "{layer}" not in template:
            raise HookError(f"template {template!r} has no '{{layer}}' placeholder")
        return cls(tuple(template.format(layer=i) for i in range(n_layers)), n_heads, **kw)

    @property
    def n_layers(self) -> int:
        return len(self.out_proj)


def _check_shapes(heads: AttentionHeads, where: str, z_shape: tuple, kernel_shape: tuple) -> int:
    """``dh`` after checking the projection input ``z`` and its kernel against ``n_heads`` and ``layout``.

    kernel: ``[H*dh, D]``, or ``[H, dh, D]`` (layout ``"hd"``) / ``[dh, H, D]`` (``"dh"``), whose head axis
    must be ``n_heads``; ``z``: ``[..., H*dh]`` or ``[..., H, dh]`` matching the kernel.
    """
    H, name = heads.n_heads, f"module {where!r}: parameter {heads.kernel!r}"
    if len(kernel_shape) == 3:
        head_axis = 0 if heads.layout == "hd" else 1
        expected = "[H, dh, D]" if heads.layout == "hd" else "[dh, H, D]"
        if kernel_shape[head_axis] != H:
            raise HookError(
                f"{name} has shape {list(kernel_shape)}, read as {expected} (layout={heads.layout!r}): "
                f"{kernel_shape[head_axis]} heads, but n_heads={H}; set n_heads={kernel_shape[head_axis]}"
                + (" or layout='dh'" if kernel_shape[1 - head_axis] == H else "")
            )
        F = kernel_shape[0] * kernel_shape[1]
        if tuple(z_shape[-2:]) != tuple(kernel_shape[:2]) and z_shape[-1:] != (F,):
            raise HookError(
                f"{name} has shape {list(kernel_shape)} ({expected}), so the module's input should be the "
                f"heads' values z of shape [..., {kernel_shape[0]}, {kernel_shape[1]}] or [..., {F}], but it "
                f"got {list(z_shape)}. Name in out_proj the module whose input is z (the attention's output "
                "projection) and in kernel= that module's weight"
            )
    elif len(kernel_shape) == 2:
        F = kernel_shape[0]
        if z_shape[-1:] != (F,):
            raise HookError(
                f"{name} has shape {list(kernel_shape)} ([H*dh, D]), so the module's input should be the heads' "
                f"values z of shape [..., {F}], but it got {list(z_shape)}; name in out_proj the attention's "
                "output projection (the module whose input is z)"
            )
    else:
        raise HookError(
            f"{name} has shape {list(kernel_shape)}; jsae reads an output-projection kernel of shape [H*dh, D] "
            "or [H, dh, D]: name the projection's weight with kernel="
        )
    if F % H:
        raise HookError(f"{name}: the projection input has {F} features, not divisible by n_heads={H}")
    return F // H


def _check_projection(heads: AttentionHeads, where: str, kernel_shape: tuple, submodules: list[str]) -> None:
    """The named module must be a projection (its weights, no submodules): its input is then ``z``."""
    if submodules:
        raise HookError(
            f"module {where!r} (parameter {heads.kernel!r} of shape {list(kernel_shape)}) has submodules "
            f"{submodules}, so it is not the output projection and its input is not the heads' values z. Name in "
            "out_proj the module whose input is z and whose weight is kernel= (shape [H*dh, D] or [H, dh, D]); "
            "an attention that multiplies z by a raw [H, dh, D] parameter inside its own __call__ can do it "
            "with nn.DenseGeneral(features=D, axis=(-2, -1)) instead"
        )


def _split(heads: AttentionHeads, z: Array, kernel: Array, where: str = "") -> Float[Array, "... H D"]:
    """Per-head outputs ``[..., H, D]`` of the projection input ``z`` and its kernel (shapes checked first)."""
    H = heads.n_heads
    dh = _check_shapes(heads, where, tuple(z.shape), tuple(kernel.shape))
    F, D = H * dh, kernel.shape[-1]
    zf = z if z.shape[-1:] == (F,) else z.reshape(z.shape[:-2] + (F,))  # [..., H, dh] (DenseGeneral) -> flat
    w = kernel.reshape(F, D)
    if heads.layout == "hd":
        zh, wh = zf.reshape(zf.shape[:-1] + (H, dh)), w.reshape(H, dh, D)
    else:
        zh, wh = jnp.swapaxes(zf.reshape(zf.shape[:-1] + (dh, H)), -1, -2), jnp.swapaxes(w.reshape(dh, H, D), 0, 1)
    return jnp.einsum("...he,hed->...hd", zh, wh.astype(zh.dtype))


def _edit(out, result, mask, value):
    m = mask.reshape(mask.shape + (1,)).astype(result.dtype)  # [H, 1]
    return out + (m * (value.astype(result.dtype) - result)).sum(-2)


class _Recorder:
    """Per-call bookkeeping shared by the linen and nnx paths."""

    def __init__(self, heads: AttentionHeads, mask, value):
        self.heads, self.mask, self.value = heads, mask, value
        self.results: dict[int, Array] = {}
        self.seen: list[str] = []

    def __call__(self, layer: int, z, kernel, out):
        result = _split(self.heads, z, kernel, self.heads.out_proj[layer])
        if result.shape[-1] != out.shape[-1]:
            raise HookError(
                f"per-head outputs have size {result.shape[-1]} but the projection outputs "
                f"{out.shape[-1]}; check the kernel name {self.heads.kernel!r}"
            )
        if layer in self.results:
            raise HookError(f"{self.heads.out_proj[layer]!r} ran twice in one forward; name one module per layer")
        self.results[layer] = result
        if self.mask is not None:
            out = _edit(out, result, self.mask[layer], self.value[layer])
        return out

    def stacked(self, where: str) -> Float[Array, "L ... H D"]:
        missing = [p for i, p in enumerate(self.heads.out_proj) if i not in self.results]
        if missing:
            seen = ", ".join(sorted(set(self.seen))[:12]) or "none"
            raise HookError(f"output projections {missing} did not run in the {where} model; modules that ran: {seen}")
        return jnp.stack([self.results[i] for i in range(self.heads.n_layers)])


def _value(heads, mask, value):
    if mask is None:
        return None, None
    mask = jnp.asarray(mask)
    if mask.shape != (heads.n_layers, heads.n_heads):
        raise HookError(f"mask must have shape [L, H] = [{heads.n_layers}, {heads.n_heads}], got {mask.shape}")
    value = jnp.zeros((heads.n_layers, 1, 1), jnp.float32) if value is None else jnp.asarray(value)
    return mask, value


# ---------------------------------------------------------------------------------------------------
# linen


def run_linen(module, variables, heads: AttentionHeads, *args, mask=None, value=None, method=None, **kwargs):
    """``module.apply(variables, *args)`` with per-head outputs captured and optionally patched.

    mask: ``[L, H]`` (1 = replace that head's output by ``value``); value: ``[L, B, T, H, D]`` (e.g. the
    ``result`` of another run) or any shape broadcasting to it; default zeros (zero ablation).
    Returns ``(output, result [L, B, T, H, D])`` with ``result`` as computed before any patch.
    """
    nn, _ = _flax()
    mask, value = _value(heads, mask, value)
    rec = _Recorder(heads, mask, value)
    index = {p: i for i, p in enumerate(heads.out_proj)}

    def interceptor(next_fun, call_args, call_kwargs, context):
        if context.method_name != "__call__":
            return next_fun(*call_args, **call_kwargs)
        path = "/".join(context.module.path)
        rec.seen.append(path)
        out = next_fun(*call_args, **call_kwargs)
        if path not in index:
            return out
        params = context.module.variables.get("params", {})
        if heads.kernel not in params:
            raise HookError(f"module {path!r} has no parameter {heads.kernel!r}; it has {sorted(params)}")
        submodules = sorted(k for k, v in params.items() if isinstance(v, Mapping))
        _check_projection(heads, path, tuple(np.shape(params[heads.kernel])), submodules)
        return rec(index[path], call_args[0], params[heads.kernel], out)

    with nn.intercept_methods(interceptor):
        out = module.apply(variables, *args, method=method, **kwargs)
    return out, rec.stacked("linen")


# ---------------------------------------------------------------------------------------------------
# nnx


def _resolve(root, path: str):
    parent = node = root
    parts = path.split("/")
    for i, part in enumerate(parts):
        parent = node
        try:
            node = node[int(part)] if part.isdigit() else getattr(node, part)
        except (AttributeError, IndexError, KeyError, TypeError):
            here = "/".join(parts[:i]) or "the model"
            names = [n for n in vars(parent) if not n.startswith("_")] if hasattr(parent, "__dict__") else []
            raise HookError(f"nnx path {path!r}: {here} has no {part!r}; it has {names}") from None
    return parent, parts[-1], node


def run_nnx(model, heads: AttentionHeads, *args, mask=None, value=None, **kwargs):
    """``model(*args)`` for an nnx module, with per-head outputs captured and optionally patched.

    Works on a functional copy (``nnx.split``/``nnx.merge``), so it is safe inside ``jax.jit``,
    ``jax.vmap`` and ``jax.grad`` and leaves ``model`` as it was. Arguments and return as :func:`run_linen`.
    """
    _, nnx = _flax()
    mask, value = _value(heads, mask, value)
    rec = _Recorder(heads, mask, value)
    graphdef, state = nnx.split(model)
    copy = nnx.merge(graphdef, state)
    for layer, path in enumerate(heads.out_proj):
        parent, name, proj = _resolve(copy, path)
        kernel = getattr(proj, heads.kernel, None)
        if kernel is None:
            raise HookError(f"module {path!r} has no parameter {heads.kernel!r}")
        submodules = sorted(n for n, v in vars(proj).items() if isinstance(v, nnx.Module))
        _check_projection(heads, path, tuple(np.shape(_nnx_value(kernel))), submodules)
        tap = _NnxTap(proj, layer, rec, heads.kernel)
        if name.isdigit():
            parent[int(name)] = tap
        else:
            object.__setattr__(parent, name, tap)
    out = copy(*args, **kwargs)
    return out, rec.stacked("nnx")


class _NnxTap:
    """Stands in for an nnx output projection for one call: runs it and records/patches per head."""

    def __init__(self, proj, layer, rec, kernel):
        self.proj, self.layer, self.rec, self.kernel = proj, layer, rec, kernel

    def __call__(self, z, *a, **kw):
        out = self.proj(z, *a, **kw)
        return self.rec(self.layer, z, _nnx_value(getattr(self.proj, self.kernel)), out)


def _nnx_value(k):
    """The array of an nnx ``Param`` (or ``k`` itself if it is an array)."""
    return k.get_value() if hasattr(k, "get_value") else getattr(k, "value", k)


# ---------------------------------------------------------------------------------------------------
# What the trainer and circuit discovery use


def runner(model, heads: AttentionHeads, variables=None, method=None) -> Callable:
    """``fn(*args, mask=None, value=None) -> (output, result)`` for a linen module with ``variables``
    or an nnx module (``variables=None``)."""
    nn, nnx = _flax()
    if isinstance(model, nn.Module):
        if variables is None:
            raise ModelError("a linen module needs its variables: runner(module, heads, variables)")
        return lambda *a, mask=None, value=None, **kw: run_linen(
            model, variables, heads, *a, mask=mask, value=value, method=method, **kw
        )
    if isinstance(model, nnx.Module):
        return lambda *a, mask=None, value=None, **kw: run_nnx(model, heads, *a, mask=mask, value=value, **kw)
    raise ModelError(f"expected a flax linen or nnx Module, got {type(model).__name__}")


def patcher(model, heads: AttentionHeads, variables=None, method=None) -> Callable:
    """``patch(tokens, mask [L, H], value [L, B, T, H, D] | None) -> output`` (None: zero-ablate).

    A pure function of arrays, as circuit discovery needs: ``jax.vmap(patch, (None, 0, None))`` patches
    one head per mask row (activation patching); ``jax.grad`` w.r.t. ``mask`` of a metric of the output
    at ``mask = 0`` is attribution patching.
    """
    run = runner(model, heads, variables, method)
    return lambda tokens, mask, value=None: run(tokens, mask=mask, value=value)[0]


def _reduce(result, lengths, positions):
    """``[L, B, T, H, D]`` -> ``[L, B, H, D]`` (last/mean) or unchanged (all)."""
    if positions == "all":
        return result
    if positions == "last":
        return result[:, jnp.arange(result.shape[1]), lengths - 1]
    valid = (jnp.arange(result.shape[2])[None, :] < lengths[:, None]).astype(result.dtype)
    return (result * valid[None, :, :, None, None]).sum(2) / lengths[None, :, None, None].astype(result.dtype)


def harvest(
    model,
    heads: AttentionHeads,
    tokens: np.ndarray,
    lengths: np.ndarray | None = None,
    *,
    variables=None,
    positions: Literal["all", "last", "mean"] = "mean",
    batch_size: int = 32,
    method=None,
) -> np.ndarray:
    """Per-head outputs of every layer and head in the trainer's shape ``[L*H, n, D]`` (row ``l*H + h``).

    tokens: ``[N, T]`` right-padded ids (the model is called as ``model(tokens)``); lengths: ``[N]`` real
    tokens per row (default ``T``). ``n`` = N (last/mean) or the number of real tokens (all).
    """
    if positions not in ("all", "last", "mean"):
        raise HookError(f"positions must be 'all', 'last' or 'mean', got {positions!r}")
    run = runner(model, heads, variables, method)
    tokens = np.asarray(tokens)
    lengths = np.full(len(tokens), tokens.shape[1]) if lengths is None else np.asarray(lengths)
    step = jax.jit(lambda t, n: _reduce(run(t)[1], n, positions))
    parts = []
    for i in range(0, len(tokens), batch_size):
        t, n = tokens[i : i + batch_size], lengths[i : i + batch_size]
        r = np.asarray(step(jnp.asarray(t), jnp.asarray(n)))  # [L, b, (T,) H, D]
        if positions == "all":
            r = np.concatenate([r[:, j, : n[j]] for j in range(len(t))], axis=1)  # [L, tokens, H, D]
        parts.append(r)
    r = np.concatenate(parts, axis=1)
    L, n, H, D = r.shape
    return r.transpose(0, 2, 1, 3).reshape(L * H, n, D)


__all__ = ["AttentionHeads", "harvest", "patcher", "run_linen", "run_nnx", "runner"]
